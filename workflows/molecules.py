"""Molecules from random atoms with the shipped molecules model (the paper's molecule example).

Response Matching paper, molecule example (DESIGN §5): a short-ranged MLIP trained on
response-matched small molecules turns random atoms into valid molecules. By default the
search uses the shipped model ``model:molecules-mace`` (``rmsearch models show
molecules-mace``; trained by ``workflows/pretrained.py molecules-mace``), so nothing is
trained. Per composition F, with the paper's protocol:

1. ``rmsearch launch --molecule F --nruns 32 --fmax 0.001 --kick 0.75 --kick-fmax 0.0002
   --core-repulsion zbl,rc=0.75,scale=0.7``: random atoms in a 10x5x5 A box at least 0.7 A
   apart, relaxed to fmax 0.001 eV/A, then every atom kicked by uniform +-0.75 A and relaxed
   to 0.0002 eV/A (one run directory, ``DIR/runs/<F>/``, both stages in each record), with a
   nuclear-repulsion core below each pair's fused distance (``--core-repulsion``);
2. ``rmsearch analyze DIR/runs/<F>``: RDKit validity of neutral molecules (charged
   structures apart), PoseBusters "mol" checks, isomers known (in the molecules the model
   trained on: the shipped recipe's first 505 of the offline list, or the retrained model's
   training file; the whole list for another ``--potential``) and new
   (:mod:`rmsearch.analysis.molecules`); every start counts.

``--holdout F1,...`` retrains first: the shipped model's recipe on the offline molecule set
minus every isomer of those formulas (``rmdata make --exclude-formulas``), then searches
them; its training time is in the summary.

Outputs: ``DIR/summary.json`` (per composition and in all), ``DIR/molecules_validity.png``,
``DIR/report.html``.

Usage::

    python workflows/molecules.py --out mol --compositions C3H6O,C4H8,C5H8,C6H14
    python workflows/molecules.py --out ood --compositions C8H18,C8H10
    python workflows/molecules.py --out held --holdout C3H6O,C5H8        # retrains (hours)
"""

from __future__ import annotations

import html
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, tool, workflow_parser, write_page
from pretrained import RECIPES, training_commands

from rmsearch.analysis.molecules import plot_molecules

log = logging.getLogger("workflows.molecules")

#: In-training compositions searched by default: for each heavy-atom count 4-7, the two with the
#: most isomers in the offline molecule set (fixed by this rule before any result was seen, on
#: the set's first 505 molecules: the whole set then).
IN_TRAINING = ("C3H6O", "C4H8", "C3H7NO", "C5H8", "C5H11N", "C6H14", "C5H10OS", "C6H10O")
#: Out-of-distribution compositions of 8-9 heavy atoms (none in the offline set, which stops at 7).
OUT_OF_DISTRIBUTION = ("C8H18", "C7H14O", "C8H10", "C7H9N", "C9H20", "C8H8O")
#: DESIGN §5 protocol: FIRE fmax (eV/A) before and after the kick, kick amplitude (A), starts.
FMAX_1, FMAX_2, KICK, NSTARTS = 0.001, 0.0002, 0.75, 32
#: The relaxation's core overlay for molecules (``rmsearch launch --core-repulsion``): the ZBL
#: nuclear repulsion below each pair's fused-pair distance, 0.7 x the covalent radii sum (at
#: least 0.75 A). Chosen on tuning compositions outside every reported table (RESULTS.md,
#: molecules, "A nuclear-repulsion core").
CORE = "zbl,rc=0.75,scale=0.7"
PAPER = {"valid_percent": 92.7, "stable_percent": 85.6}
SHIPPED = "model:molecules-mace"


def formulas(text: str, option: str) -> list[str]:
    """Hill formulas of a comma-separated option (one-line error for an unreadable one)."""
    from ase.formula import Formula

    out = []
    for f in (x.strip() for x in text.split(",")):
        if not f:
            continue
        try:
            out.append(Formula(f).format("hill"))
        except ValueError:
            raise SystemExit(f"error: {option} {f!r}: not a chemical formula (e.g. C3H6O)") from None
    if not out:
        raise SystemExit(f"error: {option}: give at least one formula")
    return out


