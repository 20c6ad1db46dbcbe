"""Benchmark: rmdata labelling throughput on the mp20-subset preset.

In one run, on the same structures and frames:

1. the vectorised labels (:func:`rmdata.response.compute_labels`) against a
   straightforward Python loop over atoms and atom pairs of the same formulas (the
   outputs must agree to 1e-10 eV/A and eV/A^3);
2. the whole ``rmdata make`` pipeline (perturbation, labels, HDF5 writing) on the
   mp20-subset train split with 1 and 2 worker processes, cold (a fresh cache: the CIFs
   are parsed with pymatgen first) and warm (the parsed structures come from the cache);
3. a projection of the wall time for the full MP-20 training split (27,136 structures),
   assuming the same frames per structure and per-structure cost.

Usage: python benchmarks/bench_rmdata.py [--loop-structures 4] [--markdown]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from rmdata.datasets import load_structures, parse_cif_row  # noqa: E402
from rmdata.make import make_dataset  # noqa: E402
from rmdata.perturb import perturb  # noqa: E402
from rmdata.presets import get_preset  # noqa: E402
from rmdata.response import compute_labels  # noqa: E402

MP20_TRAIN = 27136


def loop_labels(positions, cells, ref_scaled, ref_cell, p):
    """The label formulas written as plain loops over frames, atoms and pairs."""
    n_frames, n_atoms = positions.shape[:2]
    forces = np.zeros_like(positions)
    stress = np.zeros((n_frames, 3, 3))
    lam, mu = p.lame
    l0_inv = np.linalg.inv(ref_cell)
    for f in range(n_frames):
        cell = cells[f]
        inv = np.linalg.inv(cell)
        shifts = [np.array(s, float) @ cell for s in itertools.product((-1, 0, 1), repeat=3)]
        dr = np.zeros((n_atoms, 3))
        for a in range(n_atoms):
            d = positions[f, a] - ref_scaled[a] @ cell
            frac = d @ inv
            d = (frac - np.round(frac)) @ cell
            best = min((d + s for s in shifts), key=lambda v: v @ v)
            dr[a] = best
        dr -= dr.mean(axis=0)
        forces[f] = -p.k * dr
        for i in range(n_atoms):
            for j in range(n_atoms):
                for s in shifts:
                    if i == j and not s.any():
                        continue
                    d = positions[f, j] + s - positions[f, i]
                    r2 = d @ d
                    if r2 < p.rc**2:
                        x = 1 - r2 / p.rc**2
                        forces[f, i] += -2 * p.rep_m * p.rep_n * x ** (p.rep_n - 1) / p.rc**2 * d
        m = l0_inv @ cell
        eps = 0.5 * (m @ m.T - np.eye(3))
        stress[f] = lam * np.trace(eps) * np.eye(3) + 2 * mu * eps
    return forces, stress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop-structures", type=int, default=4, help="structures timed with the loop")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown section for BENCHMARKS.md")
    args = ap.parse_args()

    preset = get_preset("crystal")
    items = [(sid, parse_cif_row(sid, cif)) for sid, cif in load_structures("mp20-subset", lazy=True)]
    frames = [perturb(a, preset.noise, np.random.default_rng([0, i])) for i, (_, a) in enumerate(items)]
    n_frames_per = len(frames[0])

    # 1. vectorised vs loop, same frames
    sub = frames[: args.loop_structures]
    t0 = time.perf_counter()
    loop_out = [loop_labels(fr.positions, fr.cells, fr.ref_scaled, fr.ref_cell, preset.labels) for fr in sub]
    t_loop = (time.perf_counter() - t0) / len(sub)
    worst = 0.0
    for fr, (lf, ls) in zip(sub, loop_out):
        lab = compute_labels(fr.positions, fr.cells, fr.pbc, fr.ref_scaled, fr.ref_cell, preset.labels)
        worst = max(worst, np.abs(lab.forces - lf).max(), np.abs(lab.stress - ls).max())
    t0 = time.perf_counter()
    for fr in frames:
        compute_labels(fr.positions, fr.cells, fr.pbc, fr.ref_scaled, fr.ref_cell, preset.labels)
    t_vec = (time.perf_counter() - t0) / len(frames)

    # 2. the whole pipeline: cold (fresh cache: CIFs parsed with pymatgen) and warm
    #    (parsed structures from the cache), 1 and 2 workers
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers, fresh in (("cold", 1, True), ("warm", 1, False), ("cold", 2, True),
                                      ("warm", 2, False)):
            if fresh:
                os.environ["RMDATA_CACHE"] = tempfile.mkdtemp(dir=tmp)
            out = Path(tmp) / f"mp20_{label}_{workers}.h5"
            t0 = time.perf_counter()
            summary = make_dataset(out, "mp20-subset", seed=0, workers=workers)
            results[(label, workers)] = (time.perf_counter() - t0, summary.n_frames, summary.n_structures,
                                         out.stat().st_size)

    lines = ["## bench_rmdata", "",
             f"mp20-subset train split, crystal preset ({n_frames_per} frames per structure), "
             f"{len(items)} structures, {os.cpu_count()} cores.", "",
             "| what | per structure | frames/s | ratio |", "|---|---|---|---|",
             f"| Python loop over atoms and pairs ({len(sub)} structures) | {t_loop * 1e3:.1f} ms | "
             f"{n_frames_per / t_loop:,.0f} | 1x |",
             f"| vectorised labels (1 process) | {t_vec * 1e3:.2f} ms | {n_frames_per / t_vec:,.0f} | "
             f"{t_loop / t_vec:.0f}x |"]
    what = {"cold": "CIFs parsed (first run)", "warm": "parsed structures from the cache"}
    for (label, workers), (wall, nf, ns, size) in results.items():
        lines.append(f"| `rmdata make` to HDF5, {workers} worker(s), {what[label]} | "
                     f"{wall / ns * 1e3:.2f} ms | {nf / wall:,.0f} | - |")
    lines += ["", f"Largest difference loop vs vectorised: {worst:.1e} (eV/A, eV/A^3; must be < 1e-10).", ""]
    for label in ("cold", "warm"):
        wall2, nf2, ns2, size2 = results[(label, 2)]
        proj = wall2 / ns2 * MP20_TRAIN
        lines.append(f"Projected full MP-20 train split ({MP20_TRAIN:,} structures, "
                     f"{MP20_TRAIN * n_frames_per:,} frames, ~{size2 / ns2 * MP20_TRAIN / 1e9:.1f} GB HDF5), "
                     f"2 workers, {what[label]}: {proj:.0f} s (target < 120 s).  ")
    text = "\n".join(lines)
    print(text)
    if worst > 1e-10:
        raise SystemExit(f"loop and vectorised labels disagree by {worst:.2e}")


if __name__ == "__main__":
    main()
