"""Benchmark: analyse 5000 results of a Li-S-like search (dedupe must take < 1 min on 2 cores),
and a real native carbon search (``--carbon``).

Without ``--rundir`` a realistic synthetic result set is generated: several hundred distinct
Li-S structures (pyxtal random symmetric crystals of Li, S, Li2S, LiS, LiS2, Li2S3, Li3S,
LiS3, Li4S3 with 2-12 atoms), each found one or more times (hits skewed towards low
energies, as in a real search) and every hit disguised by a random translation, atom
permutation, rigid rotation, 0.01 A position noise and 2 meV/atom energy noise; plus 3 %
non-converged runs and 1 % runs with two atoms 0.5 A apart (invalid). They are written as
shards of a run directory and ``rmsearch.analysis.analyze`` is timed on it.

Reports dedupe wall time, StructureMatcher calls against the all-pairs count, how many of
the distinct structures were recovered, and the time of the whole analysis; writes the
``## bench_analyze`` section of BENCHMARKS.md (``--no-write`` to skip).

Both cases also cluster a random subsample (``--sample``, default 2000) with the plain
rule (every pair in neighbouring energy/volume bins goes to StructureMatcher) and with the
fingerprint gate, and report their pair-level agreement.

``--carbon N`` is the real-search case: a native carbon search of N runs (``rmsearch
launch --potential model:carbon-uf3 --system C --natoms 2-12 --volume-factor 0.684-1.008``,
or the run directory ``--rundir``), analysed with symmetry snapping: matcher calls, time,
peak memory, clusters before/after snapping and the space groups of the top clusters at
symprec 1e-3 before and after; written to the ``## bench_analyze: native carbon search``
section.

    python benchmarks/bench_analyze.py [--rundir RUNDIR] [--n 5000] [--distinct 400] [--workers 2]
    python benchmarks/bench_analyze.py --carbon 3000 [--rundir RUNDIR] [--sample 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from scipy.spatial.transform import Rotation

from rmdata.utils import atomic_output, pin_threads
from rmsearch.analysis.validity import check_validity
from rmsearch.records import RunRecord

COMPOSITIONS = [("Li", 1, 0), ("S", 0, 1), ("Li2S", 2, 1), ("LiS", 1, 1), ("LiS2", 1, 2), ("Li2S3", 2, 3),
                ("Li3S", 3, 1), ("LiS3", 1, 3), ("Li4S3", 4, 3)]
SPACEGROUPS = [1, 2, 5, 8, 12, 14, 15, 38, 62, 63, 65, 71, 119, 127, 139, 160, 164, 166, 191, 194, 216,
               221, 225, 227, 229]
E_LI, E_S = -1.9, -4.1  # eV/atom, pseudo elemental energies of the synthetic landscape
V_LI, V_S = 20.0, 17.0  # A^3/atom


def distinct_structures(n: int, rng: np.random.Generator) -> list[tuple[Atoms, float]]:
    """``n`` distinct pyxtal crystals with synthetic energies (eV/atom)."""
    from pyxtal import pyxtal

    out: list[tuple[Atoms, float]] = []
    while len(out) < n:
        _, nli, ns = COMPOSITIONS[len(out) % len(COMPOSITIONS)]
        z = int(rng.integers(1, max(2, 12 // (nli + ns)) + 1))
        species = [s for s, k in (("Li", nli), ("S", ns)) if k]
        counts = [k * z for k in (nli, ns) if k]
        sg = int(rng.choice(SPACEGROUPS))
        vol = sum(counts[i] * (V_LI if species[i] == "Li" else V_S) for i in range(len(species)))
        crystal = pyxtal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                crystal.from_random(3, sg, species, counts, factor=1.0, seed=int(rng.integers(1 << 30)))
            except Exception:  # composition not compatible with this space group: draw again
                continue
        if not crystal.valid:
            continue
        atoms = crystal.to_ase()
        if len(atoms) != sum(counts):  # pyxtal counts are for the conventional cell
            continue
        atoms.set_cell(atoms.cell * (vol / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
        if not check_validity(atoms, frac=0.75).valid:  # margin: noisy copies must stay valid at 0.7
            continue
        x = nli / (nli + ns)
        e = x * E_LI + (1 - x) * E_S - 0.4 * 4 * x * (1 - x) + rng.exponential(0.25)
        out.append((atoms, float(e)))
    return out


def disguise(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """The same structure as found by another run: moved, permuted, rotated, slightly noisy."""
    a = atoms[rng.permutation(len(atoms))]
    a.translate(rng.normal(size=3) * 3.0)
    a.wrap()
    rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    a.set_cell(np.asarray(a.cell) @ rot.T, scale_atoms=False)
    a.positions = a.positions @ rot.T + rng.normal(scale=0.01, size=(len(a), 3))
    return a


def make_synthetic_run(rundir: Path, n_records: int, n_distinct: int, seed: int) -> dict:
    """Write a synthetic Li-S run directory; return what is known about it."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    base = distinct_structures(n_distinct, rng)
    t_gen = time.perf_counter() - t0
    energies = np.array([e for _, e in base])
    weights = 1.0 / (np.argsort(np.argsort(energies)) + 5.0)  # low energy: found more often
    picks = np.concatenate([np.arange(n_distinct),
                            rng.choice(n_distinct, n_records - n_distinct, p=weights / weights.sum())])
    rng.shuffle(picks)
    (rundir / "shards").mkdir(parents=True, exist_ok=True)
    (rundir / "config.json").write_text(json.dumps({"seed": seed, "system": "Li-S", "synthetic": True,
                                                    "n_records": n_records, "n_distinct": n_distinct}))
    shards = [open(rundir / "shards" / f"worker{k}.jsonl", "wb") for k in range(2)]
    n_bad = 0
    for run_id, k in enumerate(picks):
        atoms, e = base[k]
        a = disguise(atoms, rng)
        status = "converged"
        u = rng.random()
        if u < 0.03:
            status = "not_converged"
        elif u < 0.04 and len(a) > 1:
            a.positions[1] = a.positions[0] + [0.5, 0.0, 0.0]
            n_bad += 1
        e_run = e + rng.normal(scale=0.002)
        rec = RunRecord.from_atoms(a, run_id=run_id, seed=seed * 100000 + run_id, status=status,
                                   energy=e_run * len(a), energy_per_atom=e_run,
                                   pressure_gpa=float(rng.normal(scale=0.05)),
                                   volume_per_atom=a.get_volume() / len(a), fmax=0.005, stress=[0.0] * 6)
        shards[run_id % 2].write((rec.to_json() + "\n").encode())
    for fh in shards:
        fh.close()
    return {"n_records": n_records, "n_distinct": n_distinct, "n_invalid_planted": n_bad,
            "distinct_hit": len(set(picks.tolist())), "generate_s": t_gen, "base_of_run": picks.tolist()}