def retrain(pipe: Pipeline, holdout: list[str], seed: int) -> tuple[Path, float]:
    """The shipped molecules recipe without every isomer of ``holdout``; (potential, training s)."""
    recipe = RECIPES["molecules-mace"]
    data_dir = pipe.out / "data"
    data_dir.mkdir(exist_ok=True)
    data = data_dir / "train.xyz"
    pipe.run("data", ["rmdata", "make", *recipe["make"], "--exclude-formulas", ",".join(holdout),
                      "--seed", str(seed), "-o", str(data)], done=data)
    workdir = pipe.out / "train"
    workdir.mkdir(exist_ok=True)
    model = workdir / "molecules-mace.model"
    wall = 0.0
    for i, line in enumerate(training_commands("molecules-mace", data, seed)):
        pipe.run(f"train{i}" if i else "train", shlex.split(line), done=model, cwd=workdir,
                 log_file=workdir / f"train{i}.log")
        wall += pipe.steps[-1].get("wall_s", 0.0)
    potdir = pipe.out / "potential"
    pipe.run("export", ["rmsearch", "export", str(model), "--training", str(data), "--out", str(potdir)],
             done=potdir / "potential.json")
    return potdir, wall


def write_known_smiles(indices: list[int], path: Path) -> Path:
    """``path``: the SMILES of the offline-list molecules at ``indices`` (0-based), the
    molecules a model trained on, for ``rmsearch analyze --known-smiles``."""
    from rmdata.molecules import read_smiles_list
    from rmdata.utils import atomic_output

    smiles = read_smiles_list()
    with atomic_output(path) as tmp:
        Path(tmp).write_text("".join(f"{smiles[i]}\n" for i in indices))
    return path


def training_indices(data: Path) -> list[int]:
    """Offline-list indices of the molecules in the rmdata training file ``data`` (each
    frame's ``source_id`` is ``mol-NNNN``, NNNN the index in the list)."""
    import re

    return sorted({int(m) for m in re.findall(r"source_id=mol-(\d+)", data.read_text())})


def shipped_indices() -> list[int]:
    """Offline-list indices the shipped model's recipe trains on (its ``rmdata make --limit N``:
    the first N)."""
    make = RECIPES["molecules-mace"]["make"]
    return list(range(int(make[make.index("--limit") + 1])))


def search(pipe: Pipeline, potential: str, formula: str, args, known: Path | None = None) -> dict[str, Any]:
    """Search one composition with the paper's protocol and return its molecule figures;
    ``known``: the SMILES list whose isomers count as known (default: the whole offline list)."""
    run = pipe.out / "runs" / formula
    pipe.launch(f"search {formula}", run, potential,
                ["--molecule", formula, "--fmax", str(FMAX_1), "--kick", str(KICK), "--kick-fmax", str(FMAX_2),
                 "--max-steps", str(args.max_steps), "--core-repulsion", args.core_repulsion],
                nruns=args.nstarts, seed=args.seed, workers=args.workers)
    options = ["--no-posebusters"] if args.no_posebusters else []
    report = pipe.analyze(f"analyze {formula}", run, options + (["--known-smiles", str(known)] if known else []))
    figures = report["molecules"]["compositions"][formula]
    relax_s = [r["wall_s"] for r in _records(run)]
    figures["seconds_per_relaxation"] = round(sum(relax_s) / len(relax_s), 3) if relax_s else None
    return figures


