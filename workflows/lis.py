"""Li-S: pseudo convex hull of Li_x S_(1-x) from random searches with a shipped MP-20-subset model.

Response Matching paper, Li-S example (DESIGN §5): a model trained on MP-20 crystals
(none of them a Li-S binary) relaxes random Li-S cells; the pseudo convex hull of the
model energies, ``E_ex = E - x E_Li - (1-x) E_S`` per atom, shows which compositions the
model considers stable. The question asked: is Li2S in the antifluorite structure
(Fm-3m, 225) on the hull?

``--system A-X`` asks the same question of another binary whose A2X is antifluorite
(Li-Se, Li-O, Na-S: the tuning systems of RESULTS.md, none of them in any mp20-subset split),
with the cation A first; x is then the fraction of A.

Model: by default the shipped ``model:lis-mace`` (``rmsearch models show lis-mace``): the
mp20-subset train crystals that contain Li or S (``rmdata make --containing Li,S``; every
val/csp15 composition and Li2S held out; there is no Li-S binary in any split, so
antifluorite Li2S is generalisation, not recall). It is the default because it measured
better than the all-element ``model:mp20-mace`` on the same search of 400 starts
(RESULTS.md, Li-S: 98 % against 32 % valid cells; antifluorite the lowest Li2S, where
mp20-mace found it once in 1113 starts, 62 meV/atom above its lowest Li2S). ``--potential DIR`` (or ``model:NAME``) searches with another potential.
Nothing is trained.

Steps (each skipped when its output exists):

1. ``rmsearch launch --system A-X --natoms 2-12 --nruns 5000`` into ``DIR/run``
2. ``rmsearch analyze DIR/run`` (validity, dedupe, pseudo hull, report)
3. this script: hull compositions, the A2X check (space group of the lowest A2X cluster
   and a StructureMatcher comparison with ideal antifluorite), the share of valid cells,
   its own hull figure and ``report.html``

Summary (``DIR/summary.json``): ``a2x_on_hull`` (the lowest A2X cluster is a hull vertex),
``a2x_lowest_is_antifluorite``, ``antifluorite_found``, ``a2x`` (the lowest A2X cluster and
the lowest antifluorite one: energy above the hull in eV/atom, volume in A^3/atom, hits,
lattice constant in A), ``hull`` (vertices, ``x`` the cation fraction, ``e_ex`` in eV/atom),
``valid_percent_of_converged``.

Usage::

    python workflows/lis.py --out lis_run                      # shipped model, 5000 runs
    python workflows/lis.py --out q --quick                    # test size (60 runs, 2-4 atoms)
    python workflows/lis.py --out mine --potential my_potential/
    python workflows/lis.py --out se --system Li-Se --nruns 1000 --max-steps 1500   # a tuning system
"""

from __future__ import annotations

import html
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, add_run_options, workflow_parser, write_page

log = logging.getLogger("workflows.lis")

#: Sizes: (runs, atoms per cell).
SIZES = {"full": (5000, "2-12"), "quick": (60, "2-4")}
SHIPPED = "model:lis-mace"
#: Antifluorite Li2S lattice constant (A), experiment.
LI2S_A = 5.71


def parse_system(system: str) -> tuple[str, str]:
    """``"A-X"`` -> (cation A, anion X), two different chemical elements."""
    from ase.data import atomic_numbers

    parts = system.split("-")
    if len(parts) != 2 or parts[0] == parts[1] or not all(p in atomic_numbers for p in parts):
        raise SystemExit(f"error: --system {system!r}: give two different elements as A-X, cation first "
                         "(e.g. Li-S, Li-Se, Na-S)")
    return parts[0], parts[1]


def antifluorite(a: float = LI2S_A, cation: str = "Li", anion: str = "S"):
    """Conventional antifluorite A2X (Fm-3m, 225): X on 4a, A on 8c; ``a`` in A."""
    from ase.spacegroup import crystal

    return crystal([anion, cation], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225,
                   cellpar=[a, a, a, 90, 90, 90])


def is_antifluorite(atoms, cation: str = "Li", anion: str = "S") -> bool:
    """Whether ``atoms`` matches antifluorite A2X (StructureMatcher stol 0.5, ltol 0.3, angle_tol 10;
    volume scaled, so a model lattice constant different from experiment still matches)."""
    from rmsearch.analysis.match import same_structure

    return same_structure(atoms, antifluorite(LI2S_A, cation, anion))


def cation_fraction(formula: str, cation: str = "Li") -> float:
    """x in A_x X_(1-x) of a formula."""
    from pymatgen.core import Composition

    return float(Composition(formula).get_atomic_fraction(cation))


def hull_compositions(report: dict[str, Any], cation: str = "Li") -> list[dict[str, Any]]:
    """Hull vertices of an analysis report, reduced formula and x (cation fraction), sorted by x."""
    from pymatgen.core import Composition

    out = []
    for v in report.get("hull_vertices", []):
        out.append({"formula": Composition(v["formula"]).reduced_formula, "cell_formula": v["formula"],
                    "x": cation_fraction(v["formula"], cation), "e_ex": v["e_ex"], "cluster_id": v["cluster_id"]})
    return sorted(out, key=lambda v: (v["x"], v["e_ex"]))