def cluster_purity(rundir: Path, base_of_run: list[int]) -> dict[str, int]:
    """Compare the clusters in results.db with the known structure of every synthetic run.

    ``mixed_equal``: clusters holding several generated structures that StructureMatcher
    itself calls equal (pyxtal drew the same crystal twice), i.e. correct merges.
    """
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    from rmsearch.analysis.dedupe import make_matcher

    base_clusters: dict[int, set[int]] = {}
    cluster_bases: dict[int, dict[int, Atoms]] = {}
    for row in ase.db.connect(rundir / "results.db").select("cluster_id"):
        b = base_of_run[row.run_id]
        base_clusters.setdefault(b, set()).add(row.cluster_id)
        cluster_bases.setdefault(row.cluster_id, {}).setdefault(b, row.toatoms())
    matcher, ad = make_matcher(), AseAtomsAdaptor()
    mixed = [bases for bases in cluster_bases.values() if len(bases) > 1]
    mixed_equal = 0
    for bases in mixed:
        first, *rest = (ad.get_structure(a) for _, a in sorted(bases.items()))
        mixed_equal += all(matcher.fit(first, other, symmetric=True) for other in rest)
    return {"n_base": len(base_clusters), "split": sum(len(c) > 1 for c in base_clusters.values()),
            "mixed": len(mixed), "mixed_equal": mixed_equal}


