"""Run records and shard files: the result store of a search.

The run statuses (:data:`STATUSES`), how a relaxation's outcome becomes a record
(:func:`record_from_outcome`, :func:`error_record`), which run ids are done
(:func:`done_ids`) and the counts of a set of records (:func:`summarize_records`) live here.

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

import collections
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

#: Statuses of a relaxation that ran to its end: within the tolerances, or stopped at
#: ``max_steps`` (never counted as converged). Its structure is a usable result.
FINISHED_STATUSES = ("converged", "not_converged")
#: Statuses of a run that failed (atoms lost, cell exploded or collapsed, non-finite
#: forces or energy, past the run timeout).
FAILED_STATUSES = ("lost_atoms", "exploded", "collapsed", "nan", "timeout")
#: Every status a run can end with. ``error: <message>`` (:data:`ERROR`) is also allowed
#: for failures that fit none of these (the message says what happened).
STATUSES = FINISHED_STATUSES + FAILED_STATUSES
#: The status class of every ``error: <message>`` status.
ERROR = "error"


def status_class(status: str) -> str:
    """``status``, or :data:`ERROR` for every ``error: ...`` status (the counting unit of
    summaries)."""
    return ERROR if status.startswith(ERROR) else status


def is_failure(status: str) -> bool:
    """Whether a status (or status class) is a failed run: a failed status or an error."""
    return status_class(status) == ERROR or status in FAILED_STATUSES


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


def read_shard_records(path: str | os.PathLike) -> list[RunRecord]:
    """Complete records of one shard file (empty list if it does not exist)."""
    return list(read_shard(path)) if Path(path).exists() else []


def done_ids(shard_dir: str | os.PathLike) -> set[int]:
    """Run ids that have a record in the shards of ``shard_dir`` (whatever their status):
    the runs a launch, task or resubmission skips. Empty when there is no such folder."""
    return {r.run_id for r in read_records(shard_dir)}


def summarize_records(records: Iterable[RunRecord], wall_s: float) -> dict[str, Any]:
    """Counts per status class (every ``error: ...`` as ``error``), best converged energy
    per atom (eV/atom) with its run id and formula, wall time (s) and runs per second."""
    records = list(records)
    counts = collections.Counter(status_class(r.status) for r in records)
    conv = [r for r in records if r.status == "converged" and math.isfinite(r.energy_per_atom)]
    best = min(conv, key=lambda r: r.energy_per_atom) if conv else None
    return {
        "runs": len(records),
        "status_counts": dict(sorted(counts.items())),
        "best_energy_per_atom": best.energy_per_atom if best else None,
        "best_run_id": best.run_id if best else None,
        "best_formula": best.formula if best else None,
        "wall_s": round(wall_s, 3),
        "runs_per_s": round(len(records) / wall_s, 4) if wall_s > 0 else None,
    }


# ----------------------------------------------------------------------------- building records

def record_from_outcome(outcome, start: Atoms, run_id: int, seed: int, wall_s: float) -> RunRecord:
    """A :class:`RunRecord` from a ``RelaxOutcome`` and the start it relaxed (``wall_s``: s)."""
    return RunRecord.from_atoms(
        outcome.atoms, run_id=run_id, seed=seed, status=outcome.status,
        energy=float(outcome.energy), energy_per_atom=float(outcome.energy_per_atom),
        pressure_gpa=float(outcome.pressure_gpa), volume_per_atom=float(outcome.volume_per_atom),
        fmax=float(outcome.fmax), stress=[float(s) for s in outcome.stress],
        n_force_calls=int(outcome.n_force_calls), n_steps=int(outcome.n_steps), wall_s=wall_s,
        spacegroup_start=start.info.get("spacegroup_start"), extra=_start_extra(start, outcome))


def _start_extra(start: Atoms, outcome=None) -> dict[str, Any]:
    extra = {k: start.info.get(k) for k in ("start_kind", "start_status", "volume_factor")}
    if start.info.get("wyckoff"):
        extra["wyckoff"] = start.info["wyckoff"]
    if start.pbc.all():
        extra["start_volume_per_atom"] = float(start.get_volume() / len(start))
    if outcome is not None:
        extra["model_time_s"] = float(outcome.model_time_s)
        if start.info.get("spacegroup_start") is not None and outcome.atoms.pbc.all():
            from rmsearch.symmetry import spacegroup_report

            extra.update(spacegroup_report(start, outcome.atoms))
        if outcome.first_stage is not None:
            extra["first_stage"] = outcome.first_stage
    return extra


def error_record(run_id: int, seed: int, message: str, start: Atoms | None = None, wall_s: float = 0.0,
                 status: str | None = None) -> RunRecord:
    """A record with status ``error: <message>`` (or ``status``, with the message in
    ``extra["message"]``) and the start as structure, if there is one."""
    message = " ".join(message.split())[:300]
    if status is None:
        status = f"{ERROR}: {message}"
    if start is None:
        return RunRecord(run_id=run_id, seed=seed, status=status, formula="", numbers=[],
                         positions=[], cell=[[0.0] * 3] * 3, pbc=[True] * 3, wall_s=wall_s)
    return RunRecord.from_atoms(start, run_id=run_id, seed=seed, status=status, wall_s=wall_s,
                                spacegroup_start=start.info.get("spacegroup_start"),
                                extra={**_start_extra(start), "message": message})
