"""Benchmark: the native backends (SNAP, UF3) against the MACE backend, same starts, one run.

All potentials come from the same rmdata diamond file (seed 0, the README's native recipe:
strains -20 % to +10 %, three copies): SNAP and UF3 from
``rmsearch fit-native`` (default recipes: UF3 learns from a SNAP teacher, rmsearch.distill),
UF3 fitted on the rmdata labels alone (``--no-teacher``, the baseline the teacher fixes), and a tiny one-layer MACE trained with the
command ``rmdata mace-command`` prints (16 channels, 12 epochs, as the test suite does) on
the *training split of the native fits only*, so that all are scored on the same
held-out frames. Then every engine relaxes the same seeded random C8 starts with
``rmsearch.relax.Relaxer`` (one process, one thread, same stop rule), interleaved start by
start so that load from other jobs hits all alike. Engines: each potential with the
relaxer's default ("auto": the Python FIRE 2.0 + L-BFGS relaxer for SNAP and MACE, the
in-LAMMPS CG minimiser for UF3), and UF3 and SNAP with the other method too. Reports
relaxations per second, force calls per relaxation, time per force call, the mean final
energy, the lowest structure each potential finds (is it diamond?), statuses, and the
held-out force/stress errors of every fit.

    python benchmarks/bench_native.py [--quick] [--starts N] [--model M.model] [--write BENCHMARKS.md]
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
from collections import Counter
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

log = logging.getLogger("bench_native")


def train_mace(train_xyz: Path, workdir: Path, epochs: int = 12) -> Path:
    """Train the test-suite MACE recipe on ``train_xyz``; return the model path."""
    from rmdata.mace import train

    t0 = time.perf_counter()
    model, _ = train(train_xyz, workdir, name="bench", epochs=epochs, channels=16, seed=0)
    log.info("trained MACE in %.0f s", time.perf_counter() - t0)
    return model


def relax_all(relaxers: dict, starts: list) -> dict:
    """Relax every start with every relaxer, interleaved; per-engine lists of outcomes."""
    import spglib

    out: dict = {name: [] for name in relaxers}
    for atoms in starts:
        for name, relaxer in relaxers.items():
            t0 = time.perf_counter()
            o = relaxer.relax(atoms)
            wall = time.perf_counter() - t0
            a = o.atoms
            sg = spglib.get_spacegroup((a.cell[:], a.get_scaled_positions(), a.numbers), symprec=0.1) \
                if o.converged else None
            out[name].append({"status": o.status if not o.status.startswith("error") else "error",
                              "calls": o.n_force_calls, "wall": wall, "model": o.model_time_s,
                              "e": o.energy_per_atom, "v": o.volume_per_atom, "sg": sg})
    return out


def summarise(rows: list[dict]) -> dict:
    import numpy as np

    wall = sum(r["wall"] for r in rows)
    calls = sum(r["calls"] for r in rows)
    conv = [r for r in rows if r["status"] == "converged"]
    best = min(conv, key=lambda r: r["e"]) if conv else None
    return {"relaxations": len(rows), "wall_s": round(wall, 3),
            "relaxations_per_s": round(len(rows) / wall, 3),
            "force_calls_per_relaxation": round(calls / len(rows), 1),
            "ms_per_force_call": round(1e3 * wall / max(calls, 1), 4),
            "mean_final_e_eV_per_atom": round(float(np.mean([r["e"] for r in conv])), 4) if conv else None,
            "lowest": ({"e": round(best["e"], 4), "v": round(best["v"], 2), "spacegroup": best["sg"]}
                       if best else None),
            "statuses": dict(Counter(r["status"] for r in rows))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 starts instead of 40")
    ap.add_argument("--starts", type=int, default=None)
    ap.add_argument("--model", type=Path, help="use this MACE model instead of training one")
    ap.add_argument("--fmax", type=float, default=0.01, help="eV/A")
    ap.add_argument("--smax", type=float, default=0.1, help="GPa")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--write", type=Path, help="write the table into this markdown file (## bench_native)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numpy as np

    import rmdata
    from rmdata.make import make_dataset
    from rmsearch.fitting import mace_errors
    from rmsearch.native import NATIVE_COPIES, NATIVE_STRAINS, fit_native
    from rmsearch.potentials import export_potential, load_potential
    from rmsearch.relax import Relaxer, RelaxSettings, resolve_optimizer
    from rmsearch.starts import make_spec, make_start

    n = args.starts or (8 if args.quick else 40)
    work = Path(tempfile.mkdtemp(prefix="bench_native"))
    data = work / "diamond.xyz"
    # the native recipe of the README ("Native potentials"): compressive strains to -20 %, 3 copies
    make_dataset(data, "diamond", seed=0, workers=1, strains=list(NATIVE_STRAINS), copies=NATIVE_COPIES)
    fits, fit_s = {}, {}
    for name, kind, teacher in (("snap", "snap", False), ("uf3", "uf3", True), ("uf3 no teacher", "uf3", False)):
        t0 = time.perf_counter()
        fits[name] = fit_native(data, work / name.replace(" ", "_"), kind=kind, teacher=teacher)
        fit_s[name] = round(time.perf_counter() - t0, 1)
    held = set(fits["snap"]["holdout_frames"])
    assert all(held == set(f["holdout_frames"]) for f in fits.values())
    frames = rmdata.read(data)
    if args.model is None:
        from ase.io import write

        train = work / "train.xyz"
        write(train, [a for k, a in enumerate(frames) if k not in held], format="extxyz")
        model = train_mace(train, work)
    else:
        model = args.model
    mace_hold = mace_errors(model, [frames[k] for k in sorted(held)])
    export_potential(model, work / "mace", training=data)
    pots = {k: load_potential(work / k.replace(" ", "_")) for k in (*fits, "mace")}
    spec = make_spec(composition="C8", natoms=8, volumes=pots["snap"].volumes)
    starts = [make_start(spec, i, 0) for i in range(n)]

    def relaxer(kind: str, optimizer: str = "auto") -> tuple[str, Relaxer]:
        rs = RelaxSettings(fmax=args.fmax, smax_gpa=args.smax, max_steps=args.max_steps, optimizer=optimizer)
        how = resolve_optimizer(optimizer, pots[kind])
        return f"{kind} ({how}{', default' if optimizer == 'auto' else ''})", Relaxer(pots[kind], rs)

    relaxers = dict([relaxer("mace"), relaxer("uf3"), relaxer("uf3", "fire2-lbfgs"), relaxer("uf3 no teacher"),
                     relaxer("snap"), relaxer("snap", "lammps-cg")])
    res = relax_all(relaxers, starts)
    summ = {k: summarise(v) for k, v in res.items()}
    mace_name = next(iter(summ))
    base = summ[mace_name]
    for name, row in summ.items():
        row["speedup_vs_mace"] = round(row["relaxations_per_s"] / base["relaxations_per_s"], 1)
        row["per_call_vs_mace"] = round(base["ms_per_force_call"] / row["ms_per_force_call"], 1)
    load = os.getloadavg()
    best = max((k for k in summ if k != mace_name), key=lambda k: summ[k]["speedup_vs_mace"])
    out = {"summary": summ, "fastest_native": best,
           "fit": {k: {"train": fits[k]["train"], "holdout": fits[k]["holdout"],
                       "holdout_no_core": fits[k].get("holdout_snap_only"), "fit_s": fit_s[k],
                       "settings": fits[k]["settings"]} for k in fits} | {"mace_holdout": mace_hold},
           "meta": {"starts": n, "fmax": args.fmax, "smax_gpa": args.smax, "max_steps": args.max_steps,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "load_after": [round(x, 1) for x in load]}}
    lines = [f"Command: `python benchmarks/bench_native.py{' --quick' if args.quick else ''}"
             f"{f' --starts {n}' if args.starts else ''}`"
             + (" (with `--model`: the MACE model this script had trained on the same split, reused)"
                if args.model else ""), "",
             (f"- machine: {out['meta']['machine']}; one process, one thread; load average after "
              f"{out['meta']['load_after']} (other jobs share the cores when it is above 1)"),
             (f"- {n} seeded random C8 starts (rmsearch.starts), fmax {args.fmax} eV/A, smax {args.smax} GPa, "
              f"at most {args.max_steps} force calls; every engine on the same starts, interleaved; "
              "'default' = the relaxer's 'auto' choice for that potential"), "",
             "| engine | relaxations/s | vs MACE | force calls/relaxation | ms/force call | mean final E (eV/atom) "
             "| lowest found: E (eV/atom), V (A^3/atom), space group | statuses |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in summ.items():
        low = r["lowest"]
        low_s = f"{low['e']}, {low['v']}, {low['spacegroup']}" if low else "-"
        lines.append(f"| {name} | {r['relaxations_per_s']} | {r['speedup_vs_mace']}x | "
                     f"{r['force_calls_per_relaxation']} | {r['ms_per_force_call']} | "
                     f"{r['mean_final_e_eV_per_atom']} | {low_s} | {r['statuses']} |")
    f = out["fit"]

    def err(e: dict | None) -> str:
        return f"{e['force_rmse_eV_per_A']:.4f} / {e['stress_rmse_eV_per_A3']:.4f}" if e else "-"

    lines += ["", (f"- **fastest native engine: {best}, {summ[best]['speedup_vs_mace']}x MACE's relaxations "
                   f"per second** (target 50x); energies are each potential's own, so compare them within "
                   "a potential (optimizer quality), not across potentials"),
              (f"- held-out frames ({f['snap']['holdout']['n_frames']} of {fits['snap']['n_frames']}), RMSE "
               f"force (eV/A) / stress (eV/A^3): SNAP {err(f['snap']['holdout'])} (without its ZBL core "
               f"{err(f['snap']['holdout_no_core'])}); UF3 {err(f['uf3']['holdout'])} (without its ZBL core "
               f"{err(f['uf3']['holdout_no_core'])}); UF3 without teacher {err(f['uf3 no teacher']['holdout'])} "
               f"(without its ZBL core {err(f['uf3 no teacher']['holdout_no_core'])}); MACE (trained on the other frames) "
               f"{err(f['mace_holdout'])}"),
              (f"- UF3 distillation: {json.dumps(fits['uf3']['distillation']['rounds'])}"),
              (f"- fits: SNAP {f['snap']['fit_s']} s, UF3 {f['uf3']['fit_s']} s (teacher included), "
               f"UF3 without teacher {f['uf3 no teacher']['fit_s']} s; settings "
               + "; ".join(f"{k} {json.dumps({x: y for x, y in f[k]['settings'].items() if x not in ('holdout', 'seed', 'fit_core')})}"
                           for k in ("snap", "uf3")))]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_relax import write_section

        write_section(args.write, "bench_native", text)
    for r in relaxers.values():
        r.close()
    del np
    return 0


if __name__ == "__main__":
    sys.exit(main())
