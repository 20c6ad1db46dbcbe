"""Run records and shard files: the result store of a search.

A search writes one JSON line per finished run into its worker's shard file
(``RUNDIR/shards/<name>.jsonl``). A line is appended, flushed and fsynced in one write;
a run id is done once its complete line is in a shard. A last line cut short by a
crash (no trailing newline, or not valid JSON) is detected and dropped by
:func:`read_shard`, and :func:`repair_shard` truncates it before a worker appends again,
so the run is simply redone.

Units: energies in eV (``energy``) and eV/atom (``energy_per_atom``), pressure in GPa
(positive = compressed), volume in A^3/atom, lengths in A, stress in eV/A^3 (ASE Voigt
order xx yy zz yz xz xy).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

log = logging.getLogger(__name__)

#: Every status a run can end with. ``error: <message>`` is also allowed for failures
#: that fit none of these (the message says what happened).
STATUSES = ("converged", "not_converged", "lost_atoms", "exploded", "collapsed", "nan", "timeout")


@dataclass
class RunRecord:
    """The outcome of one relaxation.

    ``numbers``/``positions``/``cell`` describe the final structure (the start where the
    run failed before moving); ``pbc`` is all False for molecules.
    """

    run_id: int
    seed: int
    status: str
    formula: str
    numbers: list[int]
    positions: list[list[float]]
    cell: list[list[float]]
    pbc: list[bool]
    energy: float = math.nan  # eV
    energy_per_atom: float = math.nan  # eV/atom
    pressure_gpa: float = math.nan  # GPa, positive = compressed
    volume_per_atom: float = math.nan  # A^3/atom
    fmax: float = math.nan  # eV/A, final max |force|
    stress: list[float] = field(default_factory=lambda: [math.nan] * 6)  # eV/A^3, ASE Voigt
    n_force_calls: int = 0
    n_steps: int = 0
    wall_s: float = 0.0
    spacegroup_start: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def to_atoms(self) -> Atoms:
        """The final structure as ASE ``Atoms``; scalars go into ``atoms.info``."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(run_id=self.run_id, seed=self.seed, status=self.status,
                          energy_per_atom=self.energy_per_atom, pressure_gpa=self.pressure_gpa,
                          volume_per_atom=self.volume_per_atom)
        return atoms

    @classmethod
    def from_atoms(cls, atoms: Atoms, *, run_id: int, seed: int, status: str, **kwargs) -> RunRecord:
        """Build a record from a final structure plus scalar results."""
        return cls(run_id=run_id, seed=seed, status=status, formula=atoms.get_chemical_formula(),
                   numbers=atoms.numbers.tolist(), positions=atoms.positions.tolist(),
                   cell=np.asarray(atoms.cell).tolist(), pbc=[bool(p) for p in atoms.pbc], **kwargs)

    def to_json(self) -> str:
        """One line of JSON (NaN written as null)."""
        return json.dumps(_nan_to_none(asdict(self)), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> RunRecord:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a record is a JSON object")
        for key in ("energy", "energy_per_atom", "pressure_gpa", "volume_per_atom", "fmax"):
            if data.get(key) is None:
                data[key] = math.nan
        data["stress"] = [math.nan if v is None else v for v in data.get("stress") or [None] * 6]
        record = cls(**data)
        check_record(record)
        return record


def check_record(record: RunRecord) -> None:
    """Raise ValueError (a one-line reason) unless the record's structure fits together:
    an integer run id >= 0, known elements (1-118), one 3-vector per atom, a 3x3 cell and
    three pbc flags."""
    if not isinstance(record.run_id, int) or isinstance(record.run_id, bool) or record.run_id < 0:
        raise ValueError(f"run_id {record.run_id!r} is not an integer >= 0")
    numbers = record.numbers
    if not isinstance(numbers, list) or not all(isinstance(z, int) and 1 <= z <= 118 for z in numbers):
        raise ValueError(f"run {record.run_id}: unknown element in numbers")
    if not isinstance(record.positions, list) or len(record.positions) != len(numbers) \
            or not all(isinstance(p, list) and len(p) == 3 for p in record.positions):
        raise ValueError(f"run {record.run_id}: {len(numbers)} atoms but positions of another shape")
    cell = record.cell
    if not isinstance(cell, list) or len(cell) != 3 or not all(isinstance(v, list) and len(v) == 3 for v in cell):
        raise ValueError(f"run {record.run_id}: cell is not 3x3")
    if not isinstance(record.pbc, list) or len(record.pbc) != 3:
        raise ValueError(f"run {record.run_id}: pbc is not three flags")
    for name in ("energy", "energy_per_atom", "pressure_gpa", "volume_per_atom", "fmax", "wall_s"):
        value = getattr(record, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"run {record.run_id}: {name} is not a number")
    if not isinstance(record.status, str):
        raise ValueError(f"run {record.run_id}: status is not text")


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def append_record(fh, record: RunRecord) -> None:
    """Append one record to an open shard (binary append mode) and fsync it."""
    fh.write((record.to_json() + "\n").encode())
    fh.flush()
    os.fsync(fh.fileno())


def repair_shard(path: str | os.PathLike) -> int:
    """Truncate a trailing partial line of a shard (a crash mid-write); return bytes dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "rb+") as fh:
        fh.truncate(keep)
        os.fsync(fh.fileno())
    log.warning("%s: dropped a truncated last record (%d bytes); that run will be redone",
                path, len(data) - keep)
    return len(data) - keep


def read_shard(path: str | os.PathLike, problems: list[str] | None = None) -> Iterator[RunRecord]:
    """Yield the complete records of one shard.

    A truncated last line, or a line that is not a valid record, is skipped and described
    in ``problems`` (if given) instead of raising.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is either empty or truncated
    if lines[-1]:
        msg = f"{path}: truncated last record skipped"
        log.warning(msg)
        if problems is not None:
            problems.append(msg)
    for lineno, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            yield RunRecord.from_json(raw.decode())
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            msg = f"{path}:{lineno}: unreadable record skipped ({type(exc).__name__}: {exc})"
            log.warning(msg)
            if problems is not None:
                problems.append(msg)


def read_records(shard_dir: str | os.PathLike, problems: list[str] | None = None) -> list[RunRecord]:
    """All records of all ``*.jsonl`` shards in a directory, one per run id, sorted by run id.

    Should a run id appear twice (it cannot in normal operation), the first is kept and
    the duplicate is reported in ``problems``.
    """
    seen: dict[int, RunRecord] = {}
    for shard in sorted(Path(shard_dir).glob("*.jsonl")):
        for rec in read_shard(shard, problems):
            if rec.run_id in seen:
                if problems is not None:
                    problems.append(f"{shard}: duplicate record for run {rec.run_id} ignored")
                continue
            seen[rec.run_id] = rec
    return [seen[k] for k in sorted(seen)]


def done_ids(records: Iterable[RunRecord]) -> set[int]:
    """Run ids that have a record (whatever their status)."""
    return {r.run_id for r in records}
