"""The local worker pool of ``rmsearch launch``: worker processes, their run ids, their deaths.

:class:`WorkerPool` runs the missing run ids in ``workers`` processes (spawn context;
each pins torch/BLAS to one thread before importing torch, builds one ``Relaxer`` and
keeps it: :class:`rmsearch.shards.ShardWorker` into ``shards/local-<k>.jsonl``). Run ids
are handed out one at a time over a private pipe per worker, so the parent always knows
which run each worker holds. A worker that dies is replaced and its in-flight run redone;
a run that killed :data:`MAX_DEATHS_PER_RUN` workers is recorded as ``error: worker
process died ...``. Workers ask the kernel to kill them when the parent dies
(``PR_SET_PDEATHSIG``), so a killed ``launch`` leaves no orphan writing to a shard.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import sys
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from rmdata.errors import RMError
from rmdata.utils import pin_threads
from rmsearch.config import stored_option
from rmsearch.records import error_record, read_shard_records, status_class
from rmsearch.shards import EXIT_TIMEOUT, ErrorStreak, ShardWorker, ShardWriter
from rmsearch.starts import StartSpec, make_start

log = logging.getLogger(__name__)

#: Deaths of worker processes on one run before it is recorded as an error.
MAX_DEATHS_PER_RUN = 2
#: Worker deaths before any run was handed out, after which launch gives up.
MAX_STARTUP_DEATHS = 5


def default_workers() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. under SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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
    except (EOFError, ConnectionError, KeyboardInterrupt):
        pass  # the parent is gone or stopping (a pipe it closed unread answers ECONNRESET)
    finally:
        worker.close()


@dataclasses.dataclass
class _Slot:
    process: Any
    conn: Any
    run_id: int | None = None
    stopping: bool = False
    ready: bool = False  # the worker has started (a later "fatal" is a run-time fault)


class WorkerPool:
    """The parent's side of the local worker pool: ``workers`` processes relax the run ids
    ``todo`` of ``rundir``; :meth:`run` until all are recorded, then :meth:`close`.
    ``status_counts`` counts the finished runs per status class."""

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
                                      float(stored_option(self.config, "run_timeout_s"))),
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
        self.status_counts[status_class(status)] += 1
        conv = self.status_counts.get("converged", 0)
        self.bar.set_postfix_str(f"converged {conv}, other {sum(self.status_counts.values()) - conv}",
                                 refresh=False)
        self.bar.update(1)
        self.streak.update(status)

    def run(self) -> None:
        """Hand out run ids and replace dead workers until every run is recorded."""
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
                recorded = {r.run_id: r for r in read_shard_records(shard)}
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
                              f"{s.process.exitcode}); run 'rmsearch -v run-shard {self.rundir} --task 0 "
                              "--ntasks 1' to see why")
        if self.pending or rid is not None:
            self._start(slot)

    def close(self) -> None:
        """Stop the remaining workers (kill those that do not end within 5 s)."""
        self.bar.close()
        for s in self.slots.values():
            with contextlib.suppress(OSError):
                s.conn.close()
        for s in self.slots.values():
            s.process.join(timeout=5)
            if s.process.is_alive():
                s.process.kill()
                s.process.join()


def _safe_start(config: dict[str, Any], run_id: int):
    try:
        return make_start(StartSpec.from_dict(config["start"]), run_id, int(config["seed"]))
    except RMError:
        return None
