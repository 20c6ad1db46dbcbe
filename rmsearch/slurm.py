"""Run a search as a SLURM job array: job script, submission, per-task state, resubmission.

A run directory (``RUNDIR/config.json``, written by :func:`rmsearch.config.init_rundir`)
is split into ``ntasks`` shards: array task ``i`` runs ``rmsearch run-shard RUNDIR --task i
--ntasks N``, i.e. the run ids ``r`` with ``r % N == i`` that have no record yet, and
appends its records to ``RUNDIR/shards/task-<i>.jsonl``: the same code path as a local
worker, so ``collect``/``analyze`` work unchanged.

Files under ``RUNDIR/slurm/``:

- ``job.sh``: the batch script (``sbatch job.sh`` submits the whole array by hand);
- ``options.json``: the resolved options (profile + command line), reused on resume;
- ``jobs.json``: ``ntasks`` and every submission (job id, array tasks, sbatch command);
- ``logs/task-<i>.job-<id>.{out,err}``: per-task output.

Per-task scheduler state comes from ``squeue`` while SLURM remembers the job, then from
``sacct`` (sites with accounting), then from the ``jobcomp/filetxt`` log; a task the
scheduler has forgotten is ``UNKNOWN``. Resubmission (:func:`submit_slurm` on a run
directory with earlier jobs) submits only the tasks that still miss run ids and are not
active in the queue (``--array=1,3,7``), so no run id is run twice and none is lost.

The options of a submission and the site profiles they come from (partition, account,
modules, venv activation, extra ``#SBATCH`` lines) are in :mod:`rmsearch.slurm_options`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from rmdata.errors import RMError
from rmdata.utils import atomic_output, write_json_atomic
from rmsearch.config import init_rundir, prepare_config, read_config
from rmsearch.locks import rundir_lock
from rmsearch.records import done_ids
from rmsearch.slurm_options import SlurmOptions, load_profile

log = logging.getLogger(__name__)

#: States after which a task's process is gone (``sacct``/``squeue`` names).
FINAL_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                          "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"})
#: Pseudo states: never submitted, or no longer known to the scheduler.
NOT_SUBMITTED = "NOT_SUBMITTED"
UNKNOWN = "UNKNOWN"
#: Default number of runs per array task when ``array_size`` is not given: each task pays a
#: start-up cost (Python, torch, LAMMPS: seconds) and a queue wait, so tasks should be long.
RUNS_PER_TASK = 100
#: Largest default array (many sites keep SLURM's ``MaxArraySize=1001``).
MAX_DEFAULT_ARRAY = 1000


def _slurm_dir(rundir: Path) -> Path:
    return Path(rundir) / "slurm"


# ----------------------------------------------------------------------- run dir
def n_runs(rundir: str | os.PathLike) -> int:
    """Number of run ids (0 .. n-1) of a run directory, from ``config.json``."""
    config = read_config(rundir, required=())
    for key in ("nruns", "n_runs"):
        if isinstance(config.get(key), int):
            return config[key]
    raise RMError(f"{Path(rundir) / 'config.json'}: field 'nruns' missing; re-create the run directory")


def missing_by_task(rundir: str | os.PathLike, ntasks: int) -> dict[int, list[int]]:
    """Run ids without a record, grouped by the array task that owns them (``id % ntasks``)."""
    done = done_ids(Path(rundir) / "shards")
    out: dict[int, list[int]] = {t: [] for t in range(ntasks)}
    for rid in range(n_runs(rundir)):
        if rid not in done:
            out[rid % ntasks].append(rid)
    return out


def default_array_size(nruns: int) -> int:
    """``ceil(nruns / RUNS_PER_TASK)`` tasks, at least 1, at most ``min(nruns, 1000)``."""
    return max(1, min(math.ceil(nruns / RUNS_PER_TASK), MAX_DEFAULT_ARRAY, nruns))


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RMError(f"{path}: unreadable ({exc}); restore it or remove the slurm/ folder to start over") from exc


def load_jobs(rundir: str | os.PathLike) -> dict[str, Any]:
    """``RUNDIR/slurm/jobs.json``: ``{"ntasks": N, "submissions": [{"job_id", "tasks", ...}]}``."""
    return _read_json(_slurm_dir(Path(rundir)) / "jobs.json", {"ntasks": None, "submissions": []})


def load_options(rundir: str | os.PathLike) -> SlurmOptions | None:
    """The options stored at the last submission, or ``None``."""
    path = _slurm_dir(Path(rundir)) / "options.json"
    data = _read_json(path, None)
    return None if data is None else SlurmOptions.from_dict(data, str(path))


# -------------------------------------------------------------------- job script
def _needs_pythonpath(python: str) -> str | None:
    """The source folder to put on PYTHONPATH if ``python`` cannot import rmsearch without it."""
    import rmsearch

    src = str(Path(rmsearch.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        out = subprocess.run([python, "-c", "import rmsearch, os; print(os.path.realpath(rmsearch.__file__))"],
                             capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return src
    if out.returncode != 0 or not out.stdout.strip().startswith(src + os.sep):
        return src
    return None


def render_job_script(rundir: str | os.PathLike, ntasks: int, options: SlurmOptions) -> str:
    """The text of ``job.sh``: a bash batch script for the whole array ``0..ntasks-1``.

    Task ``$SLURM_ARRAY_TASK_ID`` runs ``run-shard RUNDIR --task i --ntasks N`` with the
    Python of ``options.python`` (default: the current interpreter), one thread per process.
    """
    rundir = Path(rundir).resolve()
    if re.search(r"[\s%'\"\\]", str(rundir)):
        raise RMError(f"{rundir}: SLURM needs a run directory path without spaces, quotes or '%'; "
                      "move it or use a symlink without them")
    python = options.python or sys.executable
    logs = _slurm_dir(rundir) / "logs"
    array = f"0-{ntasks - 1}" + (f"%{options.max_concurrent}" if options.max_concurrent else "")
    sb = [
        f"--job-name={options.job_name or 'rms-' + rundir.name}",
        f"--array={array}",
        f"--output={logs}/task-%a.job-%A.out",
        f"--error={logs}/task-%a.job-%A.err",
        f"--chdir={rundir}",
        "--ntasks=1",
        f"--cpus-per-task={options.cpus_per_task}",
    ]
    for name in ("partition", "account", "qos", "time", "mem"):
        value = getattr(options, name)
        if value is not None:
            sb.append(f"--{name}={value}")
    sb += options.extra_sbatch
    lines = ["#!/bin/bash",
             f"# rmsearch structure search: SLURM job array of {ntasks} task(s) over {rundir}",
             "# Task i runs the run ids r with r % N == i that have no record yet; resubmitting",
             "# a task is safe (done runs are skipped). Written by rmsearch.slurm; edits are overwritten."]
    lines += [f"#SBATCH {opt}" for opt in sb]
    lines += ["", "set -eo pipefail"]
    if options.modules:  # batch shells of some sites lack the module function until profile is read
        lines.append("type module >/dev/null 2>&1 || . /etc/profile")
        lines += [f"module load {m}" for m in options.modules]
    lines += options.setup
    pythonpath = _needs_pythonpath(python)
    lines += ["export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
              "export PYTHONUNBUFFERED=1"]
    if pythonpath:
        lines.append(f"export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}")
    lines += ['echo "rmsearch: task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID} on $(hostname)"',
              (f"{options.launcher + ' ' if options.launcher else ''}{shlex.quote(python)} -c "
               "'from rmsearch.cli import main; main()' "
               f"run-shard {shlex.quote(str(rundir))} --task \"$SLURM_ARRAY_TASK_ID\" --ntasks {ntasks}"),
              ""]
    return "\n".join(lines)


def write_job_script(rundir: str | os.PathLike, ntasks: int, options: SlurmOptions) -> Path:
    """Write ``RUNDIR/slurm/job.sh`` (atomically, executable) and create its log folder."""
    path = _slurm_dir(Path(rundir)) / "job.sh"
    text = render_job_script(rundir, ntasks, options)
    with atomic_output(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
    (_slurm_dir(Path(rundir)) / "logs").mkdir(parents=True, exist_ok=True)
    return path


def array_spec(tasks: list[int], max_concurrent: int | None = None) -> str:
    """Compact ``--array`` value: ``[0,1,2,5,7,8]`` -> ``"0-2,5,7-8"`` (plus ``%M``)."""
    tasks = sorted(set(tasks))
    parts: list[str] = []
    start = prev = tasks[0]
    for t in tasks[1:] + [None]:
        if t is not None and t == prev + 1:
            prev = t
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if t is not None:
            start = prev = t
    return ",".join(parts) + (f"%{max_concurrent}" if max_concurrent else "")


# ----------------------------------------------------------------- SLURM commands
def _slurm(argv: list[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a missing program or (with ``check``) a failure is an RMError."""
    if shutil.which(argv[0]) is None:
        raise RMError(f"'{argv[0]}' not found: SLURM client tools are not installed or not on PATH "
                      "(run on a login node, or use the local launcher)")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RMError(f"'{' '.join(argv)}' did not answer within {timeout:.0f} s; is slurmctld up?") from exc
    if check and out.returncode != 0:
        msg = " ".join((out.stderr or out.stdout).split()) or f"exit status {out.returncode}"
        raise RMError(f"'{' '.join(argv[:2])} ...' failed: {msg}")
    return out


