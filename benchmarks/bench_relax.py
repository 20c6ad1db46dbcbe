"""Benchmark: rmsearch relaxations against ASE FIRE + FrechetCellFilter (+ torch-sim if installed).

torch-sim is optional: ``pip install -e ".[bench]" -c constraints.txt`` with
``torch==2.13.0`` in the constraints file (otherwise pip pulls another torch).

Same model, same seeded random 8-atom carbon starts (``rmsearch.starts``, composition C8),
same stop rule for every engine: max |F_i| < fmax (eV/A) and max |sigma_ij| < smax (GPa),
at most ``--max-steps`` force calls. One process, one thread each. Reports relaxations per
second, force calls per relaxation, mean final energy per atom (over all starts), the
share of starts ending within 1 meV/atom of ASE's final energy, and for rmsearch the
share of wall time spent inside the model (LAMMPS ``run 0`` including the MACE callback).

The native backend (engine ``native``) relaxes the same starts with the default
``rmsearch fit-native`` potential (UF3 taught by a SNAP teacher, fitted here on the
README's native recipe of the same diamond labels, or ``--native POTDIR``), minimised inside
LAMMPS; its speed is reported against the MACE backend (rmsearch defaults) of the same run.
Its energies belong to another potential, so they are not compared with ASE's.

Without ``--model`` a small MACE model is trained first: rmdata diamond labels and the
``rmdata mace-command`` training command (one layer, 16 channels, L=1, r_max 4.5 A,
float64, 12 epochs, ~1 min on one core), as the test suite does.

    python benchmarks/bench_relax.py [--quick] [--model M.model] [--native POTDIR] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np

log = logging.getLogger("bench_relax")
ROOT = Path(__file__).resolve().parent.parent


#: Table name of the native backend's row.
NATIVE_NAME = ("**native backend**: `rmsearch fit-native` default (UF3 taught by SNAP), CG + box/relax "
               "inside LAMMPS (energies of its own potential)")

#: RelaxSettings options: rmsearch's defaults (FIRE 2.0 then L-BFGS), FIRE 2.0 alone, and ASE's
#: FIRE with ASE's parameters (which follows ASE FIRE + FrechetCellFilter step for step).
DEFAULT_OPTIONS: dict = {}
FIRE2_OPTIONS = {"optimizer": "fire2"}
ASE_FIRE_OPTIONS = {"optimizer": "fire", "a_start": 0.1, "n_min": 5, "max_step": 0.2}


def train_model(workdir: Path, seed: int = 0, epochs: int = 12) -> tuple[Path, Path]:
    """Train a tiny one-layer MACE on rmdata diamond labels with the command ``rmdata
    mace-command`` prints (as the test suite does); return the model and dataset paths."""
    from rmdata.mace import train
    from rmdata.make import make_dataset

    data = workdir / "diamond.xyz"
    make_dataset(data, "diamond", seed=seed, workers=1)
    t0 = time.perf_counter()
    model, _ = train(data, workdir, name="bench", epochs=epochs, channels=16, seed=seed)
    log.info("trained model in %.0f s", time.perf_counter() - t0)
    return model, data


def model_and_potential(tmp: Path, model: Path | None, training: Path | None, seed: int):
    """``(model file, exported potential, description)``: ``model`` (with its ``training``
    set for volumes), or without one the model of :func:`train_model`, exported under ``tmp``."""
    from rmsearch.potentials import export_potential

    if model is None:
        model, training = train_model(tmp, seed=seed)
        desc = "one-layer MACE (16 channels, L=1, r_max 4.5 A, 12 epochs) trained here on rmdata diamond"
    else:
        desc = f"`{model.name}`"
    return model, export_potential(model, tmp / "pot", training=training), desc


def make_starts(volumes: dict[str, float], n: int, seed: int) -> list:
    """``n`` seeded random C8 starts from rmsearch.starts."""
    from rmsearch.starts import make_spec, make_start

    spec = make_spec(composition="C8", natoms=8, volumes=volumes)
    return [make_start(spec, run_id, seed) for run_id in range(n)]


def fit_native_potential(workdir: Path, seed: int = 0):
    """The default ``rmsearch fit-native`` potential (UF3 taught by a SNAP teacher) on the
    README's native recipe of rmdata diamond labels; ~40 s on one core."""
    from rmdata.make import make_dataset
    from rmsearch.native import NATIVE_COPIES, NATIVE_STRAINS, fit_native
    from rmsearch.potentials import load_potential

    data = workdir / "native.xyz"
    make_dataset(data, "diamond", seed=seed, workers=1, strains=list(NATIVE_STRAINS), copies=NATIVE_COPIES)
    t0 = time.perf_counter()
    fit_native(data, workdir / "native")
    log.info("fitted the native potential in %.0f s", time.perf_counter() - t0)
    return load_potential(workdir / "native")


