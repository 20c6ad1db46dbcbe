"""Run a search: a run directory, a pool of worker processes, shards, resume, status.

Run directory layout (other tools rely on it):

- ``RUNDIR/config.json``: the whole search configuration, written once by
  :func:`init_rundir`: ``nruns``, ``seed``, ``system``/``composition``/``molecule``,
  ``start`` (the :class:`rmsearch.starts.StartSpec`), ``potential`` (absolute path) and
  ``potential_sha256`` (a fingerprint of its files), ``relax`` (the
  :class:`rmsearch.relax.RelaxSettings`) and ``provenance``.
- ``RUNDIR/shards/*.jsonl``: one :class:`rmsearch.records.RunRecord` per line;
  ``local-<k>.jsonl`` from local worker ``k``, ``task-<i>.jsonl`` from
  ``rmsearch run-shard --task i`` (SLURM array tasks), ``batched.jsonl`` from the batched
  path (``launch --device cuda`` / ``--batch N``). A run id is done once its record is in
  any shard.
- ``RUNDIR/lock``: ``launch`` holds an exclusive ``flock`` on it and writes its pid
  there; ``run-shard`` holds a shared one (many array tasks at once, but never together
  with a local launch).
- ``RUNDIR/slurm/``: reserved for :mod:`rmsearch.slurm`.

Every writer also holds an exclusive ``flock`` on its own shard while it appends, and
repairs a truncated last line (a crash mid-write) before its first append, so a shard
never has two writers and a cut record is simply redone.

:func:`launch` runs the missing run ids in ``workers`` processes (spawn context; each
pins torch/BLAS to one thread before importing torch, builds one ``Relaxer`` and keeps
it). Run ids are handed out one at a time over a private pipe per worker, so the parent
always knows which run each worker holds. A worker that dies is replaced and its
in-flight run redone; a run that killed two workers is recorded as
``error: worker process died ...``. Workers ask the kernel to kill them when the parent
dies (``PR_SET_PDEATHSIG``), so a killed ``launch`` leaves no orphan writing to a shard.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from rmdata.errors import RMError
from rmdata.utils import pin_threads, provenance, write_json_atomic
from rmsearch.records import RunRecord, append_record, read_records, repair_shard
from rmsearch.starts import StartSpec, make_spec, make_start

log = logging.getLogger(__name__)

CONFIG_FORMAT = 1
#: config.json fields whose change would change results: resume refuses if they differ.
RESULT_KEYS = ("seed", "start", "relax", "potential_sha256")
#: Statuses counted as "failed" by :func:`rundir_status` (plus every ``error: ...``).
FAILED_STATUSES = ("lost_atoms", "exploded", "collapsed", "nan", "timeout")
#: Deaths of worker processes on one run before it is recorded as an error.
MAX_DEATHS_PER_RUN = 2
#: Worker deaths before any run was handed out, after which launch gives up.
MAX_STARTUP_DEATHS = 5
#: Runs in a row ending in ``error: ...`` after which a launch or task stops: one fault
#: (a broken potential or install) must not use up the whole search as error records.
MAX_ERROR_STREAK = 20
#: build_config options that are RelaxSettings fields.
RELAX_OPTIONS = ("fmax", "smax_gpa", "max_steps", "dtype", "optimizer", "kick", "kick_fmax",
                 "keep_symmetry", "release_symmetry")
#: Exit code of a worker process whose run hit the run timeout (the run is recorded).
EXIT_TIMEOUT = 75
#: Default wall-time limit of one relaxation in ``rmsearch launch`` / ``run-shard`` (s).
DEFAULT_RUN_TIMEOUT_S = 600.0
#: Third entry of the kick stage's seed sequence, rng([seed, run_id, KICK_STREAM]); the
#: start uses rng([seed, run_id]).
KICK_STREAM = 1


# ----------------------------------------------------------------------------- config

def default_workers() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. under SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def potential_fingerprint(directory: str | os.PathLike) -> str:
    """SHA-256 over the names and contents of the files of a potential directory."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            h.update(path.name.encode() + b"\0")
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def relax_settings_to_dict(settings) -> dict[str, Any]:
    """JSON form of :class:`rmsearch.relax.RelaxSettings`."""
    return dataclasses.asdict(settings)