def sbatch_test_only(script: str | os.PathLike, extra_args: list[str] | None = None) -> str:
    """Validate a batch script with ``sbatch --test-only`` (nothing is submitted); return its message."""
    out = _slurm(["sbatch", "--test-only", *(extra_args or []), str(script)])
    return " ".join((out.stderr + out.stdout).split())


def _squeue_states(job_ids: list[str]) -> dict[tuple[str, int], tuple[str, str]]:
    """``{(array_job_id, task): (state, reason)}`` for the tasks squeue still knows."""
    states: dict[tuple[str, int], tuple[str, str]] = {}
    for job in job_ids:  # one call per job: squeue fails outright if any id is unknown
        out = _slurm(["squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%F|%K|%T|%r"], check=False)
        if out.returncode != 0:
            if "Invalid job id" in out.stderr:
                continue  # purged after MinJobAge: try sacct / jobcomp
            raise RMError(f"squeue failed: {' '.join(out.stderr.split())}")
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            states[(parts[0], int(parts[1]))] = (parts[2], parts[3])
    return states


def _sacct_states(job_ids: list[str]) -> dict[tuple[str, int], tuple[str, str]]:
    """States from accounting (sites with slurmdbd); empty where accounting is off."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    out = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"], check=False)
    states: dict[tuple[str, int], tuple[str, str]] = {}
    if out.returncode != 0:
        return states
    for line in out.stdout.splitlines():
        m = re.match(r"^(\d+)_(\d+)\|(\S+)", line.strip())
        if m:
            states[(m.group(1), int(m.group(2)))] = (m.group(3).split()[0], "")
    return states


def _jobcomp_states(job_ids: list[str]) -> dict[tuple[str, int], tuple[str, str]]:
    """States from a ``jobcomp/filetxt`` log, where the site has one and it is readable."""
    out = _slurm(["scontrol", "show", "config"], check=False)
    conf = dict(re.findall(r"^(\S+)\s*=\s*(.*?)\s*$", out.stdout, re.MULTILINE))
    if conf.get("JobCompType") != "jobcomp/filetxt" or not conf.get("JobCompLoc"):
        return {}
    path = Path(conf["JobCompLoc"])
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    wanted = set(job_ids)
    states: dict[tuple[str, int], tuple[str, str]] = {}
    for line in text.splitlines():
        f = dict(re.findall(r"(\w+)=(\S*)", line))
        if f.get("ArrayJobId") in wanted and f.get("ArrayTaskId", "").isdigit():
            states[(f["ArrayJobId"], int(f["ArrayTaskId"]))] = (f.get("JobState", UNKNOWN), "")
    return states


def query_states(job_ids: list[str], wanted: set[tuple[str, int]] | None = None
                 ) -> dict[tuple[str, int], tuple[str, str]]:
    """Per (job, task) ``(state, reason)`` from squeue, then sacct, then the jobcomp log.

    The fallbacks are asked about jobs with a ``wanted`` (job, task) that squeue no longer
    lists (without ``wanted``: jobs squeue does not list at all).
    """
    states = _squeue_states(job_ids)
    if wanted is None:
        forgotten = [j for j in job_ids if not any(k[0] == j for k in states)]
    else:
        forgotten = sorted({j for j, t in wanted if (j, t) not in states}, key=int)
    if forgotten:
        for source in (_sacct_states, _jobcomp_states):
            for key, value in source(forgotten).items():
                states.setdefault(key, value)
    return states


def is_active(state: str) -> bool:
    """Whether a task in this scheduler state may still run or write its shard."""
    return state not in FINAL_STATES and state not in (UNKNOWN, NOT_SUBMITTED)


# -------------------------------------------------------------------- status
@dataclass
class TaskStatus:
    """One array task: scheduler view and shard view."""

    task: int
    job_id: str | None
    state: str
    reason: str
    n_expected: int
    n_missing: int


def _latest_job_per_task(jobs: dict[str, Any]) -> dict[int, str]:
    latest: dict[int, str] = {}
    for sub in jobs.get("submissions", []):
        for t in sub["tasks"]:
            latest[t] = str(sub["job_id"])
    return latest


def _latest_states(latest: dict[int, str]) -> dict[tuple[str, int], tuple[str, str]]:
    """Scheduler states of the latest submission of each task."""
    if not latest:
        return {}
    return query_states(sorted(set(latest.values()), key=int), {(j, t) for t, j in latest.items()})


def slurm_status(rundir: str | os.PathLike) -> list[TaskStatus]:
    """Per-task state from the scheduler and from the shards, for a submitted run directory."""
    rundir = Path(rundir)
    jobs = load_jobs(rundir)
    ntasks = jobs.get("ntasks")
    if not ntasks:
        raise RMError(f"{rundir}: never submitted to SLURM (no slurm/jobs.json); "
                      "use 'rmsearch launch ... --scheduler slurm'")
    latest = _latest_job_per_task(jobs)
    states = _latest_states(latest)
    missing = missing_by_task(rundir, ntasks)
    nruns = n_runs(rundir)
    out = []
    for t in range(ntasks):
        job = latest.get(t)
        state, reason = (NOT_SUBMITTED, "") if job is None else states.get((job, t), (UNKNOWN, ""))
        out.append(TaskStatus(task=t, job_id=job, state=state, reason=reason,
                              n_expected=len(range(t, nruns, ntasks)), n_missing=len(missing[t])))
    return out


def slurm_task_states(rundir: str | os.PathLike) -> dict[int, str]:
    """``{task: scheduler state}`` for the status command (``NOT_SUBMITTED``/``UNKNOWN`` pseudo states)."""
    return {s.task: s.state for s in slurm_status(rundir)}


def format_status(statuses: list[TaskStatus]) -> str:
    """A plain-text table of :func:`slurm_status`, one line per task plus a total."""
    rows = [f"{'task':>5} {'job':>10} {'state':<14} {'done':>11}  reason"]
    for s in statuses:
        done = f"{s.n_expected - s.n_missing}/{s.n_expected}"
        reason = "" if s.reason in ("", "None") else s.reason
        rows.append(f"{s.task:>5} {s.job_id or '-':>10} {s.state:<14} {done:>11}  {reason}")
    total = sum(s.n_expected for s in statuses)
    missing = sum(s.n_missing for s in statuses)
    active = sum(is_active(s.state) for s in statuses)
    rows.append(f"total: {total - missing}/{total} runs done, {active} task(s) active, "
                f"{sum(1 for s in statuses if s.n_missing and not is_active(s.state))} task(s) to resubmit")
    return "\n".join(rows)


# -------------------------------------------------------------------- submit
def resolve_options(rundir: str | os.PathLike, profile: str | None = None,
                    overrides: dict[str, Any] | None = None) -> SlurmOptions:
    """Options for a submission: stored options of the run dir, then the profile, then ``overrides``."""
    opts = load_options(rundir) or SlurmOptions()
    if profile:
        prof = load_profile(profile)
        default = SlurmOptions().to_dict()
        opts = opts.merged({k: v for k, v in prof.to_dict().items() if v != default[k]}, f"profile {profile}")
    return opts.merged(overrides or {})


def submit_slurm(rundir: str | os.PathLike, options: SlurmOptions, *, dry_run: bool = False) -> str | None:
    """Write ``job.sh`` and submit the array tasks that still miss run ids; return the job id.

    First submission: all tasks ``0..N-1``. Later calls (resume) submit only the tasks
    with missing run ids that are not active in the queue, as ``--array=1,3,7``; ``N``
    stays what it was. Returns ``None`` when there is nothing to submit or ``dry_run``.
    """
    rundir = Path(rundir).resolve()
    options.validate()
    n_runs(rundir)  # a clear error before anything is written when RUNDIR is no run directory
    _slurm_dir(rundir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(_slurm_dir(rundir) / ".submit.lock"), timeout=300):
        return _submit_locked(rundir, options, dry_run)


def _submit_locked(rundir: Path, options: SlurmOptions, dry_run: bool) -> str | None:
    jobs = load_jobs(rundir)
    nruns = n_runs(rundir)
    ntasks = jobs.get("ntasks")
    if ntasks and options.array_size and options.array_size != ntasks:
        raise RMError(f"{rundir}: already split into {ntasks} SLURM tasks; resume keeps that number "
                      f"(drop --array-size {options.array_size})")
    ntasks = ntasks or options.array_size or default_array_size(nruns)
    if ntasks > nruns:
        raise RMError(f"--array-size {ntasks} is larger than the number of runs ({nruns}); use at most {nruns}")
    options = dataclasses.replace(options, array_size=ntasks)
    script = write_job_script(rundir, ntasks, options)
    write_json_atomic(_slurm_dir(rundir) / "options.json", options.to_dict())
    missing = missing_by_task(rundir, ntasks)
    todo = [t for t in range(ntasks) if missing[t]]
    latest = _latest_job_per_task(jobs)
    if todo and latest and not dry_run:
        states = _latest_states(latest)
        busy = [t for t in todo if t in latest and is_active(states.get((latest[t], t), (UNKNOWN, ""))[0])]
        if busy:
            log.info("%s: task(s) %s still queued or running; not resubmitted", rundir, array_spec(busy))
        todo = [t for t in todo if t not in busy]
    if dry_run:
        log.info("dry run: wrote %s (%d tasks, %d to submit); not submitted", script, ntasks, len(todo))
        return None
    if not todo:
        log.info("%s: nothing to submit (%d of %d runs missing, all in active tasks)", rundir,
                 sum(len(v) for v in missing.values()), nruns)
        return None
    argv = ["sbatch", "--parsable"]
    if jobs.get("submissions") or len(todo) < ntasks:
        argv.append(f"--array={array_spec(todo, options.max_concurrent)}")
    argv.append(str(script))
    out = _slurm(argv, timeout=120)
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise RMError(f"sbatch printed no job id: {out.stdout.strip()!r} {out.stderr.strip()!r}")
    jobs["ntasks"] = ntasks
    jobs.setdefault("submissions", []).append({
        "job_id": job_id, "tasks": todo, "command": argv, "submitted_unix": round(time.time(), 1),
        "missing_runs": sum(len(missing[t]) for t in todo)})
    write_json_atomic(_slurm_dir(rundir) / "jobs.json", jobs)
    log.info("submitted job %s: %d task(s) of %d (%s)", job_id, len(todo), ntasks, array_spec(todo))
    return job_id


def prepare_search(rundir: str | os.PathLike, *, potential: str | os.PathLike | None = None,
                   nruns: int | None = None, **options: Any) -> dict[str, Any]:
    """Create or update ``RUNDIR/config.json`` as ``rmsearch launch`` does, without running.

    ``options`` are the fields of :class:`rmsearch.options.SearchOptions` (``None`` = not given).
    An existing run directory given no options is left as it is (a plain resubmission,
    allowed while array tasks run); given options are merged with the stored ones and
    must agree on everything that changes results (``nruns`` may grow), under the run
    directory's exclusive lock.
    """
    rundir = Path(rundir)
    options = {k: v for k, v in options.items() if v is not None}
    exists = (rundir / "config.json").exists()
    if exists and potential is None and nruns is None and not options:
        return read_config(rundir)
    config = prepare_config(rundir, potential=potential, nruns=nruns, **options)
    rundir.mkdir(parents=True, exist_ok=True)
    with rundir_lock(rundir):
        return init_rundir(rundir, config)


def cancel_slurm(rundir: str | os.PathLike, tasks: list[int] | None = None) -> list[str]:
    """``scancel`` the active tasks of this run directory (all, or only ``tasks``); return what was cancelled."""
    rundir = Path(rundir)
    jobs = load_jobs(rundir)
    latest = _latest_job_per_task(jobs)
    states = _latest_states(latest)
    targets = [f"{job}_{t}" for t, job in sorted(latest.items())
               if (tasks is None or t in tasks) and is_active(states.get((job, t), (UNKNOWN, ""))[0])]
    if targets:
        _slurm(["scancel", *targets])
    return targets


def wait_for_tasks(rundir: str | os.PathLike, timeout: float, poll: float = 2.0) -> list[TaskStatus]:
    """Poll :func:`slurm_status` until no task is active or ``timeout`` seconds pass; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = slurm_status(rundir)
        if not any(is_active(s.state) for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(poll)
