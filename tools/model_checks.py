"""Recipe-selection checks of a trained potential: measures that are none of the reported figures.

RESULTS.md chooses model recipes on these (Li-S section: the stress-weight table; molecules
section: low-noise weighting), never on the searches it reports:

- ``--frames FILE`` (an rmdata file of the training data, any noise levels): the force RMSE
  per noise level (eV/A; level 0 is where the labels are zero, so it is how far the
  training structures are from being minima), and for periodic frames the pressure
  response: the slope of the model's pressure against the label's over the level-0 frames
  (1 = the stress labels are learnt, 0 = ignored).
- ``--relax FILE`` (structures, e.g. held-out crystals): each relaxed from itself with the
  search's relax protocol; the median volume ratio V/V0, the median |V/V0 - 1|, and how
  many still match themselves (the analysis' StructureMatcher, stol 0.5, ltol 0.3,
  angle_tol 10, the CSP rule): are known crystals minima of the model, at their volume?
- ``--systems Na-Cl,Li-Se`` (tuning systems, never the reported ones): ``--nruns`` random
  starts of ``--natoms`` atoms each (default 40 of 2-12): converged of all, valid of those
  (the analysis' distance rule) and ordered of the valid (a space group above P-1 at 0.1 A):
  can the model's landscape be searched at all, and does it end in ordered crystals?

Usage::

    python tools/model_checks.py POTENTIAL --frames train.xyz --relax val.xyz --systems Na-Cl,Li-O,Li-Se
    python tools/model_checks.py model:molecules-mace --frames molecules.xyz

One JSON object goes to stdout (``--out FILE`` writes it too). Deterministic for a given
``--seed``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from rmdata.errors import RMError


def level_errors(potential: str, frames: list) -> dict:
    """Force RMSE (eV/A) per noise level and, for periodic frames, the level-0 pressure slope."""
    import rmsearch

    calc = rmsearch.Calculator(potential, core_repulsion=None)
    sq: dict[float, list[np.ndarray]] = defaultdict(list)
    p_label, p_model = [], []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        sq[float(atoms.info["noise_level"])].append((a.get_forces() - atoms.arrays["REF_forces"]).ravel() ** 2)
        if atoms.pbc.any() and float(atoms.info["noise_level"]) == 0 and "REF_stress" in atoms.info:
            ref = np.asarray(atoms.info["REF_stress"], dtype=float).reshape(3, 3)
            p_label.append(np.trace(ref) / 3)
            p_model.append(np.mean(a.get_stress(voigt=True)[:3]))
    out = {"force_rmse_by_level_eV_per_A": {f"{lv:g}": round(float(np.sqrt(np.mean(np.concatenate(v)))), 4)
                                            for lv, v in sorted(sq.items())}}
    if len(p_label) > 2 and np.ptp(p_label) > 0:
        out["pressure_slope"] = round(float(np.polyfit(p_label, p_model, 1)[0]), 3)
    return out


def relaxed_from_reference(potential: str, structures: list) -> dict:
    """Relax each structure of known elements from itself (one LAMMPS instance for all):
    volume ratios and self-matches by the analysis' matcher."""
    from pymatgen.io.ase import AseAtomsAdaptor

    import rmsearch
    from rmsearch.analysis.dedupe import make_matcher
    from rmsearch.api import open_potential

    matcher = make_matcher()
    pot = open_potential(potential)
    structures = [a for a in structures if set(a.get_chemical_symbols()) <= set(pot.elements)]
    starts = [a.copy() for a in structures]
    for start in starts:
        start.calc = None
    ratios, matched = [], 0
    for ref, outcome in zip(structures, rmsearch.iter_relax(starts, pot, fmax=0.01, max_steps=1500)):
        if not outcome.converged:
            continue
        ratios.append(outcome.atoms.get_volume() / ref.get_volume())
        matched += matcher.get_rms_dist(AseAtomsAdaptor.get_structure(ref),
                                        AseAtomsAdaptor.get_structure(outcome.atoms)) is not None
    r = np.array(ratios)
    return {"structures": len(structures), "converged": len(r), "matched_themselves": matched,
            "median_volume_ratio": round(float(np.median(r)), 3) if len(r) else None,
            "median_abs_volume_error": round(float(np.median(abs(r - 1))), 3) if len(r) else None}