class RmsearchEngine:
    """rmsearch Relaxer with the given model dtype: LAMMPS + MACE callback, or a native
    potential (relaxed the way its directory recommends unless ``options`` say otherwise)."""

    def __init__(self, potential, fmax, smax_gpa, max_steps, dtype, **options):
        from rmsearch.relax import Relaxer, RelaxSettings

        self.relaxer = Relaxer(potential, RelaxSettings(fmax=fmax, smax_gpa=smax_gpa,
                                                        max_steps=max_steps, dtype=dtype, **options))

    def model_time(self) -> float:
        """Seconds so far inside the model: the MACE evaluation (neighbour list + model call),
        or for a native potential the LAMMPS commands that evaluate it (minimize, run 0)."""
        engine = self.relaxer.engine
        return engine.evaluator.model_time_s if engine.evaluator is not None else engine.model_time_s

    def __call__(self, atoms) -> dict:
        o = self.relaxer.relax(atoms)
        return {"status": o.status, "e": o.energy_per_atom, "calls": o.n_force_calls,
                "model": self.model_time()}


class AseEngine:
    """ASE FIRE + FrechetCellFilter + MACECalculator (float64), the same stop rule."""

    def __init__(self, model_file, fmax, smax_gpa, max_steps):
        from mace.calculators import MACECalculator

        self.calc = MACECalculator(model_paths=str(model_file), device="cpu", default_dtype="float64")
        self.fmax, self.smax_gpa, self.max_steps = fmax, smax_gpa, max_steps

    def __call__(self, start) -> dict:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE
        from ase.units import GPa

        atoms = start.copy()
        atoms.calc = self.calc
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        calls, status = 0, "not_converged"
        for _ in opt.irun(fmax=0.0, steps=self.max_steps - 1):
            calls += 1
            f = atoms.get_forces()
            s = atoms.get_stress()
            if not (np.isfinite(f).all() and np.isfinite(s).all()):
                status = "nan"
                break
            if np.linalg.norm(f, axis=1).max() < self.fmax and np.abs(s).max() < self.smax_gpa * GPa:
                status = "converged"
                break
        return {"status": status, "e": atoms.get_potential_energy() / len(atoms), "calls": calls,
                "model": float("nan")}


def run_interleaved(engines: dict, starts: list) -> dict:
    """Relax every start with every engine, engine after engine per start, so that all
    engines see the same machine load; wall and CPU (process) time are summed per engine."""
    for eng in engines.values():  # warm-up (first-call allocations), not timed
        eng(starts[0])
    out = {k: {"rows": [], "wall": 0.0, "cpu": 0.0} for k in engines}
    for k, start in enumerate(starts):
        for name, eng in engines.items():
            timed = isinstance(eng, RmsearchEngine)
            m0 = eng.model_time() if timed else 0.0
            w0, c0 = time.perf_counter(), time.process_time()
            row = eng(start)
            row["wall"], row["cpu"] = time.perf_counter() - w0, time.process_time() - c0
            row["model"] = row["model"] - m0 if timed else float("nan")
            out[name]["rows"].append(row)
            out[name]["wall"] += row["wall"]
            out[name]["cpu"] += row["cpu"]
        log.info("start %d/%d done", k + 1, len(starts))
    return out


