"""Li-S: pseudo convex hull of Li_x S_(1-x) from random searches with an MP-20-trained model.

Response Matching paper, Li-S example (DESIGN §5): a model trained on MP-20 crystals
(none of them need be a Li-S binary) relaxes random Li-S cells; the pseudo convex hull
of the model energies, ``E_ex = E - x E_Li - (1-x) E_S`` per atom, shows which
compositions the model considers stable. The question asked: is Li2S in the antifluorite
structure (Fm-3m, 225) on the hull?

Model: ``--potential DIR`` reuses a potential directory, normally the MP-20 CSP
workflow's (``mp20_run/potential``: "the MP-20 model"). Without it this script trains
its own, smaller MP-20 model on the MP-20 training crystals that contain Li or S
(``rmdata make --elements`` keeps only structures made *entirely* of the listed
elements, and the MP-20 subset has no Li-S binary in its train split, so the Li/S
containing crystals are written to an input file instead).

Steps (each skipped when its output exists):

1. (own model only) Li- or S-containing MP-20 train crystals -> ``data/references.xyz``;
   ``rmdata make --input ... --preset crystal``; ``mace_run_train`` as printed by
   ``rmdata mace-command``; ``rmsearch export``
2. ``rmsearch launch --system Li-S --natoms ... --nruns ...`` (paper size 5000)
3. ``rmsearch analyze`` (dedupe, pseudo hull, report)
4. this script: hull compositions, the Li2S check (space group of the lowest Li2S
   cluster and a StructureMatcher comparison with ideal antifluorite), its own hull
   figure and ``report.html``

Usage::

    python workflows/lis.py --out lis_run --potential mp20_run/potential   # MP-20 model
    python workflows/lis.py --out q --quick                                 # test size
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, add_run_options, read_report, write_page

log = logging.getLogger("workflows.lis")

#: Sizes: (training crystals (None = all Li/S ones), strains, levels, epochs, channels, runs, natoms).
SIZES = {
    "full": (None, "-0.1,-0.05,0,0.05,0.1", "0,1,2,4,8,16,32", 20, 16, 5000, "2-12"),
    "quick": (60, "-0.05,0,0.05", "0,2,4,8,16", 4, 16, 60, "2-4"),
}
#: Antifluorite Li2S lattice constant (A), experiment.
LI2S_A = 5.71


def antifluorite_li2s(a: float = LI2S_A):
    """Conventional antifluorite Li2S (Fm-3m, 225): S on 4a, Li on 8c; ``a`` in A."""
    from ase.spacegroup import crystal

    return crystal(["S", "Li"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225,
                   cellpar=[a, a, a, 90, 90, 90])


def is_antifluorite(atoms) -> bool:
    """Whether ``atoms`` matches antifluorite Li2S (StructureMatcher stol 0.5, ltol 0.3, angle_tol 10;
    volume scaled, so a model lattice constant different from 5.71 A still matches)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    matcher = StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)
    return bool(matcher.fit(AseAtomsAdaptor.get_structure(atoms),
                            AseAtomsAdaptor.get_structure(antifluorite_li2s()), symmetric=True))


def li_fraction(formula: str) -> float:
    """x in Li_x S_(1-x) of a formula."""
    from pymatgen.core import Composition

    return float(Composition(formula).get_atomic_fraction("Li"))


