"""MP-20 crystal structure prediction with the shipped MP-20 model, scored by the DiffCSP protocol.

Response Matching paper, CSP example (DESIGN §5): for every target (a composition and the
atom count of its cell), ``--trials`` random starts are relaxed with one short-ranged
model, and the results are scored as DiffCSP scores a generative model: k = 1, the
lowest-energy valid result matches the target; k = 20, one of its 20 lowest does
(pymatgen StructureMatcher stol 0.5, ltol 0.3, angle_tol 10), with the mean RMSE of the
matches normalised by (V/N)^(1/3) (``rmsearch analyze --reference``).

Model: the shipped ``model:mp20-mace`` by default (trained on the mp20-subset train split
with every val and csp15 composition held out, so no target's composition was seen);
``--potential`` takes another; ``--train`` trains the same recipe on ``--dataset`` first
(``--dataset mp20 --train --device cuda`` is the paper-scale run where MP-20 can be
downloaded and a GPU is available) with the targets' compositions held out.

Starts (``--spacegroups``, default ``mixed``): even run ids a Wyckoff placement in a space
group (pyxtal), odd ones a random cell, all relaxed freely. The groups are drawn with a prior
(``--spacegroup-prior``, default the training split ``mp20-subset:train``): how many known
crystals of the target's anonymous stoichiometry (AB2, ABC3, ...) are in each group, every
crystal of a target's composition left out (``rmsearch.symmetry.SpacegroupPrior``, ``launch
--spacegroup-weights``; ``--spacegroup-prior none`` draws uniformly). Both chosen on tuning
sets that are none of the reported targets (RESULTS.md, MP-20 section).

Targets: every row of ``--reference`` (an MP-20-style CSV, an rmdata split NAME:SPLIT, or a
structure file; default mp20-subset:val) whose elements the model knows and with at most
``--max-natoms`` atoms (``--ntargets`` keeps the first N). The 15 csp15 compositions are
searched too (``--csp15``), scored where a reference structure of that formula per cell
exists (MP-20 test, with ``--csp15-reference mp20:test`` where it can be downloaded).

Each target's run directory is ``DIR/runs/<formula per cell>/``. Outputs:
``DIR/summary.json``, ``DIR/mp20_targets.png``, ``DIR/report.html``.

Usage::

    python workflows/mp20_csp.py --out mp20_run                              # defaults
    python workflows/mp20_csp.py --out q --reference val.csv --ntargets 5 --max-natoms 8 --trials 10
    python workflows/mp20_csp.py --out paper --dataset mp20 --train --device cuda --reference mp20:test
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rmdata.utils import write_json_atomic
from common import Pipeline, add_run_options, workflow_parser, write_page

log = logging.getLogger("workflows.mp20_csp")

PAPER = {"csp15_found": 8, "csp15_total": 15, "diffcsp_found": 11,
         "diffcsp_mp20_k1_percent": 51.5, "diffcsp_mp20_k20_percent": 77.9}
SHIPPED = "model:mp20-mace"
CSP15 = Path(__file__).resolve().parent.parent / "rmdata" / "data" / "csp15.json"


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
                   wanted: list[str] | None = None, min_natoms: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
    """Choose targets; returns (targets, notes).

    ``references``: (id, Atoms) in dataset order. ``known``: elements the model knows.
    Without ``wanted``: the first ``n`` references with known elements and ``min_natoms``
    to ``max_natoms`` atoms. With ``wanted`` (formulas per cell): each formula, with the first
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
            if set(atoms.get_chemical_symbols()) <= known and min_natoms <= len(atoms) <= max_natoms:
                f = cell_formula(atoms)
                comp, natoms = search_args(f)
                out.append({"formula": f, "composition": comp, "natoms": natoms, "id": rid, "atoms": atoms})
        if len(out) < n:
            notes.append(f"only {len(out)} reference structures with known elements and "
                         f"{min_natoms}-{max_natoms} atoms")
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


def held_out_formulas(formulas: list[str]) -> list[str]:
    """The compositions this workflow's models never see: ``formulas`` (the targets'), the
    csp15 compositions and Li2S (the Li-S question)."""
    return [*formulas, *read_target_list(CSP15), "Li2S"]


