"""Run a search: ``launch`` into a run directory (worker pool or batched path), status.

Run directory layout (other tools rely on it):

- ``RUNDIR/config.json``: the whole search configuration (:mod:`rmsearch.config`; the
  options are declared in :class:`rmsearch.options.SearchOptions`).
- ``RUNDIR/shards/*.jsonl``: one :class:`rmsearch.records.RunRecord` per line
  (:mod:`rmsearch.shards`): ``local-<k>.jsonl`` from local worker ``k``
  (:mod:`rmsearch.pool`), ``task-<i>.jsonl`` from ``rmsearch run-shard --task i`` (SLURM
  array tasks), ``batched.jsonl`` from the batched path (``launch --device cuda`` /
  ``--batch N``, :func:`run_batched`). A run id is done once its record is in any shard.
- ``RUNDIR/lock``: ``launch`` holds an exclusive ``flock`` on it and writes its pid
  there; ``run-shard`` holds a shared one (:mod:`rmsearch.locks`).
- ``RUNDIR/slurm/``: reserved for :mod:`rmsearch.slurm`.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rmdata.errors import RMError
from rmsearch.config import init_rundir, prepare_config, read_config, relax_settings_from_dict, stored_option
from rmsearch.locks import rundir_lock, running_launch
from rmsearch.pool import WorkerPool, default_workers
from rmsearch.records import (
    RunRecord,
    done_ids,
    error_record,
    is_failure,
    read_records,
    record_from_outcome,
    status_class,
    summarize_records,
)
from rmsearch.shards import KICK_STREAM, ErrorStreak, ShardWriter
from rmsearch.starts import StartSpec, make_start

log = logging.getLogger(__name__)


def launch(rundir: str | os.PathLike, *, potential: str | os.PathLike | None = None,
           nruns: int | None = None, workers: int | None = None, progress: bool = True,
           device: str = "cpu", batch: int | None = None, **options: Any) -> dict[str, Any]:
    """Run a search into ``rundir`` with a pool of ``workers`` processes, or resume one.

    ``device`` other than "cpu" ("cuda", "cuda:N") or a ``batch`` size selects the batched
    path instead of the pool: one process relaxes ``batch`` runs at a time in one model
    call (:func:`run_batched`; default batch on a GPU
    :data:`rmsearch.batched.DEFAULT_GPU_BATCH`). Both are execution settings, like
    ``workers``: not stored, free to change on resume.

    New run directory: ``potential`` and ``nruns`` are required; ``options`` are the fields
    of :class:`rmsearch.options.SearchOptions` (seed, system/composition/molecule, natoms,
    spacegroup, volume_factor, minsep_factor, the relaxation tolerances and method,
    run_timeout_s, ...), as :func:`rmsearch.config.build_config` takes them.
    Existing run directory: options left out (None) keep their stored values; given ones
    must agree with the stored search on everything that changes results (RMError
    otherwise), except ``nruns``, which may grow. Only run ids without a record are run.

    Returns this session's run count, counts per status class, wall time (s) and runs per
    second, plus ``total`` (:func:`rundir_status`).
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
        done = done_ids(rundir / "shards")
        todo = [r for r in range(int(config["nruns"])) if r not in done]
        if batched:
            log.info("%s: %d of %d runs to do, batched on %s", rundir, len(todo), config["nruns"], device)
            session_counts = dict(run_batched(rundir, config, todo, device=device, batch=batch,
                                              progress=progress)) if todo else {}
        else:
            log.info("%s: %d of %d runs to do with %d worker(s)", rundir, len(todo), config["nruns"],
                     min(workers, len(todo)))
            pool = WorkerPool(rundir, config, todo, min(workers, len(todo)), progress) if todo else None
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
    the model call). Stops like the pool after
    :data:`rmsearch.shards.MAX_ERROR_STREAK` errors in a row.
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
                             run_timeout_s=float(stored_option(config, "run_timeout_s")))
    writer = ShardWriter(Path(rundir) / "shards" / "batched.jsonl")
    bar = tqdm(total=len(todo), unit="run", disable=not progress, dynamic_ncols=True, smoothing=0.05,
               file=sys.stderr)

    def finished(record: RunRecord) -> None:
        writer.append(record)
        counts[status_class(record.status)] += 1
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


def rundir_status(rundir: str | os.PathLike) -> dict[str, Any]:
    """Progress of a run directory: ``nruns``, ``done`` (records), ``converged``,
    ``not_converged``, ``failed`` (:data:`rmsearch.records.FAILED_STATUSES` and errors),
    ``remaining``, ``status_counts``, best converged energy per atom (eV/atom),
    ``running`` (lock holder or None) and ``problems`` (unreadable or truncated shard
    lines)."""
    rundir = Path(rundir)
    config = read_config(rundir)
    nruns = int(config["nruns"])
    problems: list[str] = []
    records = [r for r in read_records(rundir / "shards", problems) if 0 <= r.run_id < nruns]
    summary = summarize_records(records, 0.0)
    counts = summary["status_counts"]
    return {
        "rundir": str(rundir),
        "nruns": nruns,
        "done": len(records),
        "converged": counts.get("converged", 0),
        "not_converged": counts.get("not_converged", 0),
        "failed": sum(n for s, n in counts.items() if is_failure(s)),
        "remaining": nruns - len(records),
        "status_counts": counts,
        "best_energy_per_atom": summary["best_energy_per_atom"],
        "best_run_id": summary["best_run_id"],
        "best_formula": summary["best_formula"],
        "running": running_launch(rundir),
        "problems": problems,
    }
