"""Space-group-conditioned crystal structure prediction beside composition-only CSP.

The second seed system's task (Sultanov et al., JCIM 2023): generate a crystal given its
composition *and* space group. For every target row of ``--reference`` (an MP-20-style
CSV, an rmdata split NAME:SPLIT or a structure file; the first ``--ntargets`` with at most
``--max-natoms`` atoms and elements the model knows), ``--trials`` Wyckoff starts in the
reference's space group (spglib 0.1 A, MP-20's ``spacegroup.number``) are relaxed within
that group (``rmsearch launch --composition F --natoms N --spacegroup G --keep-symmetry``;
N is the atoms of G's conventional cell, which pyxtal fills, and pyxtal draws the Wyckoff
combination per start among all that fit the counts), and scored by the DiffCSP protocol at
k = 1 and k = 20 (``rmsearch analyze --reference``: StructureMatcher stol 0.5, ltol 0.3,
angle_tol 10). The composition-only CSP of the same targets (same trials, same model) runs
beside it, so the two match rates compare like with like.

Both searches are ``workflows/mp20_csp.py`` through its command line (this file adds no
search code): ``DIR`` holds the space-group run (``DIR/runs/<formula>/``,
``DIR/summary.json``, ``DIR/report.html``), ``DIR/composition_only/`` the other, and
``DIR/comparison.json`` the two rows.

Model: the shipped ``model:mp20-mace`` by default (``--potential`` takes another).

Usage::

    python workflows/spacegroup_csp.py --out sg_run --reference mp20-subset:val --ntargets 10 \\
        --max-natoms 12 --trials 20
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rmdata.utils import write_json_atomic
from common import Pipeline, add_run_options, workflow_parser
from mp20_csp import summarize

HERE = Path(__file__).resolve().parent
#: The seed paper (Sultanov et al. 2023) regenerates known structures from composition and
#: space group with 50 samples each; no k = 1 / k = 20 MP-20 rate is reported there.
KEYS = ("searched", "scored", "matched_k1", "matched_k20", "match_rate_k1", "match_rate_k20",
        "mean_rmse_k20", "valid_percent", "spacegroup_starts", "spacegroup_kept")


def comparison(spacegroup: dict[str, Any], composition: dict[str, Any]) -> dict[str, Any]:
    """The two rows (space group given, composition only) of the targets' scores, from the
    ``summary.json`` of each ``mp20_csp.py`` run (its per-target rows)."""
    rows = {}
    for name, summary in (("spacegroup_given", spacegroup), ("composition_only", composition)):
        t = summarize(summary["targets"])["targets"]
        rows[name] = {k: t.get(k) for k in KEYS} | {"wall_s": summary.get("wall_s")}
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = workflow_parser(__doc__, "spacegroup_run", "model:mp20-mace")
    ap.add_argument("--reference", default="mp20-subset:val", help="targets: MP-20-style CSV, NAME:SPLIT or a structure file")
    ap.add_argument("--ntargets", type=int, default=0, help="first N eligible targets (0 = all)")
    ap.add_argument("--max-natoms", type=int, default=12, help="largest target cell (atoms)")
    ap.add_argument("--trials", type=int, default=20, help="starts per target")
    ap.add_argument("--no-composition-only", dest="composition_only", action="store_false",
                    help="skip the composition-only CSP of the same targets")
    add_run_options(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out).resolve()
    p = Pipeline(out, force=args.force)
    common = ["--reference", args.reference, "--ntargets", str(args.ntargets), "--max-natoms", str(args.max_natoms),
              "--trials", str(args.trials), "--max-steps", str(args.max_steps), "--dtype", args.dtype,
              "--seed", str(args.seed), "--no-csp15"]
    if args.potential:
        common += ["--potential", args.potential]
    if args.workers:
        common += ["--workers", str(args.workers)]
    if args.force:
        common.append("--force")
    script = str(HERE / "mp20_csp.py")
    p.run("spacegroup-given CSP", [sys.executable, script, "--out", str(out), "--spacegroup-given", *common],
          done=None if args.force else out / "summary.json")
    sg = json.loads((out / "summary.json").read_text())
    rows = {"spacegroup_given": comparison(sg, sg)["spacegroup_given"]}
    if args.composition_only:
        comp_dir = out / "composition_only"
        p.run("composition-only CSP", [sys.executable, script, "--out", str(comp_dir), *common],
              done=None if args.force else comp_dir / "summary.json")
        rows = comparison(sg, json.loads((comp_dir / "summary.json").read_text()))
    result = {"reference": args.reference, "ntargets": args.ntargets, "max_natoms": args.max_natoms,
              "trials": args.trials, "potential": args.potential or "model:mp20-mace", "rows": rows,
              "steps": p.steps}
    write_json_atomic(out / "comparison.json", result)
    for name, row in rows.items():
        print(f"{name}: k=1 {row['matched_k1']}/{row['scored']} ({row['match_rate_k1']}), "
              f"k=20 {row['matched_k20']}/{row['scored']} ({row['match_rate_k20']}), "
              f"wall {row['wall_s']} s", flush=True)
    return result


if __name__ == "__main__":
    main()