def write_section(path: Path, text: str, title: str = "bench_analyze") -> None:
    """Replace (or append) the ``## TITLE`` section of BENCHMARKS.md."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n" + text.strip() + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    with atomic_output(path) as tmp:
        tmp.write_text(new)


def valid_items(rundir: Path):
    """Generator of (run_id, atoms, eV/atom) of the valid converged results of a run directory."""
    from rmsearch.analysis.collect import load_run
    from rmsearch.analysis.validity import split_valid

    run = load_run(rundir)
    ids, _ = split_valid(run.usable)
    recs = {r.run_id: r for r in run.usable}
    return [(rid, recs[rid].to_atoms(), recs[rid].energy_per_atom) for rid in ids]


def pair_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> dict[str, float]:
    """Pair-level agreement of two clusterings of the same structures.

    ``agreement``: fraction of all pairs on which both say "same cluster" or both say
    "different" (the Rand index); ``same_recall``: of the pairs in one cluster of ``a``,
    the fraction also in one cluster of ``b``; ``same_precision`` the other way round.
    """
    def same_pairs(lab: np.ndarray) -> int:
        _, counts = np.unique(lab, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())

    n = len(labels_a)
    both = same_pairs(labels_a.astype(np.int64) * (int(labels_b.max()) + 1) + labels_b)
    sa, sb = same_pairs(labels_a), same_pairs(labels_b)
    total = n * (n - 1) // 2
    return {"pairs": total, "same_a": sa, "same_b": sb, "same_both": both,
            "agreement": (total - sa - sb + 2 * both) / max(total, 1),
            "same_recall": both / max(sa, 1), "same_precision": both / max(sb, 1)}


def compare_rules(items: list, sample: int, workers: int, seed: int) -> dict:
    """Cluster a random subsample with the plain rule and with the fingerprint gate; agreement and cost."""
    from rmsearch.analysis.dedupe import dedupe

    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(items), size=min(sample, len(items)), replace=False).tolist())
    sub = [items[i] for i in pick]
    runs = {}
    for name, radius in (("plain", None), ("fingerprint", "default")):
        kw = {} if radius == "default" else {"fp_radius": None}
        t0 = time.perf_counter()
        res = dedupe(sub, workers=workers, **kw)
        runs[name] = (res, time.perf_counter() - t0)
    label = {name: res.cluster_of() for name, (res, _) in runs.items()}
    ids = [it[0] for it in sub]
    agree = pair_agreement(np.array([label["plain"][i] for i in ids]), np.array([label["fingerprint"][i] for i in ids]))
    return {"n": len(sub), **agree,
            **{f"{name}_{k}": v for name, (res, wall) in runs.items()
               for k, v in (("clusters", len(res.clusters)), ("calls", res.n_matcher_calls), ("wall_s", wall))}}


def agreement_line(c: dict) -> str:
    return (f"- plain rule vs fingerprint gate on a random subsample of {c['n']} valid structures: "
            f"**pair-level agreement {100 * c['agreement']:.3f} %** of {c['pairs']} pairs; of the "
            f"{c['same_a']} pairs the plain rule puts in one cluster, {100 * c['same_recall']:.2f} % are in one "
            f"cluster with the gate (and {100 * c['same_precision']:.2f} % of the gate's {c['same_b']} same-cluster "
            f"pairs are the plain rule's); clusters {c['plain_clusters']} vs {c['fingerprint_clusters']}, "
            f"matcher calls {c['plain_calls']} vs {c['fingerprint_calls']}, dedupe {c['plain_wall_s']:.1f} s vs "
            f"{c['fingerprint_wall_s']:.1f} s")


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of the largest child process."""
    import resource

    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def cpu_seconds() -> float:
    """CPU time (user + system, s) of this process and its finished children so far."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def launch_carbon(rundir: Path, nruns: int, workers: int, seed: int) -> float:
    """A native carbon search of ``nruns`` runs with the shipped carbon-uf3 model; returns its wall time (s)."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from rmsearch.cli import main; main()", "launch", "-o", str(rundir), "--potential",
                    "model:carbon-uf3", "--system", "C", "--natoms", "2-12", "--volume-factor", "0.684-1.008",
                    "--nruns", str(nruns), "--workers", str(workers), "--seed", str(seed), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def sg_text(sg: list) -> str:
    return f"{sg[1]} ({sg[0]})"


