"""Chemical validity of generated molecules (DESIGN §5): RDKit, PoseBusters, isomers.

The rule, in one place:

- **valid** (a neutral molecule): RDKit perceives bonds from the 3D coordinates at total
  charge 0 (``rdDetermineBonds.DetermineBonds``), the molecule sanitises, it is one
  fragment, no atom has radical electrons and **no atom carries a formal charge**;
- **charged**: bonds could only be assigned with formal charges (a zwitterion such as
  ``[NH3+]CC(=O)[O-]``, or charged fragments): reported apart, never counted valid;
- **invalid** otherwise, with RDKit's reason (valence, radicals, fragments, ...);
- **PoseBusters**: the "mol" checks (sanitisation, connectivity, bond lengths and angles,
  steric clash, ring and double-bond flatness, internal energy) where posebusters is
  installed; a structure passes when every check passes;
- the isomer identity is the canonical SMILES without stereochemistry; "known" means it
  is in a given set (e.g. the training molecules), "new" otherwise.

Every start counts in a percentage's denominator: a run that failed or did not converge
is not a valid molecule.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from rmsearch.records import FINISHED_STATUSES

log = logging.getLogger(__name__)


@dataclass
class MoleculeCheck:
    """Validity of one 3D structure (see the module docstring for the rule).

    valid: a neutral, sanitised, single-fragment, radical-free molecule. charged: bonds
    need formal charges. smiles: canonical SMILES without stereo, hydrogens implicit
    (None when bonds could not be perceived). known: ``smiles`` is in the given set.
    reason: why it is not valid ("" if valid).
    """

    valid: bool
    smiles: str | None
    known: bool = False
    charged: bool = False
    reason: str = ""


def canonical_smiles(smiles: str) -> str:
    """Canonical SMILES without stereochemistry (the isomer identity used for matching)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"unparsable SMILES {smiles!r}")
    return Chem.MolToSmiles(mol, isomericSmiles=False)