def a2x_check(rundir: Path, clusters: list[dict[str, Any]], cation: str = "Li", anion: str = "S") -> dict[str, Any]:
    """The lowest A2X cluster: energy above hull, space group, antifluorite match; and whether any
    antifluorite A2X cluster was found at all."""
    from pymatgen.core import Composition

    from rmsearch.records import read_records

    records = {r.run_id: r for r in read_records(rundir / "shards")}
    target = Composition({cation: 2, anion: 1}).reduced_formula
    a2x = [c for c in clusters if Composition(c["formula"]).reduced_formula == target]
    if not a2x:
        return {"found": False, "n_clusters": 0}
    lowest = min(a2x, key=lambda c: (c["e_hull"] if c["e_hull"] is not None else 1e9, c["energy_per_atom"]))
    anti = [c for c in a2x if is_antifluorite(records[c["representative"]].to_atoms(), cation, anion)]
    best_anti = min(anti, key=lambda c: c["energy_per_atom"]) if anti else None
    return {
        "found": True, "n_clusters": len(a2x),
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


def plot_hull(clusters: list[dict[str, Any]], hull: list[dict[str, Any]], path: Path,
              cation: str = "Li", anion: str = "S") -> None:
    """E_ex vs x (cation fraction) of every cluster, hull drawn and its compositions labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(cation_fraction(c["formula"], cation), c["e_ex"]) for c in clusters if c.get("e_ex") is not None]
    if pts:
        ax.scatter(*zip(*pts), s=12, c="0.6", label="clusters")
    if hull:
        ax.plot([v["x"] for v in hull], [v["e_ex"] for v in hull], "o-", c="tab:red", label="pseudo hull")
        for v in hull:
            ax.annotate(v["formula"], (v["x"], v["e_ex"]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)
    ax.axvline(2 / 3, c="tab:blue", ls=":", lw=1, label=f"{cation}2{anion} (x = 2/3)")
    ax.set_xlabel(f"x in {cation}_x {anion}_(1-x)")
    ax.set_ylabel("E_ex (eV/atom, model)")
    ax.set_title(f"{cation}-{anion} pseudo convex hull (Response Matching model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, summary: dict[str, Any], hull: list[dict[str, Any]], figure: str,
                 system: str = "Li-S") -> Path:
    """``report.html``: summary, hull table, link to the analysis report."""
    rows = "".join(f"<tr><td>{html.escape(v['formula'])}</td><td>{v['x']:.3f}</td><td>{v['e_ex']:.4f}</td>"
                   f"<td>{v['cluster_id']}</td></tr>" for v in hull)
    body = f"""<h2>Hull compositions</h2><table><tr><th>formula</th><th>x</th><th>E_ex (eV/atom)</th>
<th>cluster</th></tr>{rows}</table><p>Full analysis: <a href="run/report/index.html">run/report/index.html</a></p>"""
    return write_page(out, f"{system} pseudo convex hull", summary, figure, body, skip=("steps", "hull"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = workflow_parser(__doc__, "lis_run", SHIPPED)
    ap.add_argument("--system", default="Li-S",
                    help="binary A-X, cation first, whose A2X is checked against antifluorite")
    ap.add_argument("--quick", action="store_true", help="test size (60 runs of 2-4 atoms)")
    ap.add_argument("--nruns", type=int, help="random starts (default: 5000, quick 60)")
    ap.add_argument("--natoms", help="atoms per cell (default: 2-12, quick 2-4)")
    ap.add_argument("--volume-steps", type=int, default=0,
                    help="rmsearch launch --volume-steps: force calls of a constant-volume first stage "
                         "(default: 0, none)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nruns, natoms = SIZES["quick" if args.quick else "full"]
    nruns, natoms = args.nruns or nruns, args.natoms or natoms
    if nruns < 1 or args.max_steps < 1 or args.seed < 0 or args.volume_steps < 0:
        raise SystemExit("error: --nruns and --max-steps must be >= 1, --seed and --volume-steps >= 0")

    cation, anion = parse_system(args.system)
    system = f"{cation}-{anion}"
    potential = args.potential or SHIPPED
    p = Pipeline(args.out, force=args.force)
    rundir = p.out / "run"
    p.launch("search", rundir, potential, ["--system", system, "--natoms", natoms, "--max-steps", str(args.max_steps),
                                           "--dtype", args.dtype,
                                           *(["--volume-steps", str(args.volume_steps)] if args.volume_steps else [])],
             nruns=nruns, seed=args.seed, workers=args.workers)
    report = p.analyze("analyze", rundir, ["--top", "1000", "--workers", str(args.workers or 2)])
    clusters = report["top_clusters"]
    hull = hull_compositions(report, cation)
    a2x = a2x_check(rundir, clusters, cation, anion)
    converged = report["status_counts"].get("converged", 0)
    summary: dict[str, Any] = {
        "hull_compositions": [v["formula"] for v in hull],
        "system": system,
        "a2x_on_hull": a2x.get("on_hull", False),
        "a2x_lowest_spacegroup": (a2x.get("lowest") or {}).get("spacegroup"),
        "a2x_lowest_is_antifluorite": (a2x.get("lowest") or {}).get("antifluorite", False),
        "antifluorite_found": a2x.get("antifluorite_found", False),
        "a2x": a2x,
        "runs": report["status_counts"], "invalid": report["n_invalid"], "clusters": report["n_clusters"],
        "valid_percent_of_converged": round(100.0 * (converged - report["n_invalid"]) / converged, 1)
        if converged else 0.0,
        "hull_note": report.get("hull_note", ""),
        "model": {"potential": potential},
        "search": {"nruns": nruns, "natoms": natoms, "max_steps": args.max_steps, "dtype": args.dtype,
                   "seed": args.seed, "volume_steps": args.volume_steps},
    }
    plot_hull(clusters, hull, p.out / "lis_hull.png", cation, anion)
    p.finish({**summary, "hull": hull})
    path = write_report(p.out, summary, hull, "lis_hull.png", system)
    print(json.dumps(summary, indent=2, default=str))
    print(f"report: {path}")
    return summary


if __name__ == "__main__":
    main()
