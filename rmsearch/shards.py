"""One shard of a run directory: its writer, the worker that fills it, a ``run-shard`` task.

``RUNDIR/shards/*.jsonl`` hold one :class:`rmsearch.records.RunRecord` per line:
``local-<k>.jsonl`` from local worker ``k`` (:mod:`rmsearch.pool`), ``task-<i>.jsonl``
from ``rmsearch run-shard --task i`` (SLURM array tasks, :func:`run_shard`),
``batched.jsonl`` from the batched path (:func:`rmsearch.runner.run_batched`). A run id is
done once its record is in any shard. Every writer holds an exclusive ``flock`` on its
shard while it appends, and repairs a truncated last line (a crash mid-write) before its
first append, so a shard never has two writers and a cut record is simply redone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rmdata.errors import RMError
from rmdata.utils import pin_threads
from rmsearch.config import read_config, relax_settings_from_dict, stored_option
from rmsearch.locks import rundir_lock
from rmsearch.records import (
    ERROR,
    RunRecord,
    append_record,
    done_ids,
    error_record,
    record_from_outcome,
    repair_shard,
    summarize_records,
)
from rmsearch.starts import StartSpec, make_start

log = logging.getLogger(__name__)

#: Exit code of a worker process whose run hit the run timeout (the run is recorded).
EXIT_TIMEOUT = 75
#: Third entry of the kick stage's seed sequence, rng([seed, run_id, KICK_STREAM]); the
#: start uses rng([seed, run_id]).
KICK_STREAM = 1
#: Runs in a row ending in ``error: ...`` after which a launch or task stops: one fault
#: (a broken potential or install) must not use up the whole search as error records.
MAX_ERROR_STREAK = 20


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


class ErrorStreak:
    """Stops a search when :data:`MAX_ERROR_STREAK` runs in a row end in ``error: ...``."""

    def __init__(self, limit: int | None = None):
        self.limit = MAX_ERROR_STREAK if limit is None else limit
        self.count = 0

    def update(self, status: str) -> None:
        """Count one finished run; raise RMError when the streak reaches the limit."""
        self.count = self.count + 1 if status.startswith(ERROR) else 0
        if self.count >= self.limit:
            raise RMError(f"{self.count} runs in a row failed, the last with '{status[:200]}'; "
                          "stopped so that one fault does not use up the search. Fix the cause, then "
                          "resume (the failed runs keep their error records; use a new -o directory "
                          "to run them again)")


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
                 on_timeout: Callable[[], None] | None = None):
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
    record yet, into ``shards/task-<task>.jsonl``. Returns a summary
    (:func:`rmsearch.records.summarize_records`).

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
        done = done_ids(rundir / "shards")
        todo = [r for r in range(task, int(config["nruns"]), ntasks) if r not in done]
        log.info("task %d/%d: %d runs to do", task, ntasks, len(todo))
        records = []
        if run_timeout_s is None and restart_argv is not None:
            run_timeout_s = float(stored_option(config, "run_timeout_s"))
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
    return summarize_records(records, time.perf_counter() - t0)


def _restart(argv: list[str]) -> None:
    """Replace this process by ``argv`` (after a run timeout; never returns)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