def perceive(atoms: Atoms):
    """RDKit molecule with bonds perceived at total charge 0 and sanitised (formal charges allowed).

    Raises ``ValueError`` with RDKit's reason when bond orders cannot be assigned, the
    molecule does not sanitise or has radical electrons.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    lines = [str(len(atoms)), ""] + [f"{s} {x:.6f} {y:.6f} {z:.6f}"
                                     for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)]
    mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
    if mol is None:
        raise ValueError("RDKit could not read the coordinates")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
    except Exception as exc:  # noqa: BLE001 - RDKit raises ValueError or RuntimeError
        raise ValueError(f"bond perception: {' '.join(str(exc).split())[:120]}") from None
    problem = Chem.SanitizeMol(mol, catchErrors=True)
    if problem != Chem.SanitizeFlags.SANITIZE_NONE:
        raise ValueError(f"sanitisation failed ({problem})")
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        raise ValueError("radical electrons")
    return mol


def neutral_molecule(atoms: Atoms):
    """The RDKit molecule of a valid structure; ``ValueError`` with the reason otherwise."""
    from rdkit import Chem

    mol = perceive(atoms)
    charged = [a.GetSymbol() + f"{a.GetFormalCharge():+d}" for a in mol.GetAtoms() if a.GetFormalCharge()]
    if charged:
        raise ValueError(f"formal charges {' '.join(charged)}")
    nfrag = len(Chem.GetMolFrags(mol))
    if nfrag != 1:
        raise ValueError(f"{nfrag} fragments")
    return mol


def check_molecule(atoms: Atoms, known: Iterable[str] = ()) -> MoleculeCheck:
    """Validity of one structure and whether its isomer is one of ``known`` (canonical SMILES)."""
    from rdkit import Chem

    try:
        mol = perceive(atoms)
    except ValueError as exc:
        return MoleculeCheck(False, None, reason=str(exc))
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    is_known = smiles in set(known)
    charges = [a for a in mol.GetAtoms() if a.GetFormalCharge()]
    if charges:
        what = " ".join(a.GetSymbol() + f"{a.GetFormalCharge():+d}" for a in charges)
        return MoleculeCheck(False, smiles, is_known, charged=True, reason=f"formal charges {what}")
    nfrag = len(Chem.GetMolFrags(mol))
    if nfrag != 1:
        return MoleculeCheck(False, smiles, is_known, reason=f"{nfrag} fragments")
    return MoleculeCheck(True, smiles, is_known)


def posebusters_checks(atoms_list: Sequence[Atoms]) -> list[dict[str, bool]] | None:
    """PoseBusters "mol" checks per structure (None when posebusters is not installed).

    Only valid structures are checked; the others get an empty dict (they fail).
    """
    try:
        from posebusters import PoseBusters
    except ImportError:
        return None
    buster = PoseBusters(config="mol")
    out: list[dict[str, bool]] = []
    for atoms in atoms_list:
        try:
            mol = neutral_molecule(atoms)
        except ValueError:
            out.append({})
            continue
        frame = buster.bust([mol], None, None, full_report=False)
        out.append({str(k): bool(v) for k, v in frame.iloc[0].items()})
    return out


def read_known_smiles(path: str | Path | None = None) -> set[str]:
    """Canonical SMILES of a list (one per line, ``#`` comments); default: rmdata's offline
    molecule set, the training set of the shipped molecules model."""
    from rmdata.molecules import read_smiles_list

    return {canonical_smiles(s) for s in read_smiles_list(path)}


def score_molecules(records: Sequence, nstarts: int | None = None, known: Iterable[str] = (),
                    posebusters: bool = True) -> dict[str, Any]:
    """Validity figures of one molecule search, per composition and in all.

    ``records``: :class:`rmsearch.records.RunRecord` of the run directory; ``nstarts``:
    the number of starts (default: the records), so a run without a record counts as
    invalid too. Returns ``{"compositions": {formula: figures}, "total": figures, "rows":
    [...]}``; figures are counts and percentages of all starts: valid, charged, PoseBusters
    passed, known and new isomers, distinct isomers with their counts.
    """
    known = set(known)
    finished = [r for r in records if r.status in FINISHED_STATUSES]  # the others count as invalid
    atoms = [r.to_atoms() for r in finished]
    checks = [check_molecule(a, known) for a in atoms]
    pb = posebusters_checks(atoms) if posebusters else None
    rows = []
    for k, (rec, c) in enumerate(zip(finished, checks)):
        row = {"run_id": rec.run_id, "formula": rec.formula, "status": rec.status, "valid": c.valid,
               "charged": c.charged, "smiles": c.smiles, "known": c.known, "reason": c.reason}
        if pb is not None:
            row["posebusters_pass"] = bool(pb[k]) and all(pb[k].values())
            row["posebusters_failed"] = sorted(n for n, ok in pb[k].items() if not ok) if pb[k] else ["not valid"]
        rows.append(row)
    by_formula: dict[str, list] = {}
    for rec in records:
        by_formula.setdefault(rec.formula, [])
    for row in rows:
        by_formula[row["formula"]].append(row)
    comps = {f: _figures(rs, sum(r.formula == f for r in records), pb is not None)
             for f, rs in sorted(by_formula.items())}
    n_all = nstarts if nstarts is not None else len(records)
    if len(comps) == 1 and nstarts is not None:
        (f,) = comps
        comps[f] = _figures(by_formula[f], nstarts, pb is not None)
    return {"compositions": comps, "total": _figures(rows, n_all, pb is not None), "rows": rows,
            "posebusters_installed": pb is not None, "n_known_smiles": len(known)}


def _figures(rows: list[dict[str, Any]], nstarts: int, with_pb: bool) -> dict[str, Any]:
    valid = [r for r in rows if r["valid"]]
    isomers = Counter(r["smiles"] for r in valid)

    def pct(n: int) -> float:
        return round(100.0 * n / nstarts, 1) if nstarts else 0.0

    out = {"starts": nstarts, "finished": len(rows), "valid": len(valid), "valid_percent": pct(len(valid)),
           "charged": sum(r["charged"] for r in rows), "charged_percent": pct(sum(r["charged"] for r in rows)),
           "known": sum(r["known"] for r in valid), "new": sum(not r["known"] for r in valid),
           "distinct_isomers": len(isomers), "isomers": dict(isomers.most_common()),
           "reasons": dict(Counter(_reason_class(r["reason"]) for r in rows if not r["valid"]).most_common())}
    if with_pb:
        passed = sum(r.get("posebusters_pass", False) for r in rows)
        out.update(posebusters=passed, posebusters_percent=pct(passed))
    return out


def _reason_class(reason: str) -> str:
    """A short class of an invalidity reason, for counting."""
    for key in ("formal charges", "fragments", "radical", "sanitisation", "bond perception"):
        if key in reason:
            return key
    return reason.split(":")[0] or "unknown"


def plot_molecules(scores: dict[str, Any], path: str | Path, paper_valid: float | None = 92.7) -> Path:
    """Bar chart per composition: % valid, % PoseBusters, % charged, % known isomer (of all starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    comps = scores["compositions"]
    labels = list(comps)
    series = [("valid (RDKit, neutral)", lambda f: f["valid_percent"]),
              ("PoseBusters", lambda f: f.get("posebusters_percent")),
              ("charged", lambda f: f["charged_percent"]),
              ("known isomer", lambda f: round(100.0 * f["known"] / f["starts"], 1) if f["starts"] else 0.0)]
    series = [(n, fn) for n, fn in series if all(fn(c) is not None for c in comps.values())]
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(labels) + 2), 4.5))
    for k, (name, fn) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [fn(comps[f]) for f in labels], width, label=name)
    if paper_valid is not None:
        ax.axhline(paper_valid, color="k", ls="--", lw=1, label=f"paper: valid {paper_valid}%")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 120)
    ax.set_ylabel("% of random starts")
    ax.set_title("Molecules from random atoms")
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
