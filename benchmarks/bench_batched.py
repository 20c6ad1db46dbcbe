"""Benchmark: batched relaxation (many structures per MACE model call) against the serial relaxer.

Same model, same seeded random carbon starts of 2-8 atoms (``rmsearch.starts``, system C,
as ``rmsearch launch --system C --natoms 2-8`` makes them), same relaxation settings
(rmsearch defaults: FIRE 2.0 then L-BFGS, float32, fmax 0.01 eV/A, smax 0.1 GPa):

- serial: :class:`rmsearch.relax.Relaxer` (LAMMPS + MACE callback, one structure per model
  call), the CPU path of ``rmsearch launch`` per worker process;
- batched: :class:`rmsearch.batched.BatchedRelaxer` with ``--batch`` sizes given, on the
  CPU, and on CUDA when torch sees a GPU (its name is printed; rows absent otherwise);
- torch-sim's batched FIRE + Frechet cell filter on all starts at once, float32, per
  device, when torch-sim is installed (optional; its statuses are judged by the same stop
  rule at its final structures, see ``bench_relax.py``).

One process, one torch thread. Every engine relaxes one extra start first (warm-up:
TorchScript's profiling runs, LAMMPS set-up), not timed. Reports relaxations per second
(wall and per CPU-s), the ratio to the serial relaxer in the same run, model calls, and
the agreement of final energies with the serial relaxer (same statuses; max and mean
|dE| in meV/atom).

Without ``--model`` the model of ``bench_relax.py`` is trained first (one layer, 16
channels, 12 epochs on rmdata diamond, ~1 min on one core).

    python benchmarks/bench_batched.py [--nstarts 32] [--batches 4,32] [--model M.model] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relax import model_and_potential, run_torchsim, write_section  # noqa: E402

log = logging.getLogger("bench_batched")


def carbon_starts(volumes: dict[str, float], n: int, seed: int) -> list:
    """``n`` seeded random carbon starts of 2-8 atoms from rmsearch.starts."""
    from rmsearch.starts import make_spec, make_start

    spec = make_spec(system="C", natoms=(2, 8), volumes=volumes)
    return [make_start(spec, run_id, seed) for run_id in range(n)]


def timed(fn) -> tuple[list, float, float]:
    """``fn()``'s result, wall seconds and CPU seconds of this process."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run(potential, starts, warm, batches: list[int], devices: list[str]) -> list[dict]:
    """Serial, then batched per device and batch size, then torch-sim per device if it is
    installed; one row each."""
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import Relaxer, RelaxOutcome, RelaxSettings

    settings = RelaxSettings()
    rows = []
    with Relaxer(potential, settings) as relaxer:
        relaxer.relax(warm)
        serial, wall, cpu = timed(lambda: [relaxer.relax(a) for a in starts])
    rows.append({"engine": "serial: LAMMPS + MACE callback, one structure per call", "device": "cpu",
                 "wall": wall, "cpu": cpu, "calls": sum(o.n_force_calls for o in serial), "outcomes": serial})
    for device in devices:
        for batch in batches:
            with BatchedRelaxer(potential, settings, device=device, batch=batch) as relaxer:
                relaxer.relax(warm)
                calls0 = relaxer.n_model_calls
                out, wall, cpu = timed(lambda: relaxer.relax_many(starts))  # noqa: B023 - called at once
                rows.append({"engine": f"batched, --batch {batch}", "device": device, "wall": wall, "cpu": cpu,
                             "calls": relaxer.n_model_calls - calls0, "outcomes": out})
    for device in devices:  # torch-sim's batched FIRE (all starts in one batch), float32 as ours
        res = run_torchsim(potential.model_file, starts, 0.01, 0.1, 2000, device=device, dtype="float32")
        if res is not None:
            out = [RelaxOutcome(atoms=a, status=r["status"], energy=r["e"] * len(a))
                   for a, r in zip(starts, res["rows"])]
            rows.append({"engine": "torch-sim batched FIRE + Frechet cell filter, float32", "device": device,
                         "wall": res["wall"], "cpu": res["cpu"], "calls": "-", "outcomes": out})
    for row in rows:
        de = np.array([abs(o.energy_per_atom - s.energy_per_atom) * 1000 for o, s in zip(row["outcomes"], serial)
                       if o.converged and s.converged])
        row["same_status"] = sum(o.status == s.status for o, s in zip(row["outcomes"], serial))
        row["converged"] = sum(o.converged for o in row["outcomes"])
        row["max_de"], row["mean_de"] = (float(de.max()), float(de.mean())) if de.size else (np.nan, np.nan)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    base = rows[0]
    lines = [
        f"`python benchmarks/bench_batched.py{meta['args']}` ({meta['date']}, {meta['machine']}, 1 process, "
        f"1 thread; torch {meta['torch']}; GPU: {meta['gpu']}).",
        "",
        (f"{meta['n']} seeded random carbon starts of 2-8 atoms (`rmsearch.starts`, system C, seed "
         f"{meta['seed']}); model: {meta['model']}; rmsearch defaults (FIRE 2.0 then L-BFGS, float32, "
         "fmax 0.01 eV/A, smax 0.1 GPa). Each engine warmed up on one extra start (not timed). "
         "'model calls' = force calls for the serial relaxer, batched model calls for the batched one. "
         "|dE| compares final energies with the serial relaxer's on starts both converged."),
        "",
        ("| engine | device | relaxations/s (wall) | relaxations per CPU-s | vs serial (wall) | "
         "vs serial (CPU) | model calls | converged | same status as serial | max / mean abs dE (meV/atom) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    n = meta["n"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['device']} | {n / r['wall']:.3f} | {n / r['cpu']:.3f} | "
                     f"{base['wall'] / r['wall']:.2f}x | {base['cpu'] / r['cpu']:.2f}x | {r['calls']} | {r['converged']}/{n} | "
                     f"{r['same_status']}/{n} | {r['max_de']:.3g} / {r['mean_de']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--nstarts", type=int, default=32, help="number of random starts")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    ap.add_argument("--batches", default="4,32", help="comma-separated --batch sizes")
    ap.add_argument("--model", type=Path, help="a mace_run_train .model (default: train one)")
    ap.add_argument("--training", type=Path, help="training extxyz of --model (for volumes)")
    ap.add_argument("--write", type=Path, help="write the table into this markdown file (section bench_batched)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    import torch

    from rmdata.utils import pin_threads

    pin_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="bench_batched_") as tmpd:
        _, potential, model_desc = model_and_potential(Path(tmpd), args.model, args.training, args.seed)
        starts = carbon_starts(potential.volumes, args.nstarts + 1, args.seed)
        rows = run(potential, starts[:-1], starts[-1], batches, devices)
    meta = {"args": f" --nstarts {args.nstarts} --batches {args.batches}" + (f" --model {args.model}" if args.model else ""),
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "n": args.nstarts, "seed": args.seed, "model": model_desc,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CUDA rows absent)"}
    text = markdown(rows, meta)
    print(text)
    if args.write:
        write_section(args.write, "bench_batched", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
