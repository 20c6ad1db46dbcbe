"""Load reference structures: a structure file or a dataset split such as ``mp20:val``.

Accepted:

- a CSV file in the MP-20 layout (a ``cif`` column, optional ``material_id``);
- any file ASE can read with all frames (extxyz, CIF, POSCAR, ...);
- ``NAME:SPLIT`` of a dataset of the ``rmdata`` registry (``mp20-subset:val`` ships with the
  package; ``mp20:val`` downloads the full split).
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path

import ase.io
import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from rmdata.errors import RMError, describe_exception

log = logging.getLogger(__name__)

csv.field_size_limit(1 << 26)


def structures_from_csv(path: str | os.PathLike) -> list[tuple[str, Structure]]:
    """(id, Structure) pairs from an MP-20 style CSV with a ``cif`` column."""
    path = Path(path)
    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "cif" not in reader.fieldnames:
            raise RMError(f"{path}: no 'cif' column; give an MP-20 style CSV or a structure file ASE reads")
        for k, row in enumerate(reader):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pymatgen warns about CIF rounding
                try:
                    struct = Structure.from_str(row["cif"], fmt="cif")
                except Exception as exc:  # pymatgen raises many types for a bad CIF
                    raise RMError(f"{path}: row {k + 1}: unreadable CIF ({exc}); fix or remove the row") from exc
            out.append((row.get("material_id") or f"row{k + 1}", struct))
    return out


def _dataset_split(spec: str) -> list[tuple[str, Structure]]:
    """``NAME:SPLIT`` through the rmdata dataset registry (``mp20-subset:val`` is offline)."""
    from rmdata.datasets import load_structures

    from rmdata.datasets import REGISTRY

    name, split = spec.split(":", 1)
    if name not in REGISTRY:
        raise RMError(f"--reference {spec}: no such file, and {name!r} is not a dataset; give a structure "
                      f"file or NAME:SPLIT with NAME one of {', '.join(REGISTRY)}")
    adaptor = AseAtomsAdaptor()
    out = []
    for source_id, atoms in load_structures(dataset=name, split=split or None):
        if not atoms.pbc.all():
            raise RMError(f"--reference {spec}: {source_id} is not a crystal; references must be periodic")
        out.append((str(source_id), adaptor.get_structure(atoms)))
    if not out:
        raise RMError(f"--reference {spec}: the split holds no structures")
    return out


def load_references(spec: str | os.PathLike) -> list[tuple[str, Structure]]:
    """Reference structures as (id, Structure) pairs from a file or a ``NAME:SPLIT`` spec.

    Raises:
        RMError: the file cannot be read or the split is unknown.
    """
    path = Path(spec)
    if path.exists():
        if path.suffix.lower() == ".csv":
            return structures_from_csv(path)
        try:
            frames = ase.io.read(path, index=":")
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
            raise RMError(f"{path}: cannot read reference structures ({describe_exception(exc)}); "
                          "give extxyz, CIF or CSV") from exc
        adaptor = AseAtomsAdaptor()
        out = []
        for k, atoms in enumerate(frames):
            if not atoms.pbc.all() or not abs(atoms.cell.volume) > 1e-6 or not np.isfinite(atoms.positions).all():
                raise RMError(f"--reference {path}: structure {k} is not a crystal with a cell and finite "
                              "positions; references must be periodic")
            out.append((str(atoms.info.get("material_id", f"{path.name}:{k}")), adaptor.get_structure(atoms)))
        if not out:
            raise RMError(f"--reference {path}: no structures in the file")
        return out
    if ":" in str(spec):
        return _dataset_split(str(spec))
    raise RMError(f"--reference {spec}: no such file and not a NAME:SPLIT dataset spec (e.g. mp20:val)")
