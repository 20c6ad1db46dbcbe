"""Benchmark: the native SNAP backend against the MACE backend, same starts, one run.

Both potentials come from the same rmdata diamond file (seed 0): the SNAP potential from
``rmsearch fit-native`` (default recipe), and a tiny one-layer MACE trained with the
command ``rmdata mace-command`` prints (16 channels, 12 epochs, as the test suite does) on
the *training split of the SNAP fit only*, so that both are scored on the same held-out
frames. Then both relax the same seeded random C8 starts with ``rmsearch.relax.Relaxer``
(one process, one thread, same stop rule), interleaved start by start so that load from
other jobs hits both alike. Reports relaxations per second, force calls per relaxation,
time per force call, statuses, and the held-out force/stress errors of both fits.

    python benchmarks/bench_native.py [--quick] [--model M.model] [--write BENCHMARKS.md]
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
    out: dict = {name: [] for name in relaxers}
    for atoms in starts:
        for name, relaxer in relaxers.items():
            t0 = time.perf_counter()
            o = relaxer.relax(atoms)
            out[name].append({"status": o.status if not o.status.startswith("error") else "error",
                              "calls": o.n_force_calls, "wall": time.perf_counter() - t0,
                              "model": o.model_time_s, "e": o.energy_per_atom})
    return out


def summarise(rows: list[dict]) -> dict:
    wall = sum(r["wall"] for r in rows)
    calls = sum(r["calls"] for r in rows)
    return {"relaxations": len(rows), "wall_s": round(wall, 3),
            "relaxations_per_s": round(len(rows) / wall, 3),
            "force_calls_per_relaxation": round(calls / len(rows), 1),
            "ms_per_force_call": round(1e3 * wall / max(calls, 1), 3),
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
    from rmsearch.native import SnapSettings, fit_native
    from rmsearch.potentials import export_potential, load_potential
    from rmsearch.relax import Relaxer, RelaxSettings
    from rmsearch.starts import make_spec, make_start

    n = args.starts or (8 if args.quick else 40)
    work = Path(tempfile.mkdtemp(prefix="bench_native"))
    data = work / "diamond.xyz"
    make_dataset(data, "diamond", seed=0, workers=1)
    settings = SnapSettings()
    t0 = time.perf_counter()
    report = fit_native(data, work / "snap", settings=settings)
    fit_s = time.perf_counter() - t0
    held = set(report["holdout_frames"])
    frames = rmdata.read(data)
    if args.model is None:
        from ase.io import write

        train = work / "train.xyz"
        write(train, [a for k, a in enumerate(frames) if k not in held], format="extxyz")
        model = train_mace(train, work)
    else:
        model = args.model
    from rmsearch.native import mace_errors

    mace_hold = mace_errors(model, [frames[k] for k in sorted(held)])
    export_potential(model, work / "mace", training=data)
    snap = load_potential(work / "snap")
    spec = make_spec(composition="C8", natoms=8, volumes=snap.volumes)
    starts = [make_start(spec, i, 0) for i in range(n)]
    rs = RelaxSettings(fmax=args.fmax, smax_gpa=args.smax, max_steps=args.max_steps)
    relaxers = {"native snap": Relaxer(snap, rs), "mace": Relaxer(load_potential(work / "mace"), rs)}
    res = relax_all(relaxers, starts)
    summ = {k: summarise(v) for k, v in res.items()}
    speedup = summ["native snap"]["relaxations_per_s"] / summ["mace"]["relaxations_per_s"]
    per_call = summ["mace"]["ms_per_force_call"] / summ["native snap"]["ms_per_force_call"]
    load = os.getloadavg()
    out = {"summary": summ, "speedup_relaxations_per_s": round(speedup, 1),
           "speedup_per_force_call": round(per_call, 1),
           "fit": {"snap_train": report["train"], "snap_holdout": report["holdout"],
                   "snap_holdout_no_core": report.get("holdout_snap_only"),
                   "mace_holdout": mace_hold, "fit_s": round(fit_s, 1),
                   "settings": report["settings"]},
           "meta": {"starts": n, "fmax": args.fmax, "smax_gpa": args.smax, "max_steps": args.max_steps,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "load_after": [round(x, 1) for x in load]}}
    lines = [f"Command: `python benchmarks/bench_native.py{' --quick' if args.quick else ''}`", "",
             (f"- machine: {out['meta']['machine']}; one process, one thread; load average after "
              f"{out['meta']['load_after']} (other jobs share the cores)"),
             (f"- {n} seeded random C8 starts (rmsearch.starts), fmax {args.fmax} eV/A, smax {args.smax} GPa, "
              f"at most {args.max_steps} force calls; both engines on the same starts, interleaved"), "",
             "| backend | relaxations/s | force calls/relaxation | ms/force call | statuses |",
             "|---|---|---|---|---|"]
    for name, s in summ.items():
        lines.append(f"| {name} | {s['relaxations_per_s']} | {s['force_calls_per_relaxation']} | "
                     f"{s['ms_per_force_call']} | {s['statuses']} |")
    f = out["fit"]
    lines += ["", (f"- **native / MACE: {out['speedup_relaxations_per_s']}x relaxations per second, "
                   f"{out['speedup_per_force_call']}x per force call** (target 50x)"),
              f"- held-out frames ({f['snap_holdout']['n_frames']} of {report['n_frames']}), RMSE force (eV/A) / "
              f"stress (eV/A^3): SNAP {f['snap_holdout']['force_rmse_eV_per_A']:.4f} / "
              f"{f['snap_holdout']['stress_rmse_eV_per_A3']:.4f}"
              + (f" (without its ZBL core {f['snap_holdout_no_core']['force_rmse_eV_per_A']:.4f} / "
                 f"{f['snap_holdout_no_core']['stress_rmse_eV_per_A3']:.4f})" if f["snap_holdout_no_core"] else "")
              + f"; MACE (trained on the other frames) {f['mace_holdout']['force_rmse_eV_per_A']:.4f} / "
                f"{f['mace_holdout']['stress_rmse_eV_per_A3']:.4f}",
              f"- SNAP fit: {f['fit_s']} s, settings {json.dumps({k: f['settings'][k] for k in ('twojmax', 'rcut', 'quadratic', 'alpha', 'stress_weight', 'zbl_inner', 'zbl_outer')})}"]
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