def run_torchsim(model_file, starts, fmax, smax_gpa, max_steps, device: str = "cpu",
                 dtype: str = "float64") -> dict | None:
    """torch-sim batched FIRE + Frechet cell filter, if torch-sim is installed (optional)."""
    try:
        import torch
        import torch_sim as ts
        from torch_sim.models.mace import MaceModel
    except ImportError:
        return None
    from ase.units import GPa

    model = MaceModel(model=torch.load(model_file, map_location="cpu", weights_only=False),
                      device=torch.device(device), dtype=getattr(torch, dtype), compute_forces=True,
                      compute_stress=True)
    conv = ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=False)

    def converged(state, last_energy=None):
        forces_ok = conv(state, last_energy)
        stress = state.stress.reshape(-1, 9).abs().max(dim=1).values
        return forces_ok & (stress < smax_gpa * GPa)

    if hasattr(ts, "Optimizer"):  # torch-sim >= 0.4
        how = {"optimizer": ts.Optimizer.fire, "init_kwargs": {"cell_filter": ts.CellFilter.frechet}}
    else:  # torch-sim 0.3
        how = {"optimizer": ts.frechet_cell_fire}
    t0, c0 = time.perf_counter(), time.process_time()
    final = ts.optimize(system=[a.copy() for a in starts], model=model, convergence_fn=converged,
                        max_steps=max_steps, **how)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = final.to_atoms()
    res = model(final)
    energies = res["energy"].detach().cpu().double().numpy()
    forces = res["forces"].detach().cpu().double().numpy()
    stress = res["stress"].detach().cpu().double().numpy().reshape(len(out), 9)
    rows, k = [], 0
    for e, a, s in zip(energies, out, stress):
        f = forces[k:k + len(a)]
        k += len(a)
        ok = np.linalg.norm(f, axis=1).max() < fmax and np.abs(s).max() < smax_gpa * GPa
        rows.append({"status": "converged" if ok else "not_converged", "e": float(e) / len(a),
                     "calls": float("nan"), "wall": float("nan"), "model": float("nan")})
    return {"rows": rows, "wall": wall, "cpu": cpu}


def summarise(name: str, res: dict, ref_e: np.ndarray | None) -> dict:
    rows = res["rows"]
    e = np.array([r["e"] for r in rows])
    calls = np.array([r["calls"] for r in rows], dtype=float)
    model = np.array([r["model"] for r in rows], dtype=float)
    walls = np.array([r["wall"] for r in rows], dtype=float)
    out = {
        "engine": name,
        "relaxations_per_s": len(rows) / res["wall"],
        "relaxations_per_cpu_s": len(rows) / res["cpu"] if res.get("cpu") else None,
        "force_calls_per_relaxation": float(np.nanmean(calls)) if np.isfinite(calls).any() else None,
        "mean_final_e_per_atom": float(np.nanmean(e)),
        "converged": int(sum(r["status"] == "converged" for r in rows)),
        "n": len(rows),
        "model_share": float(np.nansum(model) / np.nansum(walls)) if np.isfinite(model).any() else None,
        "mean_wall_s": float(np.nanmean(walls)),
        "ms_per_force_call": float(1e3 * res.get("cpu", res["wall"]) / np.nansum(calls))
        if np.isfinite(calls).any() else None,
    }
    if ref_e is not None:
        out["within_1meV_of_ase"] = float(np.mean(e <= ref_e + 1e-3))
    return out