def hull_compositions(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Hull vertices of an analysis report, reduced formula and x_Li, sorted by x_Li."""
    from pymatgen.core import Composition

    out = []
    for v in report.get("hull_vertices", []):
        out.append({"formula": Composition(v["formula"]).reduced_formula, "cell_formula": v["formula"],
                    "x_li": li_fraction(v["formula"]), "e_ex": v["e_ex"], "cluster_id": v["cluster_id"]})
    return sorted(out, key=lambda v: (v["x_li"], v["e_ex"]))


def li2s_check(rundir: Path, clusters: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest Li2S cluster: energy above hull, space group, antifluorite match; and whether any
    antifluorite Li2S cluster was found at all."""
    from pymatgen.core import Composition

    from rmsearch.records import read_records

    records = {r.run_id: r for r in read_records(rundir / "shards")}
    li2s = [c for c in clusters if Composition(c["formula"]).reduced_formula == "Li2S"]
    if not li2s:
        return {"found": False, "n_clusters": 0}
    lowest = min(li2s, key=lambda c: (c["e_hull"] if c["e_hull"] is not None else 1e9, c["energy_per_atom"]))
    anti = [c for c in li2s if is_antifluorite(records[c["representative"]].to_atoms())]
    best_anti = min(anti, key=lambda c: c["energy_per_atom"]) if anti else None
    return {
        "found": True, "n_clusters": len(li2s),
        "lowest": {"cell_formula": lowest["formula"], "e_hull": lowest["e_hull"],
                   "energy_per_atom": lowest["energy_per_atom"], "volume_per_atom": lowest["volume_per_atom"],
                   "spacegroup": lowest["spacegroups"]["0.1"], "hits": lowest["hits"],
                   "antifluorite": bool(anti) and best_anti["cluster_id"] == lowest["cluster_id"]},
        "antifluorite_found": bool(anti),
        "antifluorite": None if best_anti is None else {
            "e_hull": best_anti["e_hull"], "energy_per_atom": best_anti["energy_per_atom"],
            "volume_per_atom": best_anti["volume_per_atom"], "hits": best_anti["hits"],
            "lattice_constant_A": round((4 * 3 * best_anti["volume_per_atom"]) ** (1 / 3), 3)},
        "on_hull": lowest["e_hull"] is not None and abs(lowest["e_hull"]) < 1e-9,
    }


def li_s_references(path: Path, dataset: str, limit: int | None) -> dict[str, int]:
    """Write the train-split crystals of ``dataset`` that contain Li or S to ``path`` (extxyz)."""
    from ase.io import write

    from rmdata.datasets import load_structures
    from rmdata.utils import atomic_output

    kept = [a for _, a in load_structures(dataset=dataset, split="train")
            if not isinstance(a, str) and {"Li", "S"} & set(a.get_chemical_symbols())]
    n_all = len(kept)
    kept = kept[:limit] if limit else kept
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        write(tmp, kept, format="extxyz")
    return {"li_or_s_crystals": n_all, "training": len(kept)}


def plot_hull(clusters: list[dict[str, Any]], hull: list[dict[str, Any]], path: Path) -> None:
    """E_ex vs x_Li of every cluster, hull drawn and its compositions labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(li_fraction(c["formula"]), c["e_ex"]) for c in clusters if c.get("e_ex") is not None]
    if pts:
        ax.scatter(*zip(*pts), s=12, c="0.6", label="clusters")
    if hull:
        ax.plot([v["x_li"] for v in hull], [v["e_ex"] for v in hull], "o-", c="tab:red", label="pseudo hull")
        for v in hull:
            ax.annotate(v["formula"], (v["x_li"], v["e_ex"]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)
    ax.axvline(2 / 3, c="tab:blue", ls=":", lw=1, label="Li2S (x = 2/3)")
    ax.set_xlabel("x in Li_x S_(1-x)")
    ax.set_ylabel("E_ex (eV/atom, model)")
    ax.set_title("Li-S pseudo convex hull (Response Matching model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, summary: dict[str, Any], hull: list[dict[str, Any]], figure: str) -> Path:
    """``report.html``: summary, hull table, link to the analysis report."""
    rows = "".join(f"<tr><td>{html.escape(v['formula'])}</td><td>{v['x_li']:.3f}</td><td>{v['e_ex']:.4f}</td>"
                   f"<td>{v['cluster_id']}</td></tr>" for v in hull)
    body = f"""<h2>Hull compositions</h2><table><tr><th>formula</th><th>x_Li</th><th>E_ex (eV/atom)</th>
<th>cluster</th></tr>{rows}</table><p>Full analysis: <a href="run/report/index.html">run/report/index.html</a></p>"""
    return write_page(out, "Li-S pseudo convex hull", summary, figure, body, skip=("steps", "hull"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="lis_run", help="output folder")
    ap.add_argument("--quick", action="store_true", help="test size (small model and search)")
    ap.add_argument("--potential", help="potential directory to reuse (e.g. mp20_run/potential)")
    ap.add_argument("--dataset", default="mp20-subset", help="training set of the own model")
    ap.add_argument("--limit", type=int, help="Li/S-containing training crystals (default: by size; 0 = all)")
    ap.add_argument("--strains", help="isotropic strains, comma-separated (default: by size)")
    ap.add_argument("--levels", help="position-noise levels, comma-separated (default: by size)")
    ap.add_argument("--epochs", type=int, help="MACE epochs (default: by size)")
    ap.add_argument("--channels", type=int, help="MACE channels (default: by size)")
    ap.add_argument("--nruns", type=int, help="random starts (default: 5000, quick 60)")
    ap.add_argument("--natoms", help="atoms per cell (default: 2-12, quick 2-4)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limit, strains, levels, epochs, channels, nruns, natoms = SIZES["quick" if args.quick else "full"]
    if args.limit is not None:
        limit = args.limit or None
    strains, levels = args.strains or strains, args.levels or levels
    epochs, channels = args.epochs or epochs, args.channels or channels
    nruns, natoms = args.nruns or nruns, args.natoms or natoms

    p = Pipeline(args.out, force=args.force)
    if args.potential:
        potdir = Path(args.potential).resolve()
        if not (potdir / "potential.json").exists():
            raise SystemExit(f"error: --potential {args.potential}: no potential.json; give the folder "
                             "'rmsearch export' wrote (e.g. mp20_run/potential)")
        model_info: dict[str, Any] = {"potential": str(potdir), "reused": True}
    else:
        refs = p.out / "data" / "references.xyz"
        counts_path = p.out / "data" / "references.json"
        if not refs.exists() or args.force:
            t0 = time.perf_counter()
            counts_path.write_text(json.dumps(li_s_references(refs, args.dataset, limit)) + "\n")
            p.steps.append({"step": "references", "command": f"{args.dataset} train crystals containing Li or S",
                            "wall_s": round(time.perf_counter() - t0, 1)})
        data = p.out / "data" / "lis_train.xyz"
        p.run("data", ["rmdata", "make", "--input", str(refs), "--preset", "crystal", "--strains", strains,
                       "--levels", levels, "--seed", str(args.seed), "-o", str(data), "-j", "1"], done=data)
        model = p.train(data, "lis", epochs, channels, args.seed)
        potdir = p.out / "potential"
        p.run("export", ["rmsearch", "export", str(model), "--training", str(data), "--out", str(potdir)],
              done=potdir / "potential.json")
        model_info = {"reused": False, **json.loads(counts_path.read_text()), "dataset": args.dataset,
                      "strains": strains, "levels": levels, "epochs": epochs, "channels": channels}

    rundir = p.out / "run"
    launch = ["rmsearch", "launch", "--potential", str(potdir), "--system", "Li-S", "--natoms", natoms,
              "--nruns", str(nruns), "--max-steps", str(args.max_steps), "--dtype", args.dtype,
              "--seed", str(args.seed), "-o", str(rundir), "--no-progress"]
    if args.workers:
        launch += ["--workers", str(args.workers)]
    p.run("search", launch)
    p.run("analyze", ["rmsearch", "analyze", str(rundir), "--top", "1000"])

    report = read_report(rundir)
    clusters = report["top_clusters"]
    hull = hull_compositions(report)
    li2s = li2s_check(rundir, clusters)
    summary: dict[str, Any] = {
        "hull_compositions": [v["formula"] for v in hull],
        "li2s_on_hull": li2s.get("on_hull", False),
        "li2s_lowest_spacegroup": (li2s.get("lowest") or {}).get("spacegroup"),
        "li2s_lowest_is_antifluorite": (li2s.get("lowest") or {}).get("antifluorite", False),
        "antifluorite_found": li2s.get("antifluorite_found", False),
        "li2s": li2s,
        "runs": report["status_counts"], "invalid": report["n_invalid"], "clusters": report["n_clusters"],
        "hull_note": report.get("hull_note", ""),
        "model": model_info,
        "search": {"nruns": nruns, "natoms": natoms, "max_steps": args.max_steps, "dtype": args.dtype,
                   "seed": args.seed},
    }
    plot_hull(clusters, hull, p.out / "lis_hull.png")
    p.finish({**summary, "hull": hull})
    path = write_report(p.out, summary, hull, "lis_hull.png")
    print(json.dumps(summary, indent=2, default=str))
    print(f"report: {path}")
    return summary


if __name__ == "__main__":
    main()