#: spglib tolerance (A) of the "ordered" count of :func:`searchability` (the analysis' loosest).
ORDER_SYMPREC = 0.1


def searchability(potential: str, system: str, natoms: str, nruns: int, seed: int) -> dict:
    """Random starts of ``system``: of ``nruns`` relaxations, how many converge, how many of
    those are valid (the analysis' rule: no pair closer than 0.7 x the covalent radii sum,
    volume not exploded) and how many valid ones are ordered (a space group above P-1 at
    spglib :data:`ORDER_SYMPREC` A): a landscape can converge into dense, distorted minima."""
    import rmsearch
    from rmsearch.symmetry import spacegroup
    from rmsearch.analysis.validity import check_validity

    with tempfile.TemporaryDirectory() as tmp:
        run = rmsearch.search(potential, out=Path(tmp) / "run", nruns=nruns, workers=1, system=system,
                              natoms=natoms, seed=seed, max_steps=1500)
        final = [r.to_atoms() for r in run.records if r.status == "converged"]
    valid = [a for a in final if check_validity(a).valid]
    ordered = sum(spacegroup(a, ORDER_SYMPREC)[0] > 2 for a in valid)
    return {"runs": nruns, "converged": len(final), "valid": len(valid), "ordered": ordered}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("potential", help="potential directory or model:NAME")
    ap.add_argument("--frames", help="rmdata file: force RMSE per noise level, pressure slope")
    ap.add_argument("--max-frames", type=int, default=1500, help="random frames of --frames used at most")
    ap.add_argument("--relax", help="structure file: relaxed from themselves (volumes, self-matches)")
    ap.add_argument("--max-atoms", type=int, default=20, help="--relax structures of at most this many atoms")
    ap.add_argument("--systems", default="", help="tuning systems to search, comma-separated (e.g. Na-Cl,Li-Se)")
    ap.add_argument("--natoms", default="2-12", help="atoms per cell of the --systems starts")
    ap.add_argument("--nruns", type=int, default=40, help="starts per tuning system")
    ap.add_argument("--seed", type=int, default=0, help="seed of the frame sample and the searches")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    for name in ("max_frames", "max_atoms", "nruns"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.seed < 0:
        raise SystemExit(f"error: --seed {args.seed}: must be >= 0")
    inputs = {Path(p).resolve() for p in (args.frames, args.relax) if p}
    if args.out and Path(args.out).resolve() in inputs:
        raise SystemExit(f"error: --out {args.out}: is an input file; choose another path")
    try:
        with stdout_to_stderr():
            text = checks(args)
    except (OSError, ValueError, RMError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(text)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr meanwhile (this process and the search workers it
    starts), so that libraries that print on import (MACE) keep off the JSON on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def checks(args: argparse.Namespace) -> str:
    """Run the checks ``args`` asks for; write the JSON to ``--out`` if given and return it."""
    import rmdata

    result: dict = {"potential": args.potential}
    if args.frames:
        frames = rmdata.read(args.frames)
        if len(frames) > args.max_frames:
            pick = np.random.default_rng(args.seed).choice(len(frames), args.max_frames, replace=False)
            frames = [frames[i] for i in sorted(pick)]
        result["frames"] = {"file": args.frames, "n": len(frames), **level_errors(args.potential, frames)}
    if args.relax:
        from ase.io import read

        structures = [a for a in read(args.relax, index=":") if len(a) <= args.max_atoms]
        result["relaxed_from_reference"] = {"file": args.relax,
                                            **relaxed_from_reference(args.potential, structures)}
    for system in filter(None, args.systems.split(",")):
        result.setdefault("searchability", {})[system] = searchability(args.potential, system, args.natoms,
                                                                       args.nruns, args.seed)
    text = json.dumps(result, indent=1)
    if args.out:
        from rmdata.utils import atomic_output

        with atomic_output(args.out) as tmp:
            tmp.write_text(text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
