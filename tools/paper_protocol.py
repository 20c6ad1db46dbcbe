"""The paper's molecule generation run literally, with any model: to compare a model with the
paper's own published one under one protocol and one scoring.

The paper's reference repository (github.com/BingqingCheng/cace-rm, ``qm7b/generate.ipynb``)
generates molecules with ASE: random atoms in a 10 x 5 x 5 A box at least 0.7 A apart, ASE
``FIRE`` for at most 500 steps to max |F| < 0.001 eV/A, every coordinate kicked by uniform
+-0.75 A, the same FIRE for at most 1000 steps to 0.0002 eV/A; no extra short-range
repulsion. This tool runs that protocol (the starts and kick draws of ``rmsearch launch
--molecule F --seed S``: :func:`rmsearch.starts.make_start` and the kick stream) with one
of three calculators, and scores every start with rmsearch's molecule rule
(:mod:`rmsearch.analysis.molecules`: RDKit bond perception at charge 0, sanitisation, one
fragment, no radicals; PoseBusters "mol" checks):

- ``--calculator rmsearch:POTENTIAL``: an rmsearch potential (``model:molecules-mace``)
  through :class:`rmsearch.Calculator` (LAMMPS, with the relax protocol's core overlay);
- ``--calculator mace:FILE``: a MACE model file through MACE's own ASE calculator, float64;
- ``--calculator cace:FILE``: a CACE model (the paper's ``qm7b/best_model.pth``), evaluated
  with the CACE package (github.com/BingqingCheng/cace, not on PyPI and CC BY-NC licensed:
  give its checkout with ``--cace-src DIR``; it needs ``matscipy``). Nothing of CACE is in
  this repository.

``--openbabel`` adds a second, lenient scoring when the ``openbabel`` module is installed
(``pip install openbabel-wheel``): bonds assigned by OpenBabel from the coordinates (xyz ->
SDF, no total charge imposed), read by RDKit, then the PoseBusters "mol" checks. Its
"sanitisation" passes structures RDKit's charge-0 perception rejects (OpenBabel leaves
radicals and odd valences to the later checks); the tool reports it because a pipeline of
this kind is how an xyz file is usually given to PoseBusters, and so how the paper's
figures may have been made (its scoring script is not public). It is not rmsearch's rule.

Usage::

    python tools/paper_protocol.py --out ref --calculator cace:cace-rm/qm7b/best_model.pth \\
        --cace-src cace --compositions C3H6O,C4H8 --openbabel
    python tools/paper_protocol.py --out ours --calculator rmsearch:model:molecules-mace \\
        --compositions C3H6O,C4H8

Outputs: ``DIR/<formula>.extxyz`` (final structures; ``info``: run_id, converged (second
stage), first_converged, failed (only where a calculator error ended the start; it counts
invalid), steps, energy eV, valid, charged, smiles and reason (where not empty), posebusters,
and with ``--openbabel`` ob_* fields) and ``DIR/summary.json`` (per composition and in
all; every start counts). One thread; deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

#: The reference notebook's protocol: (steps, fmax eV/A) of the two FIRE stages, kick (A).
STAGE_1 = (500, 0.001)
STAGE_2 = (1000, 0.0002)
KICK_A = 0.75


def cace_calculator(model_file: str, cace_src: str | None):
    """An ASE calculator evaluating a CACE model file (energy eV, forces eV/A; molecules)."""
    import torch
    from ase.calculators.calculator import Calculator, all_changes

    if cace_src:
        sys.path.insert(0, str(Path(cace_src).resolve()))
    try:
        from cace.data import AtomicData
        from cace.tools import torch_geometric
    except ImportError as exc:
        raise SystemExit(f"error: --calculator cace: cannot import the CACE package ({exc}); give its "
                         "checkout with --cace-src DIR (github.com/BingqingCheng/cace) and install matscipy")
    model = torch.load(model_file, map_location="cpu", weights_only=False)
    cutoff = float(model.representation.cutoff)

    class CACE(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            data = AtomicData.from_atoms(self.atoms, cutoff=cutoff)
            batch = next(iter(torch_geometric.dataloader.DataLoader([data], batch_size=1)))
            out = model(batch.to_dict(), training=True)
            self.results = {"energy": float(out["CACE_energy"].detach().reshape(-1)[0]),
                            "forces": out["CACE_forces"].detach().numpy().astype(float)}

    return CACE()


def make_calculator(spec: str, cace_src: str | None):
    """The ASE calculator of ``rmsearch:POT``, ``mace:FILE`` or ``cace:FILE``."""
    kind, _, target = spec.partition(":")
    if kind == "rmsearch" and target:
        import rmsearch

        return rmsearch.Calculator(target)
    if kind == "mace" and target:
        from mace.calculators import MACECalculator

        return MACECalculator(model_paths=target, device="cpu", default_dtype="float64")
    if kind == "cace" and target:
        return cace_calculator(target, cace_src)
    raise SystemExit(f"error: --calculator {spec!r}: give rmsearch:POTENTIAL, mace:FILE or cace:FILE")


def run_protocol(atoms, calc, rng: np.random.Generator) -> dict:
    """The reference notebook's two FIRE stages with a kick between them, in place on ``atoms``.

    A calculator that fails (e.g. LAMMPS refusing two fused atoms) ends the start:
    ``failed`` holds the reason, and the start counts as not converged and invalid."""
    from ase.optimize import FIRE

    atoms.calc = calc
    opt = FIRE(atoms, logfile=None)
    row = {"first_converged": False, "converged": False, "failed": "", "energy": float("nan")}
    try:
        row["first_converged"] = bool(opt.run(fmax=STAGE_1[1], steps=STAGE_1[0]))
        atoms.positions += rng.uniform(-KICK_A, KICK_A, atoms.positions.shape)
        row["converged"] = bool(opt.run(fmax=STAGE_2[1], steps=STAGE_2[0]))
        row["energy"] = float(atoms.get_potential_energy())
    except Exception as exc:  # noqa: BLE001 - any calculator error ends this start only
        row["failed"] = " ".join(str(exc).split())[:200]
    row["steps"] = int(opt.nsteps)
    return row


def openbabel_checks(atoms) -> dict[str, bool]:
    """PoseBusters "mol" checks of ``atoms`` with bonds assigned by OpenBabel (see the module
    docstring); ``{"mol_pred_loaded": False}`` when RDKit cannot read OpenBabel's SDF."""
    from openbabel import openbabel, pybel
    from posebusters import PoseBusters
    from rdkit import Chem

    openbabel.obErrorLog.SetOutputLevel(0)
    xyz = f"{len(atoms)}\n\n" + "\n".join(f"{s} {x:.6f} {y:.6f} {z:.6f}"
                                          for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions))
    mol = Chem.MolFromMolBlock(pybel.readstring("xyz", xyz).write("sdf"), removeHs=False)
    if mol is None:
        return {"mol_pred_loaded": False}
    frame = PoseBusters(config="mol").bust([mol], None, None, full_report=False)
    return {str(k): bool(v) for k, v in frame.iloc[0].items()}


