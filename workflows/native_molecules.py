"""Do native (SNAP) potentials fitted on the offline molecule set hold molecules as minima?

The check of the multi-element native issue: fit ``rmsearch fit-native`` on the offline
molecule set (``rmdata make --dataset molecules``: all 4,488 molecules by default, a
streamed fit), rattle N of its molecules (chosen evenly
along the list, so every chemical class is in) by uniform noise in +-RATTLE A per Cartesian
component, relax them with ``rmsearch relax`` (the search's protocol and tolerances) and count
those that come back as the same molecule: RDKit bond perception at charge 0 gives the same
canonical SMILES (stereochemistry ignored) as the reference (references RDKit cannot perceive
as one neutral molecule, e.g. CS2, are not picked). Also reported: the RMSD of the
relaxed molecule to its reference after optimal superposition (A).

Steps (each the command a user types; a step whose output exists is skipped)::

    rmdata make --dataset molecules --levels 0,1,2,3,4 -o data/train.xyz
    rmsearch fit-native data/train.xyz --kind snap --rcut 4 --zbl-contacts --alpha 0.01 -o potential
    rmsearch relax rattled.extxyz --potential potential -o relaxed.extxyz

Output: ``DIR/summary.json`` (counts, fit time, per-molecule rows) and a table on stdout.

Usage::

    python workflows/native_molecules.py --out natmol
    python workflows/native_molecules.py --out tune --shift 0.5 --seed 1   # 40 other molecules, other noise
    python workflows/native_molecules.py --out natmol-505 --limit 505 --fit-options "--kind snap --linear --rcut 4"
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, add_run_options, workflow_parser  # noqa: E402

#: The default fit (best of those tried on the tuning set ``--shift 0.5 --seed 1``, README
#: native section): quadratic SNAP (2J = 6, 2,970 coefficients for the six elements), rcut
#: 4 A, ZBL cores scaled by the references' contacts, ridge 0.01 (alpha 1: 37/40 there;
#: 0.1, 0.01, 0.001: 40/40; the middle one kept, a weaker ridge being what made carbon's
#: quadratic SNAP unstable from random starts).
FIT_OPTIONS = "--kind snap --rcut 4 --zbl-contacts --alpha 0.01"
LEVELS = "0,1,2,3,4"
#: The default molecules: all of the offline list (0); 22,440 frames, fitted by streamed
#: normal equations in ~100 s on 2 cores.
LIMIT = 0


def superposed_rmsd(atoms, ref) -> float:
    """RMSD (A) of ``atoms`` to ``ref`` after optimal translation and rotation (ASE's
    ``minimize_rotation_and_translation``)."""
    from ase.build import minimize_rotation_and_translation

    moved, target = atoms.copy(), ref.copy()
    minimize_rotation_and_translation(target, moved)
    return float(np.sqrt(np.mean(np.sum((moved.positions - target.positions) ** 2, axis=1))))


def main(argv: list[str] | None = None) -> dict:
    ap = workflow_parser(__doc__.split("\n\n")[0], out="native_molecules")
    ap.add_argument("--nmolecules", type=int, default=40, help="molecules rattled and relaxed")
    ap.add_argument("--rattle", type=float, default=0.3, help="uniform noise amplitude per component (A)")
    ap.add_argument("--levels", default=LEVELS, help="noise levels of the training data (rmdata make --levels)")
    ap.add_argument("--limit", type=int, default=LIMIT,
                    help="fit on the first N molecules of the offline list (0: all 4,488)")
    ap.add_argument("--fit-options", default=FIT_OPTIONS, help="options of rmsearch fit-native")
    ap.add_argument("--fmax", type=float, default=0.01, help="force tolerance of the relaxation (eV/A)")
    ap.add_argument("--shift", type=float, default=0.0,
                    help="move the evenly spaced picks by this fraction of their spacing, in [0, 1): "
                         "0.5 with another --seed gives a disjoint tuning set of molecules")
    add_run_options(ap, search=False)
    args = ap.parse_args(argv)
    if args.nmolecules < 1 or not 0 < args.rattle <= 1.0 or not 0 <= args.shift < 1:
        raise SystemExit("error: --nmolecules must be >= 1, --rattle in (0, 1] A and --shift in [0, 1)")
    from ase.io import read, write

    from rmsearch.analysis.molecules import check_molecule

    pipe = Pipeline(args.out, force=args.force)
    data = pipe.out / "data" / "train.xyz"
    data.parent.mkdir(exist_ok=True)
    make = ["rmdata", "make", "--dataset", "molecules", "--levels", args.levels, "--seed", str(args.seed)]
    if args.limit:
        make += ["--limit", str(args.limit)]
    pipe.run("data", [*make, "-o", str(data)], done=data)
    potential = pipe.out / "potential"
    pipe.run("fit", ["rmsearch", "fit-native", str(data), *shlex.split(args.fit_options), "-o", str(potential)],
             done=potential / "potential.json")

    # references RDKit itself perceives as one neutral molecule (a few, such as CS2 or
    # bicyclobutanes, it cannot: no potential could be judged on those), evenly along the list
    refs = [a for a in read(data, index=":") if float(a.info.get("noise_level", 0)) == 0]
    refs = [a for a in refs if check_molecule(a).valid]
    spacing = (len(refs) - 1) / max(min(args.nmolecules, len(refs)) - 1, 1)
    pick = np.linspace(0, len(refs) - 1, min(args.nmolecules, len(refs))) + args.shift * spacing
    pick = np.unique(np.minimum(pick.round().astype(int), len(refs) - 1))
    rng = np.random.default_rng(args.seed)
    rattled = []
    for i in pick:
        atoms = refs[i].copy()
        atoms.positions += args.rattle * 2 * (rng.random(atoms.positions.shape) - 0.5)
        rattled.append(atoms)
    write(pipe.out / "rattled.extxyz", rattled)
    relaxed_path = pipe.out / "relaxed.extxyz"
    pipe.run("relax", ["rmsearch", "relax", str(pipe.out / "rattled.extxyz"), "--potential", str(potential),
                       "--fmax", str(args.fmax), "--no-progress", "-o", str(relaxed_path), "--overwrite"])
    rows = []
    for out in read(relaxed_path, index=":"):
        ref = refs[pick[int(out.info["input_index"])]]
        want = check_molecule(ref).smiles  # the reference perceived the same way
        check = check_molecule(out)
        rows.append({"source_id": ref.info.get("source_id"), "smiles": want, "got": check.smiles,
                     "status": out.info.get("status"), "same": bool(check.valid and check.smiles == want),
                     "reason": check.reason, "rmsd_A": round(superposed_rmsd(out, ref), 4)})
    fit = json.loads((potential / "fit.json").read_text())
    same = sum(r["same"] for r in rows)
    summary = {"molecules": len(rows), "same_molecule": same, "share": round(same / len(rows), 3),
               "rattle_A": args.rattle, "shift": args.shift, "seed": args.seed,
               "fit_options": args.fit_options, "levels": args.levels,
               "fit_wall_s": fit.get("wall_s"), "fit_frames": fit.get("n_frames"),
               "fit_coefficients": fit.get("n_coefficients"),
               "holdout_force_rmse_eV_per_A": (fit.get("holdout") or {}).get("force_rmse_eV_per_A"),
               "rows": rows}
    pipe.finish(summary)
    for r in rows:
        print(f"{r['source_id']:>9} {'same' if r['same'] else 'DIFF':>4} rmsd {r['rmsd_A']:.3f} A  "
              f"{r['smiles'] or '?':<22} -> {r['got'] or r['reason']}")
    print(f"{same}/{len(rows)} rattled molecules (+-{args.rattle} A) relax back to the same molecule; "
          f"fit {fit.get('wall_s', 0):.0f} s on {fit.get('n_frames')} frames")
    return summary


if __name__ == "__main__":
    main()
