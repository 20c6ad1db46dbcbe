"""Collect the shards of a run directory: records -> ASE SQLite database + extxyz.

A run directory holds ``config.json`` (the search configuration) and
``shards/*.jsonl`` (one :class:`~rmsearch.records.RunRecord` per line). :func:`load_run`
reads them, never crashing on a broken shard: a truncated last line, a garbage line or
a converged record without a finite energy is skipped and described in ``problems``.
:func:`write_results_db` writes one row per run into ``RUNDIR/results.db`` (``ase db
RUNDIR/results.db`` works on it) and :func:`write_final_structures` the converged final
structures into ``RUNDIR/final_structures.extxyz``.

Units: eV/atom, GPa (positive = compressed), A^3/atom, eV/A.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.db
import ase.io
from ase import Atoms

import numpy as np

from rmdata.errors import RMError
from rmdata.utils import atomic_output, provenance
from rmsearch.records import RunRecord, read_records

log = logging.getLogger(__name__)

DB_NAME = "results.db"
FINAL_XYZ = "final_structures.extxyz"


@dataclass
class RunData:
    """Everything read from a run directory.

    ``records`` are all readable records sorted by run id, ``usable`` the converged ones
    with a finite energy, volume and positions (the only ones that are ever ranked),
    ``problems`` one line per skipped shard line or record.
    """

    rundir: Path
    config: dict[str, Any]
    records: list[RunRecord]
    usable: list[RunRecord]
    problems: list[str] = field(default_factory=list)

    @property
    def status_counts(self) -> dict[str, int]:
        """Number of runs per status (``error: ...`` statuses are counted as ``error``)."""
        counts = Counter(r.status.split(":", 1)[0] for r in self.records)
        return dict(sorted(counts.items()))


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _usable_cell(cell) -> bool:
    """A finite 3x3 cell of positive volume (A^3 > 1e-6)."""
    try:
        array = np.asarray(cell, dtype=float)
    except (TypeError, ValueError):
        return False
    return array.shape == (3, 3) and bool(np.all(np.isfinite(array))) and abs(np.linalg.det(array)) > 1e-6


def load_run(rundir: str | os.PathLike) -> RunData:
    """Read ``config.json`` and all shards of ``rundir``.

    Raises:
        RMError: ``rundir`` is not a directory or has no ``shards/`` folder.
    """
    rundir = Path(rundir)
    if not rundir.is_dir():
        raise RMError(f"{rundir}: no such run directory; pass the -o directory of 'rmsearch launch'")
    shard_dir = rundir / "shards"
    if not shard_dir.is_dir():
        raise RMError(f"{rundir}: no shards/ folder; is this a run directory of 'rmsearch launch'?")
    config: dict[str, Any] = {}
    problems: list[str] = []
    cfg_path = rundir / "config.json"
    if cfg_path.exists():
        try:
            config = json.loads(cfg_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{cfg_path}: unreadable config ({exc}); analysed without it")
        if not isinstance(config, dict):
            problems.append(f"{cfg_path}: not a JSON object; analysed without it")
            config = {}
    else:
        problems.append(f"{cfg_path}: missing; analysed without the search configuration")
    records = read_records(shard_dir, problems)
    usable = []
    for rec in records:
        if not rec.converged:
            continue
        if not _finite(rec.energy_per_atom, rec.volume_per_atom if any(rec.pbc) else 0.0):
            problems.append(f"run {rec.run_id}: status converged but energy_per_atom="
                            f"{rec.energy_per_atom} volume_per_atom={rec.volume_per_atom}; skipped")
            continue
        if not all(_finite(*p) for p in rec.positions) or len(rec.positions) != len(rec.numbers):
            problems.append(f"run {rec.run_id}: non-finite or inconsistent positions; skipped")
            continue
        if any(rec.pbc) and not _usable_cell(rec.cell):
            problems.append(f"run {rec.run_id}: periodic with a zero, flat or non-finite cell; skipped")
            continue
        usable.append(rec)
    log.info("%s: %d records, %d usable, %d problems", rundir, len(records), len(usable), len(problems))
    return RunData(rundir=rundir, config=config, records=records, usable=usable, problems=problems)


def _kvp(rec: RunRecord, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Key-value pairs of one database row: finite scalars only (ase.db rejects None)."""
    kvp: dict[str, Any] = {"run_id": rec.run_id, "seed": rec.seed, "status": rec.status,
                           "n_steps": rec.n_steps, "n_force_calls": rec.n_force_calls}
    for key, value in (("energy_per_atom", rec.energy_per_atom), ("pressure_gpa", rec.pressure_gpa),
                       ("volume_per_atom", rec.volume_per_atom), ("final_fmax", rec.fmax),
                       ("wall_s", rec.wall_s)):
        if _finite(value):
            kvp[key] = float(value)
    for key, value in (extra or {}).items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        kvp[key] = value
    return kvp


def write_results_db(rundata: RunData, annotations: dict[int, dict[str, Any]] | None = None,
                     path: str | os.PathLike | None = None) -> Path:
    """Write one row per run into an ASE SQLite database, atomically; return its path.

    Key-value pairs: ``run_id``, ``seed``, ``status``, ``energy_per_atom`` (eV/atom),
    ``pressure_gpa`` (GPa), ``volume_per_atom`` (A^3/atom), ``final_fmax`` (eV/A),
    ``n_steps``, ``n_force_calls``, plus per-run ``annotations`` from the analysis
    (``valid``, ``cluster_id``, ``spacegroup``, ...). Provenance is in the metadata.
    """
    path = Path(path) if path else rundata.rundir / DB_NAME
    annotations = annotations or {}
    with atomic_output(path, suffix=".db") as tmp:
        tmp.unlink()  # let SQLite create a fresh file
        db = ase.db.connect(str(tmp), type="db", append=True)
        with db:
            for rec in rundata.records:
                db.write(_plain_atoms(rec), key_value_pairs=_kvp(rec, annotations.get(rec.run_id)),
                         data={"stress": [float(v) for v in rec.stress]})
        db.metadata = {"provenance": provenance(rundata.config, rundata.config.get("seed")),
                       "title": f"rmsearch results of {rundata.rundir.name}"}
    return path


def _plain_atoms(rec: RunRecord) -> Atoms:
    """The final structure without ``info`` (the database keeps scalars as key-value pairs)."""
    return Atoms(numbers=rec.numbers, positions=rec.positions, cell=rec.cell, pbc=rec.pbc)


def write_final_structures(records: list[RunRecord], path: str | os.PathLike,
                           annotations: dict[int, dict[str, Any]] | None = None) -> Path:
    """Write the final structures of ``records`` to extxyz atomically (info: run_id, energies, ...)."""
    annotations = annotations or {}
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        for rec in records:  # one frame at a time: bounded memory for 100,000 records
            atoms = rec.to_atoms()
            atoms.info.update({k: v for k, v in annotations.get(rec.run_id, {}).items() if v is not None})
            ase.io.write(fh, atoms, format="extxyz")
    return path


def collect(rundir: str | os.PathLike) -> RunData:
    """Merge the shards of ``rundir`` into ``results.db`` and ``final_structures.extxyz``."""
    rundata = load_run(rundir)
    write_results_db(rundata)
    write_final_structures(rundata.usable, rundata.rundir / FINAL_XYZ)
    for msg in rundata.problems:
        log.warning(msg)
    return rundata