def markdown(results: list[dict], meta: dict) -> str:
    ase = next(r for r in results if r["engine"].startswith("ASE"))
    lines = [
        (f"`python benchmarks/bench_relax.py{meta['args']}` ({meta['date']}, {meta['machine']}, "
         f"1 process, 1 thread; torch {meta['torch']})."),
        "",
        (f"{meta['n']} seeded random C8 starts (`rmsearch.starts`, composition C8, seed {meta['seed']}); "
         f"model: {meta['model']}; stop at max|F| < {meta['fmax']} eV/A and max|sigma| < "
         f"{meta['smax']} GPa, at most {meta['max_steps']} force calls. "
         "Energies include nothing but the model at the end points (the core-repulsion overlay is "
         "zero beyond 0.75 A). Engines run interleaved (each start by every engine in turn) in "
         "one process, so they share the same machine load; CPU time (process time) is the "
         "per-core measure, wall time is shown as well. 'time in model' = time inside the "
         "MACE evaluation (neighbour list + model call) / total relaxation time; for the native "
         "backend, time inside the LAMMPS commands that evaluate and minimise (minimize, run 0)."),
        "",
        ("| engine | relaxations/s (wall) | relaxations per CPU-s | speed-up vs ASE (CPU) | "
         "force calls / relaxation | CPU ms / force call | mean final E (eV/atom) | converged | "
         "at most 1 meV/atom above ASE | time in model |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v, spec):
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)

    base = ase["relaxations_per_cpu_s"] or ase["relaxations_per_s"]
    for r in results:
        rate = r["relaxations_per_cpu_s"] or r["relaxations_per_s"]
        lines.append(
            f"| {r['engine']} | {fmt(r['relaxations_per_s'], '.3f')} | "
            f"{fmt(r['relaxations_per_cpu_s'], '.3f')} | {rate / base:.2f}x | "
            f"{fmt(r['force_calls_per_relaxation'], '.0f')} | {fmt(r['ms_per_force_call'], '.3g')} | "
            f"{r['mean_final_e_per_atom']:.4f} | {r['converged']}/{r['n']} | "
            f"{fmt(r.get('within_1meV_of_ase'), '.0%')} | {fmt(r['model_share'], '.0%')} |")
    by_name = {r["engine"]: r for r in results}
    mace, native = by_name.get(results[0]["engine"]), by_name.get(NATIVE_NAME)
    if native is not None and mace is not None and mace is not native:
        lines += ["", (f"Native backend against the MACE backend (rmsearch defaults), same starts: "
                       f"**{native['relaxations_per_cpu_s'] / mace['relaxations_per_cpu_s']:.1f}x** "
                       f"relaxations per CPU-s ({native['relaxations_per_s'] / mace['relaxations_per_s']:.1f}x "
                       "wall); target 50x.")]
    return "\n".join(lines) + "\n"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the ``## name`` section of a markdown file, atomically."""
    from rmdata.utils import atomic_output

    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = f"## {name}\n"
    lines = text.splitlines(keepends=True)
    out, skip, done = [], False, False
    for line in lines:
        if line == head or line.rstrip("\n") == head.rstrip("\n"):
            out.append(head + "\n" + body + "\n")
            skip, done = True, True
            continue
        if skip and line.startswith("## "):
            skip = False
        if not skip:
            out.append(line)
    if not done:
        if out and not out[-1].endswith("\n\n"):
            out.append("\n")
        out.append(head + "\n" + body)
    with atomic_output(path) as tmp:
        tmp.write_text("".join(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 starts instead of --nstarts")
    ap.add_argument("--nstarts", type=int, default=50, help="number of random starts")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    ap.add_argument("--model", type=Path, help="a mace_run_train .model (default: train one)")
    ap.add_argument("--training", type=Path, help="training extxyz of --model (for volumes)")
    ap.add_argument("--fmax", type=float, default=0.01, help="force tolerance (eV/A)")
    ap.add_argument("--smax", type=float, default=0.1, help="stress tolerance (GPa)")
    ap.add_argument("--max-steps", type=int, default=2000, help="force-call cap per relaxation")
    ap.add_argument("--native", type=Path, help="a `rmsearch fit-native` potential directory for the "
                    "native engine (default: fit one here with the default recipe, ~40 s)")
    ap.add_argument("--engines", default="rmsearch,native,rmsearch-fire2,rmsearch-asefire64,ase,torch-sim",
                    help="comma-separated engines to run")
    ap.add_argument("--write", type=Path, help="write the table into this markdown file "
                    "(section '## bench_relax'), e.g. BENCHMARKS.md")
    ap.add_argument("--json", type=Path, help="also write raw numbers as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    from rmdata.utils import pin_threads

    pin_threads(1)
    n = 10 if args.quick else args.nstarts
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_relax_") as tmpd:
        tmp = Path(tmpd)
        model_file, potential, model_desc = model_and_potential(tmp, args.model, args.training, args.seed)
        starts = make_starts(potential.volumes, n, args.seed)
        results: list[dict] = []
        engines = {}
        if "rmsearch" in wanted:
            engines["rmsearch"] = RmsearchEngine(potential, args.fmax, args.smax, args.max_steps,
                                                 "float32", **DEFAULT_OPTIONS)
        if "native" in wanted:
            from rmsearch.potentials import load_potential

            native = load_potential(args.native) if args.native else fit_native_potential(tmp, seed=args.seed)
            engines["native"] = RmsearchEngine(native, args.fmax, args.smax, args.max_steps, "float64")
        if "rmsearch-fire2" in wanted:
            engines["rmsearch-fire2"] = RmsearchEngine(potential, args.fmax, args.smax, args.max_steps,
                                                       "float32", **FIRE2_OPTIONS)
        if "rmsearch-asefire64" in wanted:
            engines["rmsearch-asefire64"] = RmsearchEngine(potential, args.fmax, args.smax, args.max_steps,
                                                           "float64", **ASE_FIRE_OPTIONS)
        if "ase" in wanted:
            engines["ase"] = AseEngine(model_file, args.fmax, args.smax, args.max_steps)
        log.info("%s on %d starts, interleaved", ", ".join(engines), n)
        raw = run_interleaved(engines, starts)
        ref_e = np.array([r["e"] for r in raw["ase"]["rows"]]) if "ase" in raw else None
        if "torch-sim" in wanted:
            res = run_torchsim(model_file, starts, args.fmax, args.smax, args.max_steps)
            if res is None:
                log.info("torch-sim not installed; skipped")
            else:
                raw["torch-sim"] = res
        names = {"rmsearch": "**rmsearch defaults**: LAMMPS + MACE callback, float32, FIRE 2.0 then L-BFGS",
                 "native": NATIVE_NAME,
                 "rmsearch-fire2": "rmsearch, float32, FIRE 2.0 alone",
                 "rmsearch-asefire64": "rmsearch, float64, ASE's FIRE (ASE's parameters)",
                 "ase": "ASE FIRE + FrechetCellFilter + MACECalculator (float64)",
                 "torch-sim": "torch-sim 0.3 batched FIRE + Frechet cell filter (float64, all starts in one batch)"}
        for key, label in names.items():
            if key in raw:  # the native potential's energies are its own: not compared with ASE's
                results.append(summarise(label, raw[key], None if key == "native" else ref_e))
    import torch

    meta = {"args": (" --quick" if args.quick else "") + (f" --model {args.model}" if args.model else ""),
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "n": n, "seed": args.seed, "model": model_desc,
            "fmax": args.fmax, "smax": args.smax, "max_steps": args.max_steps}
    text = markdown(results, meta) if any(r["engine"].startswith("ASE") for r in results) else \
        json.dumps(results, indent=1)
    print(text)
    if args.write:
        write_section(args.write, "bench_relax", text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