def relax_settings_from_dict(data: dict[str, Any]):
    """Inverse of :func:`relax_settings_to_dict`."""
    from rmsearch.engine import CoreRepulsion
    from rmsearch.relax import RelaxSettings

    data = dict(data)
    known = {f.name for f in dataclasses.fields(RelaxSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RMError(f"config.json: relax settings {unknown} unknown to this rmsearch version; "
                      "use the version that created the run directory")
    core = data.get("core_repulsion")
    if isinstance(core, dict):
        data["core_repulsion"] = CoreRepulsion(**core)
    return RelaxSettings(**data)


def read_config(rundir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run directory."""
    path = Path(rundir) / "config.json"
    if not path.is_file():
        raise RMError(f"{rundir}: not a run directory (no config.json); create it with 'rmsearch launch'")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RMError(f"{path}: unreadable run configuration ({exc}); restore it or start a new "
                      "run directory") from exc
    for key in ("nruns", "seed", "start", "relax", "potential"):
        if key not in config:
            raise RMError(f"{path}: field {key!r} missing; start a new run directory")
    return config


def build_config(*, potential: str | os.PathLike, nruns: int, seed: int = 0,
                 system: str | None = None, composition: str | None = None,
                 molecule: str | None = None, natoms: str | tuple[int, int] = (2, 12),
                 spacegroup: int | str | None = None, volume_factor: tuple[float, float] = (0.8, 1.2),
                 minsep_factor: float = 0.7, fmax: float = 0.01, smax_gpa: float = 0.1,
                 max_steps: int = 2000, dtype: str = "float32", optimizer: str = "auto",
                 kick: float = 0.0, kick_fmax: float = 0.0002,
                 keep_symmetry: bool = False, release_symmetry: bool = False,
                 run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
                 relax: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content of a new search (validated; nothing is written).

    potential: potential directory (``rmsearch export``). nruns: number of runs (ids
    0..nruns-1). seed: search seed. One of system ("Li-S"), composition ("Li2S"),
    molecule ("C4H6O"). natoms: atoms per cell, range. spacegroup: None, 1-230 or
    "random". volume_factor: range of the random factor on the per-element volumes.
    minsep_factor: minimum separation as a fraction of the covalent radii sum. fmax
    (eV/A), smax_gpa (GPa), max_steps (force calls): relaxation tolerances. dtype:
    "float32" or "float64" model evaluation (mace backend). optimizer: the relaxation
    method (:data:`rmsearch.relax.RELAX_OPTIMIZERS`). kick (A), kick_fmax (eV/A): the
    second stage of the molecule protocol (:class:`rmsearch.relax.RelaxSettings`; kick 0 =
    none), its displacements drawn from rng([seed, run, 1]). keep_symmetry,
    release_symmetry: relax within the start's space group, then (release) freely
    (:class:`rmsearch.relax.RelaxSettings`; for a ``spacegroup`` search). run_timeout_s: wall-time limit of one
    run (s; 0 = none), an execution setting that may change on resume. ``relax`` overrides
    any RelaxSettings field.
    """
    from rmsearch.potentials import load_potential
    from rmsearch.relax import RelaxSettings

    if not isinstance(nruns, int) or nruns < 1:
        raise RMError(f"--nruns {nruns!r}: must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise RMError(f"--seed {seed!r}: must be an integer >= 0")
    potdir = Path(potential).resolve()
    pot = load_potential(potdir)
    spec = make_spec(system=system, composition=composition, molecule=molecule, natoms=natoms,
                     volumes=pot.volumes, spacegroup=spacegroup, volume_factor=volume_factor,
                     minsep_factor=minsep_factor)
    unknown = [el for el in spec.elements if el not in pot.elements]
    if unknown:
        raise RMError(f"{potdir}: the potential knows {pot.elements}, not {unknown}; "
                      "search only elements it was trained on")
    if not (isinstance(run_timeout_s, (int, float)) and run_timeout_s >= 0):
        raise RMError(f"--run-timeout {run_timeout_s!r}: must be a number of seconds >= 0 (0 = no limit)")
    if keep_symmetry and spec.spacegroup is None:
        raise RMError("--keep-symmetry: applies to space-group starts; give --spacegroup N (or random)")
    settings = RelaxSettings(fmax=fmax, smax_gpa=smax_gpa, max_steps=max_steps, dtype=dtype,
                             optimizer=optimizer, kick=kick, kick_fmax=kick_fmax,
                             keep_symmetry=keep_symmetry, release_symmetry=release_symmetry)
    if relax:
        settings = relax_settings_from_dict({**relax_settings_to_dict(settings), **relax})
    config = {
        "format": CONFIG_FORMAT,
        "nruns": nruns,
        "seed": seed,
        "system": system, "composition": composition, "molecule": molecule,
        "start": spec.to_dict(),
        "potential": str(potdir),
        "potential_sha256": potential_fingerprint(potdir),
        "relax": relax_settings_to_dict(settings),
        "run_timeout_s": float(run_timeout_s),
    }
    config["provenance"] = provenance({k: config[k] for k in config if k not in ("nruns", "run_timeout_s")},
                                      seed)
    return config


def init_rundir(rundir: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any]:
    """Create ``rundir`` for ``config`` (from :func:`build_config`), or check it against the
    existing one and return the configuration to use.

    An existing run directory must agree on every field in :data:`RESULT_KEYS` (seed,
    starts, relaxation settings, potential contents); otherwise RMError names the field.
    ``nruns`` may change (more runs extend the search); a moved potential directory with
    the same contents is accepted and its new path recorded.
    """
    rundir = Path(rundir)
    path = rundir / "config.json"
    (rundir / "shards").mkdir(parents=True, exist_ok=True)
    (rundir / "slurm").mkdir(exist_ok=True)
    if not path.exists():
        write_json_atomic(path, config)
        log.info("%s: new search, %d runs", rundir, config["nruns"])
        return config
    old = read_config(rundir)
    # normalise the stored settings (fields added by a later version take their defaults)
    old["relax"] = relax_settings_to_dict(relax_settings_from_dict(old["relax"]))
    old["start"] = StartSpec.from_dict(old["start"]).to_dict()
    for key in RESULT_KEYS:
        if old.get(key) != config.get(key):
            raise RMError(f"{path}: the existing search has a different {key!r} "
                          f"({_short(old.get(key))} vs {_short(config.get(key))}); resume with the "
                          "same options or use a new -o directory")
    if int(config["nruns"]) < int(old["nruns"]):
        raise RMError(f"{path}: the existing search has {old['nruns']} runs, not {config['nruns']}; nruns "
                      "may grow on resume, never shrink")
    changed = {k: config[k] for k in ("nruns", "potential", "run_timeout_s") if old.get(k) != config[k]}
    if changed:
        log.info("%s: updating %s in config.json", rundir, changed)
        old.update(changed)
        write_json_atomic(path, old)
    return old


def _short(value: Any, n: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


# ----------------------------------------------------------------------------- locks

@contextlib.contextmanager
def rundir_lock(rundir: str | os.PathLike, *, shared: bool = False):
    """Hold ``RUNDIR/lock``: exclusive for ``launch`` (records the pid), shared for
    ``run-shard`` tasks. Raises RMError naming the holder when it is taken."""
    path = Path(rundir) / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RMError(f"{rundir}: in use by {lock_holder(path)}; wait for it to finish or "
                          f"stop it (lock file {path})") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {os.uname().nodename}\n".encode(), 0)
            os.fsync(fd)
        yield path
    finally:
        os.close(fd)  # releases the flock


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds a run-directory lock, in words (``launch`` pid, or run-shard tasks)."""
    try:
        pid_text, host = (Path(path).read_text().split() + ["", ""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return "run-shard tasks (SLURM array?)"
    if host == os.uname().nodename:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "run-shard tasks (SLURM array?)"
        except PermissionError:
            pass
    return f"another launch (pid {pid} on {host})"


def running_launch(rundir: str | os.PathLike) -> str | None:
    """The holder of the run directory's lock, or None if nobody runs on it."""
    path = Path(rundir) / "lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return lock_holder(path)
    finally:
        os.close(fd)
    return None


# ----------------------------------------------------------------------------- one shard

def record_from_outcome(outcome, start, run_id: int, seed: int, wall_s: float) -> RunRecord:
    """A :class:`RunRecord` from a ``RelaxOutcome`` and the start it relaxed."""
    return RunRecord.from_atoms(
        outcome.atoms, run_id=run_id, seed=seed, status=outcome.status,
        energy=float(outcome.energy), energy_per_atom=float(outcome.energy_per_atom),
        pressure_gpa=float(outcome.pressure_gpa), volume_per_atom=float(outcome.volume_per_atom),
        fmax=float(outcome.fmax), stress=[float(s) for s in outcome.stress],
        n_force_calls=int(outcome.n_force_calls), n_steps=int(outcome.n_steps), wall_s=wall_s,
        spacegroup_start=start.info.get("spacegroup_start"), extra=_start_extra(start, outcome))


def _start_extra(start, outcome=None) -> dict[str, Any]:
    extra = {k: start.info.get(k) for k in ("start_kind", "start_status", "volume_factor")}
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


def error_record(run_id: int, seed: int, message: str, start=None, wall_s: float = 0.0,
                 status: str | None = None) -> RunRecord:
    """A record with status ``error: <message>`` (or ``status``, with the message in
    ``extra["message"]``) and the start as structure, if there is one."""
    message = " ".join(message.split())[:300]
    if status is None:
        status = "error: " + message
    if start is None:
        return RunRecord(run_id=run_id, seed=seed, status=status, formula="", numbers=[],
                         positions=[], cell=[[0.0] * 3] * 3, pbc=[True] * 3, wall_s=wall_s)
    return RunRecord.from_atoms(start, run_id=run_id, seed=seed, status=status, wall_s=wall_s,
                                spacegroup_start=start.info.get("spacegroup_start"),
                                extra={**_start_extra(start), "message": message})


class ShardWriter:
    """Exclusive appender to one shard file: flock, repair, then one fsynced line per record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unbuffered: a failed append can be rolled back exactly (nothing left in a buffer)
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open for the life of the writer
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise RMError(f"{self.path}: another process is writing this shard; is the same "
                          "task already running?") from None
        repair_shard(self.path)

    def append(self, record: RunRecord) -> None:
        """Append one record; on a write error (e.g. a full disk) roll the shard back and raise RMError."""
        size = os.fstat(self._fh.fileno()).st_size
        try:
            append_record(self._fh, record)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fh.fileno(), size)  # no partial record stays behind
            reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise RMError(f"{self.path}: {reason}; fix that and run the same launch again "
                          "(finished runs are kept, the others will run)") from exc

    def close(self) -> None:
        self._fh.close()


class ShardWorker:
    """Runs single run ids of a run directory into one shard: the code path shared by local
    workers (``shards/local-<k>.jsonl``) and ``run-shard`` tasks (``shards/task-<i>.jsonl``).

    Builds the start spec, relaxation settings and one ``Relaxer`` from ``config.json``
    once, and reuses them for every run.

    ``run_timeout_s``: a run still going after this many seconds (wall) is stopped by a
    watchdog thread, which records it with status ``timeout`` and then calls ``on_timeout``
    (which must not return: the relaxation may be stuck inside LAMMPS or torch, where it
    cannot be interrupted, so the process has to go; see :data:`EXIT_TIMEOUT`).
    """

    def __init__(self, rundir: str | os.PathLike, shard: str, *, run_timeout_s: float | None = None,
                 on_timeout=None):
        from rmsearch.potentials import load_potential
        from rmsearch.relax import Relaxer

        self.rundir = Path(rundir)
        config = read_config(self.rundir)
        self.seed = int(config["seed"])
        self.spec = StartSpec.from_dict(config["start"])
        self.potential = load_potential(config["potential"])
        self.settings = relax_settings_from_dict(config["relax"])
        self.writer = ShardWriter(self.rundir / "shards" / f"{shard}.jsonl")
        self._relaxer_cls = Relaxer
        self.relaxer = Relaxer(self.potential, self.settings)
        self.run_timeout_s = run_timeout_s or None
        self.on_timeout = on_timeout or (lambda: os._exit(EXIT_TIMEOUT))
        self._write_lock = threading.Lock()
        self._current: tuple | None = None  # (run_id, start, t0) of the run in progress

    def run_one(self, run_id: int) -> RunRecord:
        """Make the start of ``run_id``, relax it, append its record; never raises for a bad run."""
        t0 = time.perf_counter()
        start = None
        timer = None
        if self.run_timeout_s:
            self._current = (run_id, None, t0)
            timer = threading.Timer(self.run_timeout_s, self._timed_out, args=(run_id,))
            timer.daemon = True
            timer.start()
        try:
            start = make_start(self.spec, run_id, self.seed)
            if timer is not None:
                self._current = (run_id, start, t0)
            outcome = self.relaxer.relax(start, rng=np.random.default_rng([self.seed, run_id, KICK_STREAM]))
            record = record_from_outcome(outcome, start, run_id, self.seed, time.perf_counter() - t0)
        except Exception as exc:
            log.debug("run %d failed", run_id, exc_info=True)
            record = error_record(run_id, self.seed, f"{type(exc).__name__}: {exc}", start,
                                  time.perf_counter() - t0)
            self._rebuild_relaxer()
        with self._write_lock:  # the watchdog cannot write this run's record any more
            self._current = None
            if timer is not None:
                timer.cancel()
            self.writer.append(record)
        return record

    def _timed_out(self, run_id: int) -> None:
        """Watchdog: record the run in progress as ``timeout``, then stop (``on_timeout``)."""
        with self._write_lock:
            if self._current is None or self._current[0] != run_id:
                return  # the run finished while the timer fired
            _, start, t0 = self._current
            wall = time.perf_counter() - t0
            log.warning("run %d: still running after %.0f s (--run-timeout); recorded as timeout, "
                        "restarting the worker", run_id, wall)
            self.writer.append(error_record(
                run_id, self.seed, f"stopped after {wall:.1f} s (run timeout {self.run_timeout_s:g} s)",
                start, wall, status="timeout"))
            self.on_timeout()

    def _rebuild_relaxer(self) -> None:
        """Start from a fresh Relaxer after an unexpected exception (its state is unknown)."""
        with contextlib.suppress(Exception):
            self.relaxer.close()
        self.relaxer = self._relaxer_cls(self.potential, self.settings)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.relaxer.close()
        self.writer.close()


def run_shard(rundir: str | os.PathLike, task: int, ntasks: int, *,
              run_timeout_s: float | None = None, restart_argv: list[str] | None = None) -> dict[str, Any]:
    """Run, in this process, the run ids ``r`` with ``r % ntasks == task`` that have no
    record yet, into ``shards/task-<task>.jsonl``. Returns a summary (see :func:`summarize`).

    ``run_timeout_s`` (default: config.json's ``run_timeout_s``; 0 = none): a run past it is
    recorded as ``timeout`` and this process is replaced by ``restart_argv`` (``os.execv``:
    the command line that resumes this task, as ``rmsearch run-shard`` passes), or exits with
    :data:`EXIT_TIMEOUT` if none is given. A limit applies only with ``restart_argv`` or
    when given explicitly, so that a library caller's process is never ended unasked.
    """
    if ntasks < 1 or not 0 <= task < ntasks:
        raise RMError(f"--task {task} --ntasks {ntasks}: need ntasks >= 1 and 0 <= task < ntasks")
    rundir = Path(rundir)
    config = read_config(rundir)
    pin_threads(1)
    t0 = time.perf_counter()
    with rundir_lock(rundir, shared=True):
        done = {r.run_id for r in read_records(rundir / "shards")}
        todo = [r for r in range(task, int(config["nruns"]), ntasks) if r not in done]
        log.info("task %d/%d: %d runs to do", task, ntasks, len(todo))
        records = []
        if run_timeout_s is None and restart_argv is not None:
            run_timeout_s = float(config.get("run_timeout_s", DEFAULT_RUN_TIMEOUT_S))
        if todo:
            worker = ShardWorker(rundir, f"task-{task}", run_timeout_s=run_timeout_s,
                                 on_timeout=(lambda: _restart(restart_argv)) if restart_argv else None)
            try:
                streak = ErrorStreak()
                for rid in todo:
                    records.append(worker.run_one(rid))
                    streak.update(records[-1].status)
            finally:
                worker.close()
    return summarize(records, time.perf_counter() - t0)


def _restart(argv: list[str]) -> None:
    """Replace this process by ``argv`` (after a run timeout; never returns)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def summarize(records: list[RunRecord], wall_s: float) -> dict[str, Any]:
    """Counts per status (every ``error: ...`` as ``error``), best converged energy per atom
    (eV/atom) with its run id and formula, wall time (s) and runs per second."""
    counts = collections.Counter(_status_class(r.status) for r in records)
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


def _status_class(status: str) -> str:
    return "error" if status.startswith("error") else status


class ErrorStreak:
    """Stops a search when :data:`MAX_ERROR_STREAK` runs in a row end in ``error: ...``."""

    def __init__(self, limit: int | None = None):
        self.limit = MAX_ERROR_STREAK if limit is None else limit
        self.count = 0

    def update(self, status: str) -> None:
        """Count one finished run; raise RMError when the streak reaches the limit."""
        self.count = self.count + 1 if status.startswith("error") else 0
        if self.count >= self.limit:
            raise RMError(f"{self.count} runs in a row failed, the last with '{status[:200]}'; "
                          "stopped so that one fault does not use up the search. Fix the cause, then "
                          "resume (the failed runs keep their error records; use a new -o directory "
                          "to run them again)")


# ----------------------------------------------------------------------------- status

def rundir_status(rundir: str | os.PathLike) -> dict[str, Any]:
    """Progress of a run directory: ``nruns``, ``done`` (records), ``converged``,
    ``not_converged``, ``failed`` (lost_atoms, exploded, nan, error), ``remaining``,
    ``status_counts``, best converged energy per atom (eV/atom), ``running`` (lock holder
    or None) and ``problems`` (unreadable or truncated shard lines)."""
    rundir = Path(rundir)
    config = read_config(rundir)
    nruns = int(config["nruns"])
    problems: list[str] = []
    records = [r for r in read_records(rundir / "shards", problems) if 0 <= r.run_id < nruns]
    summary = summarize(records, 0.0)
    counts = summary["status_counts"]
    failed = sum(n for s, n in counts.items() if s in FAILED_STATUSES or s == "error")
    return {
        "rundir": str(rundir),
        "nruns": nruns,
        "done": len(records),
        "converged": counts.get("converged", 0),
        "not_converged": counts.get("not_converged", 0),
        "failed": failed,
        "remaining": nruns - len(records),
        "status_counts": counts,
        "best_energy_per_atom": summary["best_energy_per_atom"],
        "best_run_id": summary["best_run_id"],
        "best_formula": summary["best_formula"],
        "running": running_launch(rundir),
        "problems": problems,
    }


# ----------------------------------------------------------------------------- local pool

def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover
        return


def _worker_main(rundir: str, slot: int, conn, run_timeout_s: float | None = None) -> None:
    """Body of local worker ``slot``: receive run ids, relax them into ``local-<slot>.jsonl``."""
    _die_with_parent()
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    pin_threads(1)  # before the model brings in torch
    try:
        worker = ShardWorker(rundir, f"local-{slot}", run_timeout_s=run_timeout_s)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the launch
        with contextlib.suppress(OSError, EOFError):  # the parent may have stopped already
            conn.send(("fatal", f"{type(exc).__name__}: {exc}" if not isinstance(exc, RMError) else str(exc)))
        return
    try:
        conn.send(("ready", None))
        while True:
            run_id = conn.recv()
            if run_id is None:
                break
            rec = worker.run_one(run_id)
            conn.send(("done", (run_id, rec.status, rec.energy_per_atom)))
    except RMError as exc:  # e.g. the shard cannot be written: the launch must stop
        with contextlib.suppress(OSError, EOFError):  # the parent may have stopped already
            conn.send(("fatal", str(exc)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the parent is gone or stopping
    finally:
        worker.close()


@dataclasses.dataclass
class _Slot:
    process: Any
    conn: Any
    run_id: int | None = None
    stopping: bool = False
    ready: bool = False  # the worker has started (a later "fatal" is a run-time fault)


class _Pool:
    """The parent's side of the local worker pool."""

    def __init__(self, rundir: Path, config: dict[str, Any], todo: list[int], workers: int,
                 progress: bool):
        from tqdm import tqdm

        self.rundir = rundir
        self.config = config
        self.pending = collections.deque(todo)
        self.ctx = mp.get_context("spawn")
        self.slots: dict[int, _Slot] = {}
        self.deaths: collections.Counter = collections.Counter()
        self.startup_deaths = 0
        self.streak = ErrorStreak()
        self.status_counts: collections.Counter = collections.Counter()
        self.bar = tqdm(total=len(todo), unit="run", disable=not progress, dynamic_ncols=True,
                        smoothing=0.05, file=sys.stderr)
        for slot in range(workers):
            self._start(slot)

    def _start(self, slot: int) -> None:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main,
                                args=(str(self.rundir), slot, child_conn,
                                      float(self.config.get("run_timeout_s", DEFAULT_RUN_TIMEOUT_S))),
                                name=f"rmsearch-worker-{slot}", daemon=True)
        proc.start()
        child_conn.close()
        self.slots[slot] = _Slot(proc, parent_conn)

    def _give(self, slot: int) -> None:
        s = self.slots[slot]
        if self.pending:
            s.run_id = self.pending.popleft()
            s.conn.send(s.run_id)
        else:
            s.run_id = None
            s.stopping = True
            s.conn.send(None)

    def _finished(self, run_id: int, status: str, epa: float) -> None:
        self.status_counts[_status_class(status)] += 1
        conv = self.status_counts.get("converged", 0)
        self.bar.set_postfix_str(f"converged {conv}, other {sum(self.status_counts.values()) - conv}",
                                 refresh=False)
        self.bar.update(1)
        self.streak.update(status)

    def run(self) -> None:
        while self.slots:
            ready = wait([s.conn for s in self.slots.values()]
                         + [s.process.sentinel for s in self.slots.values()], timeout=1.0)
            for slot in list(self.slots):
                s = self.slots[slot]
                while s.conn in ready and s.conn.poll():
                    try:
                        kind, payload = s.conn.recv()
                    except (EOFError, OSError):
                        break
                    if kind == "fatal":
                        raise RMError(payload if s.ready else f"worker {slot} could not start: {payload}")
                    s.ready = True
                    if kind == "done" and payload[0] == s.run_id:
                        self._finished(*payload)
                        s.run_id = None
                    self._give(slot)
                if not s.process.is_alive():
                    s.process.join()
                    if s.stopping and s.run_id is None and s.process.exitcode == 0:
                        del self.slots[slot]
                    else:
                        self._replace(slot)

    def _replace(self, slot: int) -> None:
        """Worker ``slot`` died: redo its run (or record it after repeated deaths), restart it."""
        s = self.slots.pop(slot)
        s.conn.close()
        shard = self.rundir / "shards" / f"local-{slot}.jsonl"
        rid = s.run_id
        if s.process.exitcode != EXIT_TIMEOUT:  # a timeout was logged by the worker itself
            log.warning("worker %d (pid %d) died with exit code %s while on run %s", slot, s.process.pid,
                        s.process.exitcode, rid)
        if rid is not None:
            writer = ShardWriter(shard)  # the dead worker's shard: repair, and we may append
            try:
                recorded = {r.run_id: r for r in read_records_of(shard)}
                if rid in recorded:
                    self._finished(rid, recorded[rid].status, recorded[rid].energy_per_atom)
                else:
                    self.deaths[rid] += 1
                    if self.deaths[rid] >= MAX_DEATHS_PER_RUN:
                        start = _safe_start(self.config, rid)
                        rec = error_record(rid, int(self.config["seed"]),
                                           f"worker process died {self.deaths[rid]} times on this run "
                                           f"(last exit code {s.process.exitcode})", start)
                        writer.append(rec)
                        self._finished(rid, rec.status, rec.energy_per_atom)
                    else:
                        self.pending.appendleft(rid)
            finally:
                writer.close()
        if rid is None and not s.stopping:
            self.startup_deaths += 1
            if self.startup_deaths > MAX_STARTUP_DEATHS:
                raise RMError(f"worker processes keep dying before their first run (last exit code "
                              f"{s.process.exitcode}); run 'rmsearch run-shard {self.rundir} --task 0 "
                              "--ntasks 1 -v' to see why")
        if self.pending or rid is not None:
            self._start(slot)

    def close(self) -> None:
        self.bar.close()
        for s in self.slots.values():
            with contextlib.suppress(OSError):
                s.conn.close()
        for s in self.slots.values():
            s.process.join(timeout=5)
            if s.process.is_alive():
                s.process.kill()
                s.process.join()


def read_records_of(shard: Path) -> list[RunRecord]:
    """Complete records of one shard file (empty list if it does not exist)."""
    from rmsearch.records import read_shard

    return list(read_shard(shard)) if shard.exists() else []


def _safe_start(config: dict[str, Any], run_id: int):
    try:
        return make_start(StartSpec.from_dict(config["start"]), run_id, int(config["seed"]))
    except RMError:
        return None


def prepare_config(rundir: str | os.PathLike, *, potential: str | os.PathLike | None = None,
                   nruns: int | None = None, **options: Any) -> dict[str, Any]:
    """The configuration a launch on ``rundir`` with these options would use (nothing written).

    New run directory: ``potential`` and ``nruns`` are required and ``options`` go to
    :func:`build_config`. Existing one: options left out (None) keep their stored values,
    given ones replace them (giving one of system/composition/molecule replaces the
    stored one); :func:`init_rundir` then checks that nothing that changes results differs.
    """
    rundir = Path(rundir)
    options = {k: v for k, v in options.items() if v is not None}
    if not (rundir / "config.json").exists():
        if potential is None or nruns is None:
            raise RMError(f"{rundir}: new run directory; --potential and --nruns are required")
        return build_config(potential=potential, nruns=nruns, **options)
    old = read_config(rundir)
    if nruns is not None and nruns < int(old["nruns"]):
        raise RMError(f"--nruns {nruns}: {rundir} holds a search of {old['nruns']} runs; nruns may grow on "
                      f"resume, never shrink (leave --nruns out to resume all {old['nruns']})")
    if potential is None and not Path(old["potential"]).is_dir():
        raise RMError(f"{rundir}/config.json: potential directory {old['potential']} no longer "
                      "exists; pass --potential with its new location (same contents)")
    merged = _options_from_config(old)
    if any(k in options for k in ("system", "composition", "molecule")):
        for k in ("system", "composition", "molecule"):
            merged.pop(k)
    merged["relax"].update({k: options.pop(k) for k in RELAX_OPTIONS if k in options})
    merged.update(options)
    return build_config(potential=potential or old["potential"], nruns=nruns or old["nruns"], **merged)


def launch(rundir: str | os.PathLike, *, potential: str | os.PathLike | None = None,
           nruns: int | None = None, workers: int | None = None, progress: bool = True,
           device: str = "cpu", batch: int | None = None, **options: Any) -> dict[str, Any]:
    """Run a search into ``rundir`` with a pool of ``workers`` processes, or resume one.

    ``device`` other than "cpu" ("cuda", "cuda:N") or a ``batch`` size selects the batched
    path instead of the pool: one process relaxes ``batch`` runs at a time in one model
    call (:func:`run_batched`; default batch on a GPU
    :data:`rmsearch.batched.DEFAULT_GPU_BATCH`). Both are execution settings, like
    ``workers``: not stored, free to change on resume.

    New run directory: ``potential`` and ``nruns`` are required; ``options`` are those of
    :func:`build_config` (seed, system/composition/molecule, natoms, spacegroup,
    volume_factor, minsep_factor, fmax, smax_gpa, max_steps, dtype, optimizer, run_timeout_s).
    Existing run directory:
    options left out (None) keep their stored values; given ones must agree with the
    stored search on everything that changes results (RMError otherwise), except
    ``nruns``, which may grow. Only run ids without a record are run.

    Returns :func:`summarize` of this session's runs plus ``total`` (:func:`rundir_status`).
    """
    rundir = Path(rundir)
    config = prepare_config(rundir, potential=potential, nruns=nruns, **options)
    batched = device != "cpu" or batch is not None
    if batched:  # checked before anything is written
        from rmsearch.batched import check_batchable, check_device
        from rmsearch.potentials import load_potential

        check_device(device)
        if workers is not None:
            raise RMError("--workers applies to the worker pool; --device cuda / --batch relax in one process")
        check_batchable(load_potential(config["potential"]), relax_settings_from_dict(config["relax"]))
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise RMError(f"--workers {workers}: must be >= 1")
    rundir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with rundir_lock(rundir):
        config = init_rundir(rundir, config)
        done = {r.run_id for r in read_records(rundir / "shards")}
        todo = [r for r in range(int(config["nruns"])) if r not in done]
        if batched:
            log.info("%s: %d of %d runs to do, batched on %s", rundir, len(todo), config["nruns"], device)
            session_counts = dict(run_batched(rundir, config, todo, device=device, batch=batch,
                                              progress=progress)) if todo else {}
        else:
            log.info("%s: %d of %d runs to do with %d worker(s)", rundir, len(todo), config["nruns"],
                     min(workers, len(todo)))
            pool = _Pool(rundir, config, todo, min(workers, len(todo)), progress) if todo else None
            try:
                if pool is not None:
                    pool.run()
            finally:
                if pool is not None:
                    pool.close()
            session_counts = dict(pool.status_counts) if pool else {}
    summary = {"runs": sum(session_counts.values()), "status_counts": dict(sorted(session_counts.items())),
               "wall_s": round(time.perf_counter() - t0, 3)}
    summary["runs_per_s"] = round(summary["runs"] / summary["wall_s"], 4) if summary["wall_s"] else None
    summary["total"] = rundir_status(rundir)
    return summary


def run_batched(rundir: Path, config: dict[str, Any], todo: list[int], *, device: str = "cpu",
                batch: int | None = None, progress: bool = False) -> collections.Counter:
    """Relax the run ids ``todo`` of ``rundir`` in this process with
    :class:`rmsearch.batched.BatchedRelaxer` (``batch`` runs per model call on ``device``)
    into ``shards/batched.jsonl``; returns the counts per status class.

    Starts and kick-stage generators are those of the pool (rng([seed, r]) and
    rng([seed, r, 1])), records the same fields. ``config["run_timeout_s"]`` limits each
    run's time in flight (status ``timeout``, no restart needed: nothing can hang outside
    the model call). Stops like the pool after :data:`MAX_ERROR_STREAK` errors in a row.
    """
    from tqdm import tqdm

    from rmsearch.batched import DEFAULT_GPU_BATCH, BatchedRelaxer
    from rmsearch.potentials import load_potential

    seed = int(config["seed"])
    spec = StartSpec.from_dict(config["start"])
    batch = DEFAULT_GPU_BATCH if batch is None else batch
    counts: collections.Counter = collections.Counter()
    streak = ErrorStreak()
    starts: dict[int, Any] = {}
    relaxer = BatchedRelaxer(load_potential(config["potential"]), relax_settings_from_dict(config["relax"]),
                             device=device, batch=batch,
                             run_timeout_s=float(config.get("run_timeout_s", DEFAULT_RUN_TIMEOUT_S)))
    writer = ShardWriter(Path(rundir) / "shards" / "batched.jsonl")
    bar = tqdm(total=len(todo), unit="run", disable=not progress, dynamic_ncols=True, smoothing=0.05,
               file=sys.stderr)

    def finished(record: RunRecord) -> None:
        writer.append(record)
        counts[_status_class(record.status)] += 1
        bar.update(1)
        streak.update(record.status)

    def jobs():
        for rid in todo:
            try:
                starts[rid] = make_start(spec, rid, seed)
            except Exception as exc:  # noqa: BLE001 - recorded, as the pool's workers do
                finished(error_record(rid, seed, f"{type(exc).__name__}: {exc}"))
                continue
            yield rid, starts[rid], np.random.default_rng([seed, rid, KICK_STREAM])

    try:
        for rid, outcome in relaxer.irelax(jobs()):
            finished(record_from_outcome(outcome, starts.pop(rid), rid, seed, outcome.wall_s))
    finally:
        bar.close()
        writer.close()
        relaxer.close()
    return counts


def _options_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """build_config keyword arguments that reproduce a stored configuration."""
    start = config["start"]
    relax = dict(config["relax"])
    return {
        "seed": config["seed"], "system": config.get("system"),
        "composition": config.get("composition"), "molecule": config.get("molecule"),
        "natoms": tuple(start["natoms"]), "spacegroup": start.get("spacegroup"),
        "volume_factor": tuple(start["volume_factor"]), "minsep_factor": start["minsep_factor"],
        "relax": relax,
        "run_timeout_s": config.get("run_timeout_s", DEFAULT_RUN_TIMEOUT_S),
    }
