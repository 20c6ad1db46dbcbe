"""Load reference structures: a structure file or a dataset split such as ``mp20:val``.

Accepted:

- a CSV file in the MP-20 layout (a ``cif`` column, optional ``material_id``);
- any file ASE can read with all frames (extxyz, CIF, POSCAR, ...);
- ``NAME:SPLIT`` of a dataset shipped with or downloaded by ``rmdata`` (``mp20:val``).
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import warnings
from pathlib import Path

import ase.io
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from rmdata.errors import RMError

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
    name, split = spec.split(":", 1)
    try:
        datasets = importlib.import_module("rmdata.datasets")
    except ImportError:
        datasets = None
    for attr in ("load_structures", "load_split"):
        fn = getattr(datasets, attr, None) if datasets else None
        if fn is not None:
            items = fn(name, split)
            adaptor = AseAtomsAdaptor()
            return [(str(getattr(a, "info", {}).get("material_id", f"{name}:{split}:{k}")),
                     a if isinstance(a, Structure) else adaptor.get_structure(a)) for k, a in enumerate(items)]
    data = Path(importlib.import_module("rmdata").__file__).parent / "data"
    for cand in (data / f"{name}_subset" / f"{split}.csv", data / name / f"{split}.csv", data / f"{name}_{split}.csv"):
        if cand.exists():
            return structures_from_csv(cand)
    raise RMError(f"--reference {spec}: dataset split not found; give a structure file or a split "
                  "that 'rmdata' provides (e.g. mp20:val)")


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
        except Exception as exc:  # ASE raises many types for unreadable files
            raise RMError(f"{path}: cannot read reference structures ({exc}); give extxyz, CIF or CSV") from exc
        adaptor = AseAtomsAdaptor()
        return [(str(a.info.get("material_id", f"{path.name}:{k}")), adaptor.get_structure(a))
                for k, a in enumerate(frames)]
    if ":" in str(spec):
        return _dataset_split(str(spec))
    raise RMError(f"--reference {spec}: no such file and not a NAME:SPLIT dataset spec (e.g. mp20:val)")