def spacegroup_prior(source: str, formulas: list[str]):
    """(:class:`rmsearch.symmetry.SpacegroupPrior` of the crystals of ``source`` whose reduced
    composition is not held out with ``formulas`` (:func:`held_out_formulas`), as the model
    holds them out; a note saying how many were used)."""
    from pymatgen.core import Composition

    from rmsearch.symmetry import SpacegroupPrior

    import warnings

    known = [a for _, a in load_reference_atoms(source, "--spacegroup-prior")]
    with warnings.catch_warnings():  # pymatgen warns of noble gases without an electronegativity
        warnings.simplefilter("ignore", UserWarning)
        held = {Composition(f).reduced_formula for f in held_out_formulas(formulas)}
        kept = [a for a in known if Composition(a.get_chemical_formula()).reduced_formula not in held]
    return SpacegroupPrior(kept), (f"space-group prior: {len(kept)} crystals of {source} "
                                   f"({len(known) - len(kept)} of a held-out composition left out)")


def load_reference_atoms(spec: str, option: str = "--reference") -> list[tuple[str, Any]]:
    """(id, Atoms) of an rmdata registry split ``NAME:SPLIT`` or of a structure file; a one-line
    ``error:`` naming ``option`` when it cannot be read."""
    from ase.io import read

    from rmdata.datasets import load_structures
    from rmdata.errors import RMError

    try:
        if ":" in spec and not Path(spec).exists():
            name, split = spec.split(":", 1)
            return [(sid, a) for sid, a in load_structures(dataset=name, split=split) if not isinstance(a, str)]
        return [(f"{Path(spec).name}:{k}", a) for k, a in enumerate(read(spec, index=":"))]
    except (RMError, OSError, ValueError, KeyError, IndexError) as exc:
        raise SystemExit(f"error: {option} {spec}: cannot read structures ({' '.join(str(exc).split())[:200]}); "
                         "give NAME:SPLIT (e.g. mp20-subset:train) or a structure file") from None


def potential_elements(potential: str) -> set[str]:
    """Element symbols a potential directory or shipped model knows."""
    from rmsearch.potentials import load_potential
    from rmsearch.registry import resolve_potential

    return set(load_potential(resolve_potential(potential)).elements)


def train_model(pipe: Pipeline, dataset: str, heldout: list[str], device: str, seed: int) -> Path:
    """The shipped MP-20 recipe on ``dataset`` with the ``heldout`` compositions removed."""
    from pretrained import RECIPES, training_commands

    recipe = RECIPES["mp20-mace"]
    data_dir = pipe.out / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "heldout.txt").write_text("\n".join(sorted(set(heldout))) + "\n")
    make = [a if a != "mp20-subset" else dataset for a in recipe["make"]]
    data = data_dir / "train.xyz"
    pipe.run("data", ["rmdata", "make", *make, "--seed", str(seed), "-o", str(data)], done=data, cwd=data_dir)
    workdir = pipe.out / "train"
    workdir.mkdir(exist_ok=True)
    model = workdir / "mp20-mace.model"
    for i, line in enumerate(training_commands("mp20-mace", data, seed, extra=["--device", device])):
        pipe.run(f"train{i}" if i else "train", shlex.split(line), done=model, cwd=workdir,
                 log_file=workdir / f"train{i}.log")
    potdir = pipe.out / "potential"
    pipe.run("export", ["rmsearch", "export", str(model), "--training", str(data), "--out", str(potdir)],
             done=potdir / "potential.json")
    return potdir


# ----------------------------------------------------------------------------- report