def _figures(rows: list[dict], openbabel: bool) -> dict:
    n = len(rows)
    out = {"starts": n, "converged": sum(r["converged"] for r in rows),
           "valid": sum(r["valid"] for r in rows), "posebusters": sum(r["posebusters"] for r in rows),
           "charged": sum(r["charged"] for r in rows)}
    out["valid_percent"] = round(100 * out["valid"] / n, 1)
    out["posebusters_percent"] = round(100 * out["posebusters"] / n, 1)
    if openbabel:
        for key in ("ob_sanitization", "ob_all_checks", "ob_all_but_no_radicals"):
            out[key] = sum(r[key] for r in rows)
            out[key + "_percent"] = round(100 * out[key] / n, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Output folder (created; an existing summary is refused).")
    parser.add_argument("--calculator", required=True, help="rmsearch:POTENTIAL, mace:FILE or cace:FILE.")
    parser.add_argument("--cace-src", default=None, help="Checkout of the CACE package (for cace:FILE).")
    parser.add_argument("--compositions", required=True, help="Comma-separated molecular formulas.")
    parser.add_argument("--nstarts", type=int, default=32, help="Random starts per composition (default 32).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the starts and kicks (default 0).")
    parser.add_argument("--openbabel", action="store_true", help="Add the OpenBabel-based scoring.")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ase.formula import Formula
    from ase.io import write

    from rmdata.errors import RMError
    from rmsearch.analysis.molecules import check_molecule, posebusters_checks
    from rmsearch.shards import KICK_STREAM
    from rmsearch.starts import make_spec, make_start

    out = Path(args.out)
    if (out / "summary.json").exists():
        raise SystemExit(f"error: --out {out}: holds a summary.json already; choose another folder")
    if args.nstarts < 1:
        raise SystemExit("error: --nstarts: give a positive number of starts")
    if args.seed < 0:
        raise SystemExit("error: --seed: give a seed >= 0")
    try:
        specs = {str(Formula(f.strip()).format("hill")): make_spec(molecule=f.strip())
                 for f in args.compositions.split(",") if f.strip()}
    except (ValueError, RMError) as exc:
        raise SystemExit(f"error: --compositions {args.compositions!r}: {exc}") from None
    if not specs:
        raise SystemExit("error: --compositions: give at least one molecular formula")
    if args.openbabel:
        try:
            import openbabel  # noqa: F401
        except ImportError:
            raise SystemExit("error: --openbabel: the openbabel module is not installed "
                             "(pip install openbabel-wheel)") from None
    import torch

    torch.set_num_threads(1)
    calc = make_calculator(args.calculator, args.cace_src)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"calculator": args.calculator, "seed": args.seed,
                     "protocol": {"box_A": [10, 5, 5], "min_distance_A": 0.7, "stage_1": STAGE_1,
                                  "kick_A": KICK_A, "stage_2": STAGE_2, "optimizer": "ase.optimize.FIRE"},
                     "per_composition": {}}
    all_rows: list[dict] = []
    for formula, spec in specs.items():
        t0 = time.perf_counter()
        finals, rows = [], []
        for run_id in range(args.nstarts):
            atoms = make_start(spec, run_id, args.seed)
            row = {"run_id": run_id, **run_protocol(atoms, calc, np.random.default_rng([args.seed, run_id, KICK_STREAM]))}
            check = check_molecule(atoms)
            row.update(valid=check.valid and not row["failed"], charged=check.charged,
                       smiles=check.smiles or "", reason=row["failed"] or check.reason)
            if args.openbabel:
                ob = {"mol_pred_loaded": False} if row["failed"] else openbabel_checks(atoms)
                row.update(ob_sanitization=ob.get("sanitization", False), ob_all_checks=all(ob.values()),
                           ob_all_but_no_radicals=all(v for k, v in ob.items() if k != "no_radicals"))
            finals.append(atoms.copy())
            rows.append(row)
        pb = posebusters_checks(finals) or [{}] * len(finals)
        for row, checks, final in zip(rows, pb, finals):
            row["posebusters"] = bool(checks) and all(checks.values()) and not row["failed"]
            final.calc = None
            final.info.update({k: v for k, v in row.items() if v != ""})  # extxyz misreads empty strings
        tmp = out / f".{formula}.extxyz.tmp"
        write(tmp, finals, format="extxyz")
        tmp.replace(out / f"{formula}.extxyz")
        figures = _figures(rows, args.openbabel)
        figures["seconds"] = round(time.perf_counter() - t0, 1)
        summary["per_composition"][formula] = figures
        all_rows += rows
        print(json.dumps({"formula": formula, **figures}), flush=True)
    summary["all"] = _figures(all_rows, args.openbabel)
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "summary.json")
    print(json.dumps({"all": summary["all"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
