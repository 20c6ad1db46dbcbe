"""Benchmark: the native fit's solvers, and the bound on pyxtal's placement work, one run each.

**Solvers** (``rmsearch fit-native --solver``): the same quadratic SNAP (2J = 6, rcut 4 A,
contact cores, alpha 0.01: the molecule recipe of ``workflows/native_molecules.py``) fitted
on the first ``--molecules`` offline molecules (``rmdata make --levels 0,1,2,3,4``) by

- ``svd``: every design row in memory, SVD least squares (the baseline);
- ``normal``: the rows streamed block by block into the normal equations, 1 worker;
- ``normal``, 2 workers (the default on 2 cores);

reporting wall time (descriptors + solve), the peak design memory each holds, and the
largest coefficient difference to the SVD fit (relative to the largest coefficient).

**pyxtal placements** (``rmsearch.starts.PYXTAL_CHECKS``): the first ``--starts`` starts of
TiU2 in P6/mmm (3 atoms; the slowest target of the space-group-given CSP), made with the
4,000-check budget and without a bound (the baseline), interleaved start by start; reports
seconds per start and how many were placed in the group.

    python benchmarks/bench_fit.py [--molecules 700] [--starts 8] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def bench_solvers(n_molecules: int, workdir: Path) -> tuple[list[str], dict]:
    """Fit one molecule file with each solver; the table rows and the raw numbers."""
    from dataclasses import replace

    import rmdata
    from rmdata.make import make_dataset
    from rmsearch.fitting import (DESIGN_COPIES, design_matrix, fit_beta, holdout_mask, n_rows,
                                  reference_contacts, report_frames, streamed_design)
    from rmsearch.snap import SnapSettings

    data = workdir / "mol.xyz"
    make_dataset(data, "molecules", limit=n_molecules, seed=0, workers=2, levels=[0, 1, 2, 3, 4])
    frames = rmdata.read(data)
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    settings = SnapSettings(rcut=4.0, zbl_contacts=True, alpha=0.01)
    settings = replace(settings, pair_lengths=reference_contacts(frames), norm_floor=0.0)
    held = holdout_mask(len(frames), settings.holdout, settings.seed)
    kept = report_frames(len(frames), held, settings.seed)
    rows, cols = n_rows(frames), settings.n_columns(elements)
    results = {}
    t0 = time.perf_counter()
    dm = design_matrix(frames, settings, elements)
    base = fit_beta(dm, settings, ~held)
    results["svd"] = {"wall_s": time.perf_counter() - t0, "memory_GiB": DESIGN_COPIES * 8 * rows * cols / 2**30,
                      "diff": 0.0}
    del dm
    for workers in (1, 2):
        t0 = time.perf_counter()
        dm = streamed_design(frames, settings, elements, ~held, kept, workers=workers)
        beta = fit_beta(dm, settings, ~held)
        kept_rows = n_rows([a for a, k in zip(frames, kept) if k])
        results[f"normal, {workers} worker{'s' * (workers > 1)}"] = {
            "wall_s": time.perf_counter() - t0, "memory_GiB": 8 * cols * (kept_rows + 4 * cols) / 2**30,
            "diff": float(np.abs(beta - base).max() / np.abs(base).max())}
    out = [f"**Solvers**: quadratic SNAP (2J = 6, rcut 4 A, contact cores, alpha 0.01), first "
           f"{n_molecules} offline molecules, levels 0-4: {len(frames)} frames, {rows} rows x {cols} "
           "coefficients, 10 % held out", "",
           "| solver | wall (s) | vs svd | peak design memory (GiB) | max coefficient difference to svd (relative) |",
           "|---|---|---|---|---|"]
    ref = results["svd"]["wall_s"]
    for name, r in results.items():
        out.append(f"| {name} | {r['wall_s']:.1f} | {ref / r['wall_s']:.1f}x | {r['memory_GiB']:.2f} | {r['diff']:.1e} |")
    return out, results


def bench_pyxtal(n_starts: int) -> tuple[list[str], dict]:
    """TiU2 in P6/mmm starts with and without the check budget, interleaved."""
    from rmsearch import starts
    from rmsearch.starts import make_spec, make_start
    from rmdata.errors import RMError

    spec = make_spec(composition="U2Ti", natoms="3", spacegroup=191,
                     volumes={"U": 21.819401717618454, "Ti": 12.627985340912542})  # mp20-mace's
    budget = starts.PYXTAL_CHECKS
    stats = {"budget": {"s": [], "placed": 0, "failed": 0}, "unbounded": {"s": [], "placed": 0, "failed": 0}}
    for run in range(n_starts):
        order = (("budget", budget), ("unbounded", 10**12))
        for name, limit in order[::1 if run % 2 else -1]:  # alternate who goes first
            starts.PYXTAL_CHECKS = limit
            t0 = time.perf_counter()
            try:
                atoms = make_start(spec, run, 0)
                stats[name]["placed"] += atoms.info.get("spacegroup_start") == 191
            except RMError:  # the random fallback could not be placed either: an error run
                stats[name]["failed"] += 1
            stats[name]["s"].append(time.perf_counter() - t0)
    starts.PYXTAL_CHECKS = budget
    out = [f"**pyxtal placements**: TiU2 in P6/mmm (3 atoms), starts 0-{n_starts - 1} of seed 0, interleaved", "",
           "| placement | s per start (mean / max) | vs unbounded | placed in P6/mmm | fallback failed too |",
           "|---|---|---|---|---|"]
    ref = float(np.mean(stats["unbounded"]["s"]))
    for name, label in (("unbounded", "unbounded (baseline)"), ("budget", f"{budget} distance checks")):
        s = stats[name]["s"]
        out.append(f"| {label} | {np.mean(s):.1f} / {np.max(s):.1f} | {ref / np.mean(s):.1f}x | "
                   f"{stats[name]['placed']}/{n_starts} | {stats[name]['failed']} |")
    return out, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--molecules", type=int, default=700, help="offline molecules of the solver benchmark")
    ap.add_argument("--starts", type=int, default=8, help="TiU2 starts of the pyxtal benchmark")
    ap.add_argument("--write", type=Path, help="write the section into this markdown file (## bench_fit)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        solver_rows, _ = bench_solvers(args.molecules, Path(tmp))
    pyxtal_rows, _ = bench_pyxtal(args.starts)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    body = "\n".join([
        f"Command: `python benchmarks/bench_fit.py --molecules {args.molecules} --starts {args.starts}`", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"one thread per process; load average after {[round(x, 1) for x in load] if load else '-'}", "",
        *solver_rows, "", *pyxtal_rows, ""])
    print(body)
    if args.write:
        from bench_relax import write_section

        write_section(args.write, "bench_fit", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