def plot_targets(rows: list[dict[str, Any]], path: Path) -> None:
    """Per target: best-match RMSD (matched) and whether the lowest trial is the match."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["formula"] for r in rows]
    rmsd = [r["rmsd"] if r["matched"] else np.nan for r in rows]
    colours = ["tab:blue" if r.get("matched_k1") else "tab:green" if r["matched"] else
               ("tab:red" if r["scored"] else "0.7") for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ax.bar(x, [v if np.isfinite(v) else 0.0 for v in rmsd], color=colours)
    for k, r in enumerate(rows):
        text = f"{r['rmsd']:.2f}" if r["matched"] else ("no match" if r["scored"] else "no ref")
        ax.text(k, (rmsd[k] if np.isfinite(rmsd[k]) else 0.0) + 0.005, text, ha="center", fontsize=7, rotation=90)
    finite = [v for v in rmsd if np.isfinite(v)]
    ax.set_ylim(0.0, 1.4 * max(finite + [0.05]))  # labels stay on the canvas when every RMSE is ~0
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("RMSE of best match in the 20 lowest (normalised)")
    found = sum(r["matched"] for r in rows)
    k1 = sum(bool(r.get("matched_k1")) for r in rows)
    scored = sum(r["scored"] for r in rows)
    ax.set_title(f"MP-20 CSP: k=20 {found}/{scored}, k=1 {k1}/{scored} (blue: k=1, green: k=20 only, red: none)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], figure: str) -> Path:
    """``report.html``: summary, target table, links to each run's analysis report."""
    rows = "".join(
        f"<tr><td>{html.escape(r['formula'])}</td><td>{html.escape(str(r['id']))}</td><td>{r['natoms']}</td>"
        f"<td>{r['trials']}</td><td>{r['converged']}</td><td>{r['clusters']}</td>"
        f"<td>{'yes' if r.get('matched_k1') else ('no' if r['scored'] else '-')}</td>"
        f"<td>{'yes' if r['matched'] else ('no' if r['scored'] else 'no reference')}</td>"
        f"<td>{'' if r['rmsd'] is None else format(r['rmsd'], '.3f')}</td>"
        f"<td>{html.escape(str(r['lowest_spacegroup']))}</td><td>{html.escape(str(r['reference_spacegroup']))}</td>"
        f"<td><a href='runs/{html.escape(r['formula'])}/report/index.html'>analysis</a></td></tr>" for r in rows)
    body = f"""<h2>Targets</h2><table><tr><th>formula</th><th>reference</th><th>atoms</th><th>trials</th>
<th>converged</th><th>clusters</th><th>k=1</th><th>k=20</th><th>RMSE</th><th>lowest trial (space group)</th>
<th>reference space group</th><th>report</th></tr>{rows}</table>"""
    return write_page(out, "MP-20 crystal structure prediction", summary, figure, body, skip=("steps", "targets"))


def spacegroup_launch_args(reference, natoms: int) -> tuple[list[str], int]:
    """``(args, natoms_conventional)`` of an ``rmsearch launch`` conditioned on the space
    group G of ``reference`` (spglib at 0.1 A, as MP-20's ``spacegroup.number``): args
    ``--spacegroup G --keep-symmetry``, and the atoms of G's conventional cell (``natoms``
    of the primitive reference times the lattice points of G's centring), which pyxtal fills."""
    from rmsearch.symmetry import spacegroup
    from rmsearch.starts import centring

    number, _symbol = spacegroup(reference, 0.1)
    if not number:
        raise SystemExit(f"error: spglib finds no space group for reference {reference.get_chemical_formula()}")
    return ["--spacegroup", str(number), "--keep-symmetry"], natoms * centring(number)