def carbon_case(args) -> None:
    """The real-search case (see the module doc)."""
    from rmsearch.analysis import analyze

    tmp = None
    launch_s = None
    if args.rundir:
        rundir = Path(args.rundir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_analyze_carbon_")
        rundir = Path(tmp.name) / "run"
        launch_s = launch_carbon(rundir, args.carbon, args.workers, args.seed)
    load0 = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    data = analyze(rundir, top=20, workers=args.workers, snap=True)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    rss = peak_rss_mb()
    d, sn = data["dedupe"], data["snap"] or {}
    lines = [
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, workers={args.workers}, Python "
        f"{platform.python_version()}; load average before/after the analysis {load0:.1f}/{os.getloadavg()[0]:.1f} "
        "(other jobs share the cores when it is above the worker count)",
        "- input: " + (f"native carbon search launched here ({args.carbon} runs, seed {args.seed}, "
                       f"{launch_s:.0f} s)" if launch_s is not None else f"{rundir}") +
        ": `rmsearch launch --potential model:carbon-uf3 --system C --natoms 2-12 --volume-factor 0.684-1.008`",
        f"- records {data['n_records']}, statuses {data['status_counts']}, invalid {data['n_invalid']}",
        f"- **dedupe: {d['n_structures']} valid structures -> {d['n_clusters_before_snap']} clusters in "
        f"{d['wall_s']:.1f} s**, {d['n_matcher_calls']} StructureMatcher calls + {d['n_quick_matches']} quick "
        f"duplicate matches (all pairs: {d['n_all_pairs']}); {d['n_candidate_groups']} independent candidate "
        f"groups, the largest {d['largest_candidate_group']} structures",
        (f"- **symmetry snapping: {sn['n_clusters_before']} -> {sn['n_clusters_after']} clusters** in "
         f"{sn['wall_s']:.1f} s; representatives: " + ", ".join(f"{k} {v}" for k, v in sn["status_counts"].items())
         if "n_clusters_after" in sn else f"- symmetry snapping: {sn.get('note', 'off')}"),
        f"- **whole analysis (collect, validity, dedupe, snapping, spglib scores, results.db, plots, report): "
        f"{total:.1f} s** wall, {cpu:.1f} s CPU (all processes; on a busy machine the CPU time over the "
        f"worker count is the better guide); peak memory {rss[0]:.0f} MB (main process), {rss[1]:.0f} MB (largest worker)",
    ]
    rows = ["", "Top clusters (space groups of the representative at symprec 1e-3 / 1e-1 A, and of the snapped "
            "structure at 1e-3 A):", "", "| rank | E (eV/atom) | hits | SG 1e-3 | SG 1e-1 | snapped SG 1e-3 | "
            "snapped E - E (meV/atom) |", "|---|---|---|---|---|---|---|"]
    for c in data["top_clusters"][:20]:
        snap = c.get("snap") or {}
        kept = snap.get("status") == "kept"
        rows.append(f"| {c['cluster_id']} | {c['energy_per_atom']:.4f} | {c['hits']} | "
                    f"{sg_text(c['spacegroups']['0.001'])} | {sg_text(c['spacegroups']['0.1'])} | "
                    f"{sg_text(snap['spacegroups']['0.001']) if kept else snap.get('status', '-')} | "
                    f"{1000 * snap['delta_e']:.3f} |" if kept else
                    f"| {c['cluster_id']} | {c['energy_per_atom']:.4f} | {c['hits']} | "
                    f"{sg_text(c['spacegroups']['0.001'])} | {sg_text(c['spacegroups']['0.1'])} | "
                    f"{snap.get('status', '-')} | - |")
    if args.sample > 0:
        cmp = compare_rules(valid_items(rundir), args.sample, args.workers, args.seed)
        lines.append(agreement_line(cmp))
        lines.append("- the pairs the plain rule joins and the gate keeps apart are distinct minima that "
                     "StructureMatcher joins at stol 0.5 (e.g. a 4-atom C2/m minimum 17.5 meV/atom above "
                     "lonsdaleite, fingerprint distance 2.3; repeat hits of one minimum lie within 0.002): see "
                     "rmsearch/analysis/fingerprint.py")
    cmd = f"python benchmarks/bench_analyze.py --carbon {args.carbon}" + \
        (f" --rundir {args.rundir}" if args.rundir else "") + f" --workers {args.workers} --sample {args.sample}"
    text = f"Command: `{cmd}`\n\n" + "\n".join(lines + rows)
    print(text)
    if not args.no_write:
        title = f"bench_analyze: native carbon search, {data['n_records']} runs"
        write_section(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", text, title)
    if tmp is not None:
        tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rundir", help="analyse this run directory instead of a synthetic one")
    ap.add_argument("--n", type=int, default=5000, help="synthetic records")
    ap.add_argument("--distinct", type=int, default=400, help="distinct synthetic structures")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--carbon", type=int, default=0, help="real-search case: native carbon search of this many "
                    "runs (or --rundir)")
    ap.add_argument("--sample", type=int, default=2000, help="subsample for plain-rule agreement (0: skip)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    pin_threads(1)
    logging.basicConfig(level=logging.WARNING)
    if args.carbon:
        carbon_case(args)
        return
    from rmsearch.analysis import analyze

    tmp = None
    if args.rundir:
        rundir, truth = Path(args.rundir), None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_analyze_")
        rundir = Path(tmp.name) / "run"
        truth = make_synthetic_run(rundir, args.n, args.distinct, args.seed)
        print("synthetic run:", {k: v for k, v in truth.items() if k != "base_of_run"})
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    data = analyze(rundir, top=20, workers=args.workers)
    total = time.perf_counter() - t0
    d = data["dedupe"]
    purity = cluster_purity(rundir, truth["base_of_run"]) if truth else None
    cmp = compare_rules(valid_items(rundir), args.sample, args.workers, args.seed) if args.sample > 0 else None
    lines = [
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, workers={args.workers}, Python "
        f"{platform.python_version()}; load average before/after the analysis {load0:.1f}/{os.getloadavg()[0]:.1f} "
        "(other jobs share the cores when it is above the worker count)",
        "- input: " + (f"synthetic Li-S set (seed {args.seed}): {truth['n_records']} records of "
                       f"{truth['n_distinct']} distinct pyxtal structures, {truth['n_invalid_planted']} "
                       "planted invalid" if truth else str(rundir)),
        f"- records {data['n_records']}, statuses {data['status_counts']}, invalid {data['n_invalid']}",
        f"- **dedupe: {d['n_structures']} valid structures -> {d['n_clusters']} clusters in {d['wall_s']:.1f} s**"
        + (f" (distinct structures among them: {truth['distinct_hit']})" if truth else ""),
        (f"- against the known answer: {purity['n_base']} distinct structures have valid hits; "
         f"{purity['split']} of them were split over more than one cluster; {purity['mixed']} clusters "
         f"hold more than one of them, in {purity['mixed_equal']} of which StructureMatcher itself calls "
         f"those generated structures equal (pyxtal drew the same crystal twice)"
         if purity else "- (real run: no known answer)"),
        f"- StructureMatcher calls: **{d['n_matcher_calls']}** (plus {d['n_quick_matches']} pairs accepted by "
        f"the quick duplicate test) vs {d['n_all_pairs']} all pairs "
        f"({d['n_matcher_calls'] / max(d['n_all_pairs'], 1):.2e} of them; "
        f"{d['n_pairs_same_composition']} pairs share a composition)",
        f"- whole analysis (collect, validity, dedupe, spglib scores, hull, results.db, plots, report): "
        f"{total:.1f} s",
    ]
    if cmp:
        lines.append(agreement_line(cmp))
    lines.append("- the quick duplicate test only accepts pairs far inside the matcher's tolerances (same Niggli "
                 "cell within 2 %/1 degree, every atom within 0.1 (V/N)^(1/3)); "
                 "tests/test_analysis_dedupe.py checks it against StructureMatcher")
    text = "Command: `python benchmarks/bench_analyze.py" + (f" --rundir {args.rundir}" if args.rundir else "") + \
           f" --workers {args.workers}`\n\n" + "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", text)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