def _records(run: Path) -> list[dict[str, Any]]:
    out = []
    for shard in sorted((run / "shards").glob("*.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def write_report(out: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]], figure: str) -> Path:
    """``report.html``: summary, per-composition table, generated isomers, links to the analyses."""
    rows = "".join(
        f"<tr><td>{html.escape(f)}</td><td>{r['starts']}</td><td>{r['valid_percent']:.1f}</td>"
        f"<td>{r.get('posebusters_percent', float('nan')):.1f}</td><td>{r['charged']}</td>"
        f"<td>{r['distinct_isomers']}</td><td>{r['known']}</td><td>{r['new']}</td>"
        f"<td>{html.escape(', '.join(f'{s} x{n}' for s, n in list(r['isomers'].items())[:8]))}</td>"
        f"<td><a href='runs/{html.escape(f)}/report/index.html'>analysis</a></td></tr>"
        for f, r in results.items())
    body = f"""<h2>Per composition (% of all starts)</h2><table><tr><th>formula</th><th>starts</th>
<th>valid %</th><th>PoseBusters %</th><th>charged</th><th>isomers</th><th>known</th><th>new</th>
<th>generated (SMILES x count)</th><th>report</th></tr>{rows}</table>"""
    return write_page(out, "Molecules from random atoms", summary, figure, body,
                      skip=("steps", "per_composition"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = workflow_parser(__doc__, "molecules_run", SHIPPED, "; with --holdout: the retrained one")
    ap.add_argument("--compositions", help="formulas to search with the model, comma-separated "
                                           f"(default: {','.join(IN_TRAINING)})")
    ap.add_argument("--holdout", help="retrain without every isomer of these formulas, then search them")
    ap.add_argument("--nstarts", type=int, default=NSTARTS, help="random starts per composition")
    ap.add_argument("--max-steps", type=int, default=3000, help="force calls per relaxation stage")
    ap.add_argument("--core-repulsion", default=CORE,
                    help="the relaxation's short-range overlay, as rmsearch launch --core-repulsion "
                         f"(default {CORE}; m=1,rc=0.75: the search default before 2026-12-08)")
    ap.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters even if installed")
    ap.add_argument("--workers", type=int, default=None, help="search processes (default: cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, training and search")
    ap.add_argument("--force", action="store_true", help="redo steps whose outputs exist")
    args = ap.parse_args(argv)
    for name in ("nstarts", "max_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.seed < 0 or (args.workers is not None and args.workers < 1):
        raise SystemExit("error: --seed must be >= 0 and --workers >= 1")
    if args.holdout and args.compositions:
        raise SystemExit("error: give --holdout (retrain and search those) or --compositions, not both")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pipe = Pipeline(args.out, force=args.force)
    training: dict[str, Any] = {}
    if args.holdout:
        comps = formulas(args.holdout, "--holdout")
        potdir, wall = retrain(pipe, comps, args.seed)
        potential = args.potential or str(potdir)
        training = {"recipe": "molecules-mace without the held-out formulas", "held_out": comps,
                    "training_wall_s": wall}
        indices = training_indices(pipe.out / "data" / "train.xyz") if not args.potential else None
    else:
        comps = formulas(args.compositions, "--compositions") if args.compositions else list(IN_TRAINING)
        potential = args.potential or SHIPPED
        training = {"potential": potential}
        if potential.startswith("model:"):
            card = json.loads(_cli("models", "show", potential.removeprefix("model:"), "--json"))
            training.update(model_sha256=card["files"].get("model.model"), training_data=card["training"]["sha256"])
        indices = shipped_indices() if potential == SHIPPED else None
    known = write_known_smiles(indices, pipe.out / "known_smiles.txt") if indices else None
    training["known_molecules"] = len(indices) if indices else "the whole offline list"
    results = {f: search(pipe, potential, f, args, known) for f in comps}
    total = sum(r["starts"] for r in results.values())
    summary: dict[str, Any] = {
        "compositions": comps,
        "valid_percent": round(100.0 * sum(r["valid"] for r in results.values()) / total, 1),
        "charged_percent": round(100.0 * sum(r["charged"] for r in results.values()) / total, 1),
        "runs": total, "paper": PAPER, "training": training,
        "protocol": {"box_A": [10, 5, 5], "min_distance_A": 0.7, "fmax_1": FMAX_1, "kick_A": KICK,
                     "fmax_2": FMAX_2, "starts_per_composition": args.nstarts, "max_steps": args.max_steps,
                     "core_repulsion": args.core_repulsion},
    }
    if all("posebusters" in r for r in results.values()):
        summary["posebusters_percent"] = round(100.0 * sum(r["posebusters"] for r in results.values()) / total, 1)
    plot_molecules({"compositions": results}, pipe.out / "molecules_validity.png", PAPER["valid_percent"])
    pipe.finish({**summary, "per_composition": results})
    path = write_report(pipe.out, summary, results, "molecules_validity.png")
    print(json.dumps(summary, indent=2))
    print(f"report: {path}")
    return summary


def _cli(*args: str) -> str:
    import subprocess

    return subprocess.run([tool("rmsearch"), *args], capture_output=True, text=True, check=True).stdout


if __name__ == "__main__":
    main()