def spacegroup_of(atoms) -> str:
    """``"symbol (number)"`` of a periodic structure at symprec 0.1 A."""
    from rmsearch.symmetry import spacegroup

    number, symbol = spacegroup(atoms, 0.1)
    return f"{symbol} ({number})"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = workflow_parser(__doc__, "mp20_run", SHIPPED)
    ap.add_argument("--train", action="store_true", help="train the mp20-mace recipe on --dataset first")
    ap.add_argument("--dataset", default="mp20-subset", help="training set of --train: mp20 (downloaded) or mp20-subset")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device of --train")
    ap.add_argument("--reference", default="mp20-subset:val",
                    help="targets: MP-20-style CSV, NAME:SPLIT or a structure file")
    ap.add_argument("--ntargets", type=int, default=0, help="first N eligible targets (0 = all)")
    ap.add_argument("--max-natoms", type=int, default=12, help="largest target cell (atoms)")
    ap.add_argument("--min-natoms", type=int, default=1, help="smallest target cell (atoms)")
    ap.add_argument("--spacegroups", default="mixed", choices=["none", "random", "mixed"],
                    help="composition-only starts: mixed (even runs in a random space group, pyxtal; odd "
                         "runs random cells: the default, measured best on tuning sets, RESULTS.md), "
                         "all without symmetry, or all in a random group; relaxed freely (launch --spacegroups)")
    ap.add_argument("--keep-symmetry", action="store_true",
                    help="with --spacegroups random/mixed: relax each symmetric start within its drawn group "
                         "(launch --keep-symmetry); random cells are relaxed freely as before")
    ap.add_argument("--spacegroup-prior", default=None,
                    help="the drawn groups of --spacegroups random/mixed: weighted by the groups of known crystals "
                         "of the target's stoichiometry (NAME:SPLIT or a structure file; every crystal of a "
                         "target's or csp15 composition left out; rmsearch.symmetry.SpacegroupPrior, launch "
                         "--spacegroup-weights), or none (uniform). Default: the --dataset train split "
                         "(mp20-subset:train), measured best on tuning sets (RESULTS.md)")
    ap.add_argument("--trials", type=int, default=30, help="random starts per target")
    ap.add_argument("--csp15", action=argparse.BooleanOptionalAction, default=True,
                    help="also search the 15 csp15 compositions")
    ap.add_argument("--csp15-reference", default="mp20:test",
                    help="reference structures of the csp15 compositions (scored where it can be read)")
    ap.add_argument("--spacegroup-given", action="store_true",
                    help="space-group-conditioned CSP: each target's starts are Wyckoff placements in its "
                         "reference's space group (spglib 0.1 A), relaxed within it (launch --spacegroup G "
                         "--keep-symmetry; targets without a reference are skipped, so no csp15)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="targets searched at once, each with --workers / jobs processes (default: one per "
                         "core when --workers is not given, so that a launch's start-up and analysis, which "
                         "use one core, overlap another target's search; results do not depend on it)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("trials", "max_natoms", "min_natoms", "max_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.ntargets < 0 or args.seed < 0:
        raise SystemExit("error: --ntargets and --seed must be >= 0")
    if args.spacegroup_prior is None:  # the default: the training split, where groups are drawn
        drawn = args.spacegroups != "none" and not args.spacegroup_given
        args.spacegroup_prior = f"{args.dataset}:train" if drawn else "none"
    if args.spacegroup_prior != "none" and (args.spacegroups == "none" or args.spacegroup_given):
        raise SystemExit("error: --spacegroup-prior: weights the drawn groups of --spacegroups random or mixed")
    if args.keep_symmetry and (args.spacegroups == "none" or args.spacegroup_given):
        raise SystemExit("error: --keep-symmetry: needs --spacegroups random or mixed (--spacegroup-given "
                         "keeps the given group already)")

    refs = load_reference_atoms(args.reference)
    p = Pipeline(args.out, force=args.force)
    if args.train:
        heldout = held_out_formulas([cell_formula(a) for _, a in refs])
        potential = str(train_model(p, args.dataset, heldout, args.device, args.seed))
    else:
        potential = args.potential or SHIPPED
    known = potential_elements(potential)
    targets, notes = select_targets(refs, known, args.ntargets or len(refs), args.max_natoms,
                                    min_natoms=args.min_natoms)
    if args.csp15 and not args.spacegroup_given:
        csp_refs: list[tuple[str, Any]] = []
        try:
            csp_refs = load_reference_atoms(args.csp15_reference, "--csp15-reference")
        except (SystemExit, Exception) as exc:  # noqa: BLE001 - offline: searched, not scored
            notes.append(f"csp15: reference {args.csp15_reference} unavailable ({' '.join(str(exc).split())[:120]}); "
                         "searched, not scored")
        extra, more = select_targets(csp_refs + refs, known, 0, args.max_natoms, read_target_list(CSP15))
        seen = {t["formula"] for t in targets}
        targets += [dict(t, csp15=True) for t in extra if t["formula"] not in seen]
        notes += more
    if not targets:
        raise SystemExit("error: no target can be searched: " + "; ".join(notes))
    prior = None
    if args.spacegroup_prior != "none" and not args.spacegroup_given:
        prior, note = spacegroup_prior(args.spacegroup_prior, [t["formula"] for t in targets])
        notes.append(note)
    from ase.io import write

    from rmsearch.records import read_records

    train_formulas = _training_formulas()
    from rmsearch.pool import default_workers

    cores = default_workers()
    jobs = max(1, args.jobs or (1 if args.workers else cores))
    workers = args.workers or max(1, cores // jobs)

    def search(t: dict[str, Any]) -> dict[str, Any] | None:
        rundir = p.out / "runs" / t["formula"]
        natoms, sg_args = t["natoms"], ([] if args.spacegroups == "none" else ["--spacegroups", args.spacegroups])
        sg_args += ["--keep-symmetry"] if args.keep_symmetry else []
        if prior is not None:
            weights = p.out / "runs" / f"{t['formula']}.sgweights.json"
            weights.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(weights, prior.weights(t["composition"]))
            sg_args += ["--spacegroup-weights", str(weights)]
        if args.spacegroup_given:
            if t["atoms"] is None:
                return None
            sg_args, natoms = spacegroup_launch_args(t["atoms"], t["natoms"])
        p.launch(f"search {t['formula']}", rundir, potential,
                 ["--composition", t["composition"], "--natoms", str(natoms), "--max-steps", str(args.max_steps),
                  "--dtype", args.dtype, *sg_args], nruns=args.trials, seed=args.seed, workers=workers)
        analyze = ["--top", "5", "--match-top-k", str(args.trials), "--no-metrics"]
        if t["atoms"] is not None:
            ref_file = p.out / "runs" / f"{t['formula']}.reference.extxyz"
            write(ref_file, t["atoms"], format="extxyz")
            analyze += ["--reference", str(ref_file)]
        rep = p.analyze(f"analyze {t['formula']}", rundir, analyze)
        csp = ((rep.get("csp") or {}).get("rows") or [{}])[0]
        records = list(read_records(rundir / "shards"))
        top = rep["top_clusters"][0] if rep["top_clusters"] else None
        row = {
            "formula": t["formula"], "id": t["id"], "natoms": t["natoms"], "trials": rep["n_records"],
            "csp15": bool(t.get("csp15")),
            "converged": rep["status_counts"].get("converged", 0), "clusters": rep["n_clusters"],
            "valid": rep["n_usable"] - rep["n_invalid"],
            "scored": t["atoms"] is not None, "matched": bool(csp.get("matched_k20", False)),
            "matched_k1": bool(csp.get("matched_k1", False)), "rmsd": csp.get("rmse_k20"),
            "rmse_k1": csp.get("rmse_k1"),
            "same_composition_in_train": t["atoms"] is not None and
            _reduced(t["atoms"]) in train_formulas,
            "lowest_spacegroup": None if top is None else f"{top['spacegroups']['0.1'][1]} ({top['spacegroups']['0.1'][0]})",
            "lowest_energy_per_atom": None if top is None else top["energy_per_atom"],
            "reference_spacegroup": None if t["atoms"] is None else spacegroup_of(t["atoms"]),
            "spacegroup_starts": sum(r.extra.get("start_kind") == "spacegroup" for r in records),
            "spacegroup_kept": sum(bool(r.extra.get("spacegroup_kept")) for r in records),
        }
        print(f"[{t['formula']}] k=1 {row['matched_k1']} k=20 {row['matched']} rmse {row['rmsd']}", flush=True)
        return row

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:  # each target is its own processes; rows keep the target order
        rows = [row for row in pool.map(search, targets) if row is not None]

    summary = summarize(rows)
    summary.update(paper=PAPER, notes=notes, reference=args.reference, potential=potential,
                   search={"trials": args.trials, "max_steps": args.max_steps, "dtype": args.dtype,
                           "max_natoms": args.max_natoms, "spacegroup_given": args.spacegroup_given,
                           "min_natoms": args.min_natoms, "spacegroups": args.spacegroups,
                           "keep_symmetry": args.keep_symmetry, "spacegroup_prior": args.spacegroup_prior,
                           "jobs": jobs, "workers_per_job": workers})
    plot_targets([r for r in rows if r["scored"]], p.out / "mp20_targets.png")
    p.finish({**summary, "targets": rows})
    path = write_report(p.out, summary, rows, "mp20_targets.png")
    print(json.dumps(summary, indent=2))
    print(f"report: {path}")
    return summary


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Match rates at k = 1 and k = 20 and mean RMSE over the scored targets (csp15 apart)."""
    out: dict[str, Any] = {}
    for name, group in (("targets", [r for r in rows if not r["csp15"]]), ("csp15", [r for r in rows if r["csp15"]])):
        scored = [r for r in group if r["scored"]]
        k20 = [r for r in scored if r["matched"]]
        k1 = [r for r in scored if r["matched_k1"]]
        out[name] = {
            "searched": len(group), "scored": len(scored), "matched_k1": len(k1), "matched_k20": len(k20),
            "match_rate_k1": round(len(k1) / len(scored), 3) if scored else None,
            "match_rate_k20": round(len(k20) / len(scored), 3) if scored else None,
            "mean_rmse_k20": round(sum(r["rmsd"] for r in k20) / len(k20), 4) if k20 else None,
            "mean_rmse_k1": round(sum(r["rmse_k1"] for r in k1) / len(k1), 4) if k1 else None,
            "same_composition_in_train": sum(r["same_composition_in_train"] for r in scored),
            "found": [r["formula"] for r in k20],
            "spacegroup_starts": sum(r.get("spacegroup_starts", 0) for r in group),
            "spacegroup_kept": sum(r.get("spacegroup_kept", 0) for r in group),
            "valid_percent": round(100.0 * sum(r["valid"] for r in group) / max(1, sum(r["trials"] for r in group)), 1),
        }
    return out


def _reduced(atoms) -> str:
    from pymatgen.core import Composition

    return Composition(atoms.get_chemical_formula()).reduced_formula


def _training_formulas() -> set[str]:
    """Reduced formulas of the mp20-subset train split (the caveat of a random split)."""
    from rmdata.datasets import load_structures

    return {_reduced(a) for _, a in load_structures(dataset="mp20-subset", split="train") if not isinstance(a, str)}


if __name__ == "__main__":
    main()
