"""MP-20 crystal structure prediction: train on MP-20 crystals, search target compositions.

Response Matching paper, CSP example (DESIGN §5): one short-ranged MACE trained on
response-matched MP-20 training crystals; for every target composition, 30 random
starts with the atom count of the target cell are relaxed, and a target counts as found
when one of the resulting structures matches it (pymatgen StructureMatcher, stol 0.5,
ltol 0.3, angle_tol 10). Paper: 8 of the 15 DiffCSP compositions of
``data/csp15.json`` (DiffCSP 11).

Data: the full ``mp20`` set when it has been downloaded (``--dataset mp20``), else the
shipped ``mp20-subset`` (847 train / 123 val crystals, no test split). Training on CPU is
sized with ``--limit`` (reference crystals), ``--strains`` and ``--levels`` (frames per
crystal), ``--epochs`` and ``--channels``; the summary records what was used.

Targets: by default the first ``--ntargets`` crystals of the ``val`` split whose elements
the model was trained on and that have at most ``--max-natoms`` atoms. ``--targets
FILE.json`` takes a ``csp15.json``-style list (its ``"compositions"``, formula per cell);
each is matched against ``--reference`` structures with the same formula per cell
(default: the val split of the dataset). A target without a reference structure (the
csp15 list is from MP-20 *test*, not shipped offline) is searched and reported but not
scored, and the summary says so.

Steps (each skipped when its output exists):

1. ``rmdata make --dataset mp20-subset --limit ... --strains ... --levels ...``
2. ``mace_run_train ...`` as printed by ``rmdata mace-command``
3. ``rmsearch export``
4. per target: ``rmsearch launch --composition F --natoms N --nruns 30``
5. per target: ``rmsearch analyze RUN --reference target.extxyz --match-top-k 30``
6. this script's figure: RMSD per target (matched) and the lowest-energy trial's
   energy above the best, plus ``report.html``

Usage::

    python workflows/mp20_csp.py --out mp20_run                       # default size
    python workflows/mp20_csp.py --out q --quick                      # test size
    python workflows/mp20_csp.py --out c --targets rmdata/data/csp15.json --dataset mp20
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, add_run_options, read_report, write_page

log = logging.getLogger("workflows.mp20_csp")

#: Sizes: (training crystals (None = all), strains, levels, epochs, channels, targets, trials).
SIZES = {
    "full": (None, "-0.1,-0.05,0,0.05,0.1", "0,1,2,4,8,16,32", 20, 16, 10, 30),
    "quick": (150, "-0.05,0,0.05", "0,2,4,8,16", 4, 16, 2, 30),
}
PAPER = {"csp15_found": 8, "csp15_total": 15, "diffcsp_found": 11}


# ----------------------------------------------------------------------------- targets

def read_target_list(path: str | Path) -> list[str]:
    """Formulas per cell of a ``csp15.json``-style file (its ``"compositions"`` list)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: --targets {path}: unreadable JSON ({exc})") from None
    comps = data.get("compositions") if isinstance(data, dict) else data
    if not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps):
        raise SystemExit(f"error: --targets {path}: needs a non-empty list of formulas under "
                         "'compositions' (as rmdata/data/csp15.json)")
    return comps


def cell_formula(formula_or_atoms) -> str:
    """Formula per cell in a canonical form: elements alphabetical, counts of 1 left out
    (``Sb2Co2`` -> ``Co2Sb2``, ``Si2(CN2)4`` -> ``C4N8Si2``)."""
    from pymatgen.core import Composition

    text = formula_or_atoms if isinstance(formula_or_atoms, str) else formula_or_atoms.get_chemical_formula()
    amounts = Composition(text).get_el_amt_dict()
    return "".join(f"{el}{'' if n == 1 else int(n)}" for el, n in sorted(amounts.items()))


def search_args(formula_per_cell: str) -> tuple[str, int]:
    """(reduced formula, atoms per cell) for ``rmsearch launch --composition F --natoms N``."""
    from pymatgen.core import Composition

    comp = Composition(formula_per_cell)
    reduced, _ = comp.get_reduced_formula_and_factor()
    counts = Composition(reduced).get_el_amt_dict()
    formula = "".join(f"{el}{int(n) if n != 1 else ''}" for el, n in counts.items())
    return formula, round(comp.num_atoms)


def select_targets(references: list[tuple[str, Any]], known: set[str], n: int, max_natoms: int,
                   wanted: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Choose targets; returns (targets, notes).

    ``references``: (id, Atoms) in dataset order. ``known``: elements the model knows.
    Without ``wanted``: the first ``n`` references with known elements and at most
    ``max_natoms`` atoms. With ``wanted`` (formulas per cell): each formula, with the first
    reference structure of that formula per cell (or none). Every target dict holds
    ``formula`` (per cell), ``composition`` and ``natoms`` (launch arguments), ``id`` and
    ``atoms`` of the reference (None when there is none).
    """
    notes: list[str] = []
    out: list[dict[str, Any]] = []
    if wanted is None:
        for rid, atoms in references:
            if len(out) == n:
                break
            if set(atoms.get_chemical_symbols()) <= known and len(atoms) <= max_natoms:
                f = cell_formula(atoms)
                comp, natoms = search_args(f)
                out.append({"formula": f, "composition": comp, "natoms": natoms, "id": rid, "atoms": atoms})
        if len(out) < n:
            notes.append(f"only {len(out)} reference structures with known elements and <= {max_natoms} atoms")
        return out, notes
    by_formula: dict[str, tuple[str, Any]] = {}
    for rid, atoms in references:
        by_formula.setdefault(cell_formula(atoms), (rid, atoms))
    for w in wanted:
        from pymatgen.core import Composition

        f = cell_formula(w)
        missing = sorted({el.symbol for el in Composition(f).elements} - known)
        if missing:
            notes.append(f"{w}: not searched, the model was not trained on {', '.join(missing)}")
            continue
        comp, natoms = search_args(f)
        rid, atoms = by_formula.get(f, (None, None))
        if atoms is None:
            notes.append(f"{w}: no reference structure with this formula per cell; searched, not scored")
        out.append({"formula": f, "composition": comp, "natoms": natoms, "id": rid, "atoms": atoms})
    return out, notes


def load_reference_atoms(spec: str) -> list[tuple[str, Any]]:
    """(id, Atoms) of an rmdata registry split ``NAME:SPLIT`` or of a structure file."""
    from ase.io import read

    from rmdata.datasets import load_structures

    if ":" in spec and not Path(spec).exists():
        name, split = spec.split(":", 1)
        return [(sid, a) for sid, a in load_structures(dataset=name, split=split) if not isinstance(a, str)]
    return [(f"{Path(spec).name}:{k}", a) for k, a in enumerate(read(spec, index=":"))]


def trained_elements(data: Path) -> set[str]:
    """Element symbols of an rmdata training file."""
    from ase.data import chemical_symbols

    from rmdata.mace import dataset_elements

    numbers, _ = dataset_elements(data)
    return {chemical_symbols[z] for z in numbers}


# ----------------------------------------------------------------------------- report

def plot_targets(rows: list[dict[str, Any]], path: Path) -> None:
    """Per target: best-match RMSD (matched) and whether the lowest trial is the match."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["formula"] for r in rows]
    rmsd = [r["rmsd"] if r["matched"] else np.nan for r in rows]
    colours = ["tab:green" if r["matched"] else ("tab:red" if r["scored"] else "0.7") for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ax.bar(x, [v if np.isfinite(v) else 0.0 for v in rmsd], color=colours)
    for k, r in enumerate(rows):
        text = f"{r['rmsd']:.2f}" if r["matched"] else ("no match" if r["scored"] else "no ref")
        ax.text(k, (rmsd[k] if np.isfinite(rmsd[k]) else 0.0) + 0.005, text, ha="center", fontsize=7, rotation=90)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("RMSD of best match (StructureMatcher, normalised)")
    found = sum(r["matched"] for r in rows)
    scored = sum(r["scored"] for r in rows)
    ax.set_title(f"MP-20 CSP: {found} of {scored} scored targets found (30 trials each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], figure: str) -> Path:
    """``report.html``: summary, target table, links to each run's analysis report."""
    rows = "".join(
        f"<tr><td>{html.escape(r['formula'])}</td><td>{html.escape(str(r['id']))}</td><td>{r['natoms']}</td>"
        f"<td>{r['trials']}</td><td>{r['converged']}</td><td>{r['clusters']}</td>"
        f"<td>{'yes' if r['matched'] else ('no' if r['scored'] else 'no reference')}</td>"
        f"<td>{'' if r['rmsd'] is None else format(r['rmsd'], '.3f')}</td>"
        f"<td>{html.escape(str(r['lowest_spacegroup']))}</td><td>{html.escape(str(r['reference_spacegroup']))}</td>"
        f"<td><a href='runs/{html.escape(r['formula'])}/report/index.html'>analysis</a></td></tr>" for r in rows)
    body = f"""<h2>Targets</h2><table><tr><th>formula</th><th>reference</th><th>atoms</th><th>trials</th>
<th>converged</th><th>clusters</th><th>found</th><th>RMSD</th><th>lowest trial (space group)</th>
<th>reference space group</th><th>report</th></tr>{rows}</table>"""
    return write_page(out, "MP-20 crystal structure prediction", summary, figure, body, skip=("steps", "targets"))


def spacegroup_of(atoms) -> str:
    """``"symbol (number)"`` of a periodic structure at symprec 0.1 A."""
    from rmsearch.analysis.score import spacegroup

    number, symbol = spacegroup(atoms, 0.1)
    return f"{symbol} ({number})"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="mp20_run", help="output folder")
    ap.add_argument("--quick", action="store_true", help="test size (fewer crystals, frames, epochs, targets)")
    ap.add_argument("--dataset", default="mp20-subset", help="training set: mp20 (downloaded) or mp20-subset")
    ap.add_argument("--limit", type=int, help="training crystals (default: by size; 0 = all)")
    ap.add_argument("--strains", help="isotropic strains per crystal, comma-separated (default: by size)")
    ap.add_argument("--levels", help="position-noise levels, comma-separated (default: by size)")
    ap.add_argument("--epochs", type=int, help="MACE epochs (default: by size)")
    ap.add_argument("--channels", type=int, help="MACE channels (default: by size)")
    ap.add_argument("--targets", help="csp15.json-style list of formulas per cell (default: val split)")
    ap.add_argument("--reference", help="reference structures, NAME:SPLIT or a file (default: DATASET:val)")
    ap.add_argument("--ntargets", type=int, help="targets taken from the reference split (default: by size)")
    ap.add_argument("--max-natoms", type=int, default=12, help="largest target cell from the split (atoms)")
    ap.add_argument("--trials", type=int, help="random starts per target (default 30)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limit, strains, levels, epochs, channels, ntargets, trials = SIZES["quick" if args.quick else "full"]
    if args.limit is not None:
        limit = args.limit or None
    strains, levels = args.strains or strains, args.levels or levels
    epochs, channels = args.epochs or epochs, args.channels or channels
    ntargets, trials = args.ntargets or ntargets, args.trials or trials
    reference = args.reference or f"{args.dataset}:val"

    p = Pipeline(args.out, force=args.force)
    data = p.out / "data" / "mp20_train.xyz"
    make = ["rmdata", "make", "--dataset", args.dataset, "--split", "train", "--strains", strains,
            "--levels", levels, "--seed", str(args.seed), "-o", str(data), "-j", "1"]
    if limit:
        make += ["--limit", str(limit)]
    p.run("data", make, done=data)
    model = p.train(data, "mp20", epochs, channels, args.seed)
    potdir = p.out / "potential"
    p.run("export", ["rmsearch", "export", str(model), "--training", str(data), "--out", str(potdir)],
          done=potdir / "potential.json")

    known = trained_elements(data)
    refs = load_reference_atoms(reference)
    wanted = read_target_list(args.targets) if args.targets else None
    targets, notes = select_targets(refs, known, ntargets, args.max_natoms, wanted)
    if not targets:
        raise SystemExit("error: no target can be searched: " + "; ".join(notes))
    from ase.io import write

    rows = []
    for t in targets:
        rundir = p.out / "runs" / t["formula"]
        launch = ["rmsearch", "launch", "--potential", str(potdir), "--composition", t["composition"],
                  "--natoms", str(t["natoms"]), "--nruns", str(trials), "--max-steps", str(args.max_steps),
                  "--dtype", args.dtype, "--seed", str(args.seed), "-o", str(rundir), "--no-progress"]
        if args.workers:
            launch += ["--workers", str(args.workers)]
        p.run(f"search {t['formula']}", launch)
        analyze = ["rmsearch", "analyze", str(rundir), "--top", "5", "--match-top-k", str(trials)]
        if t["atoms"] is not None:
            ref_file = p.out / "runs" / f"{t['formula']}.reference.extxyz"
            write(ref_file, t["atoms"], format="extxyz")
            analyze += ["--reference", str(ref_file)]
        p.run(f"analyze {t['formula']}", analyze)
        rep = read_report(rundir)
        match = (rep.get("match") or {}).get("rows") or [{}]
        top = rep["top_clusters"][0] if rep["top_clusters"] else None
        rows.append({
            "formula": t["formula"], "id": t["id"], "natoms": t["natoms"], "trials": rep["n_records"],
            "converged": rep["status_counts"].get("converged", 0), "clusters": rep["n_clusters"],
            "scored": t["atoms"] is not None, "matched": bool(match[0].get("matched", False)),
            "rmsd": match[0].get("rmsd"), "match_cluster": match[0].get("cluster_id"),
            "lowest_spacegroup": None if top is None else f"{top['spacegroups']['0.1'][1]} ({top['spacegroups']['0.1'][0]})",
            "lowest_energy_per_atom": None if top is None else top["energy_per_atom"],
            "reference_spacegroup": None if t["atoms"] is None else spacegroup_of(t["atoms"]),
        })
        print(f"[{t['formula']}] found: {rows[-1]['matched']} rmsd {rows[-1]['rmsd']}", flush=True)

    scored = [r for r in rows if r["scored"]]
    matched = [r for r in scored if r["matched"]]
    summary: dict[str, Any] = {
        "targets_searched": len(rows), "targets_scored": len(scored), "found": len(matched),
        "match_rate": round(len(matched) / len(scored), 3) if scored else None,
        "mean_rmsd": round(sum(r["rmsd"] for r in matched) / len(matched), 4) if matched else None,
        "found_formulas": [r["formula"] for r in matched],
        "lowest_is_match": sum(r["match_cluster"] == 0 for r in matched),
        "paper": PAPER, "notes": notes, "reference": reference,
        "training": {"dataset": args.dataset, "split": "train", "limit": limit, "strains": strains,
                     "levels": levels, "epochs": epochs, "channels": channels, "seed": args.seed,
                     "elements": len(known)},
        "search": {"trials": trials, "max_steps": args.max_steps, "dtype": args.dtype},
    }
    plot_targets(rows, p.out / "mp20_targets.png")
    p.finish({**summary, "targets": rows})
    path = write_report(p.out, summary, rows, "mp20_targets.png")
    print(json.dumps(summary, indent=2))
    print(f"report: {path}")
    return summary


if __name__ == "__main__":
    main()
