"""A Li-S search of 200 runs as a 4-task job array through a real SLURM: submit, scancel,
resume; every run id ends up recorded exactly once.

The potential (``lis_potential`` in conftest.py) is a LAMMPS-native Lennard-Jones pair
style: cheap, as the test is about orchestration; the engine's physics is tested elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from rmsearch import slurm, slurm_options
from rmsearch.cli import main
from rmsearch.config import build_config, init_rundir
from rmsearch.records import STATUSES, read_shard

NRUNS = 200
NTASKS = 4
FMAX = 0.1  # eV/A


def _shard_ids(rundir: Path) -> dict[str, list[int]]:
    """Run ids per shard file, every complete line counted (duplicates kept)."""
    return {p.name: [r.run_id for r in read_shard(p)] for p in sorted((rundir / "shards").glob("*.jsonl"))}


def _wait(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _scancel(job_id: str, task: int) -> None:
    res = subprocess.run(["scancel", f"{job_id}_{task}"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_lis_search_array_cancel_and_resume(slurm_cluster, lis_potential, tmp_path):
    rundir = tmp_path / "lis"
    config = build_config(potential=lis_potential, nruns=NRUNS, seed=7, system="Li-S", natoms="2-4",
                          fmax=FMAX, max_steps=100)
    init_rundir(rundir, config)
    opts = slurm_options.SlurmOptions(array_size=NTASKS, partition=slurm_cluster.partition, time="00:10:00")

    # the script passes sbatch's own check before anything is submitted
    slurm.submit_slurm(rundir, opts, dry_run=True)
    assert "to start at" in slurm.sbatch_test_only(rundir / "slurm" / "job.sh")

    job1 = slurm.submit_slurm(rundir, opts)
    assert job1 is not None and job1.isdigit()
    jobs = json.loads((rundir / "slurm" / "jobs.json").read_text())
    assert jobs["ntasks"] == NTASKS and jobs["submissions"][0]["tasks"] == [0, 1, 2, 3]

    # two cores: tasks 0 and 1 run, 2 and 3 wait. Cancel task 3 while pending and task 1
    # once it has written a few records (part of its 50 runs done).
    _scancel(job1, 3)
    shard1 = rundir / "shards" / "task-1.jsonl"
    _wait(lambda: shard1.exists() and len(list(read_shard(shard1))) >= 5, 120, "task 1 to record 5 runs")
    _scancel(job1, 1)
    cancelled_at = len(list(read_shard(shard1)))
    assert cancelled_at < NRUNS // NTASKS, "task 1 finished before it could be cancelled"

    statuses = _wait(lambda: (s := slurm.slurm_status(rundir)) and not any(slurm.is_active(t.state) for t in s)
                     and s, 180, "the first array to finish")
    by_task = {s.task: s for s in statuses}
    assert by_task[0].state == by_task[2].state == "COMPLETED"
    assert by_task[1].state == "CANCELLED"
    assert by_task[3].state in ("CANCELLED", slurm.UNKNOWN)  # a cancelled pending task may be forgotten
    assert by_task[0].n_missing == by_task[2].n_missing == 0
    assert 0 < by_task[1].n_missing < 50 and by_task[3].n_missing == 50
    assert slurm.slurm_task_states(rundir) == {s.task: s.state for s in statuses}
    # the fallback for jobs squeue has forgotten (no accounting here) reads the same states
    jobcomp = slurm._jobcomp_states([job1])
    assert {t: jobcomp[(job1, t)][0] for t in (0, 1, 2)} == {0: "COMPLETED", 1: "CANCELLED", 2: "COMPLETED"}
    before = {name: (rundir / "shards" / name).read_bytes() for name in ("task-0.jsonl", "task-2.jsonl")}
    missing_before = {t: set(ids) for t, ids in slurm.missing_by_task(rundir, NTASKS).items()}

    # resume: only tasks 1 and 3 are resubmitted, as one array --array=1,3
    res = CliRunner().invoke(main, ["slurm", "submit", str(rundir)])
    assert res.exit_code == 0, res.output
    jobs = json.loads((rundir / "slurm" / "jobs.json").read_text())
    job2 = jobs["submissions"][-1]["job_id"]
    assert job2 != job1 and jobs["submissions"][-1]["tasks"] == [1, 3]
    assert "--array=1,3" in jobs["submissions"][-1]["command"]
    assert jobs["submissions"][-1]["missing_runs"] == len(missing_before[1]) + 50
    # a second resume while they are queued or running submits nothing
    assert slurm.submit_slurm(rundir, slurm.resolve_options(rundir)) is None
    assert len(json.loads((rundir / "slurm" / "jobs.json").read_text())["submissions"]) == 2

    slurm.wait_for_tasks(rundir, timeout=180, poll=0.5)
    states = slurm.slurm_task_states(rundir)
    assert states == {t: "COMPLETED" for t in range(NTASKS)}, states

    # every run id recorded exactly once, in the shard of its own task; nothing lost
    ids = _shard_ids(rundir)
    counts = Counter(i for lst in ids.values() for i in lst)
    assert sorted(counts) == list(range(NRUNS)) and max(counts.values()) == 1
    for name, lst in ids.items():
        task = int(name.removeprefix("task-").removesuffix(".jsonl"))
        assert all(i % NTASKS == task for i in lst)
    # the resumed task 1 ran only the ids it was missing, after the ones it kept
    assert set(ids["task-1.jsonl"][len(ids["task-1.jsonl"]) - len(missing_before[1]):]) == missing_before[1]
    assert all((rundir / "shards" / n).read_bytes() == b for n, b in before.items())  # untouched

    records = [r for p in sorted((rundir / "shards").glob("*.jsonl")) for r in read_shard(p)]
    assert all(r.status in STATUSES for r in records), Counter(r.status for r in records)
    conv = [r for r in records if r.converged]
    assert len(conv) > NRUNS // 2 and all(r.fmax < FMAX for r in conv)

    out = CliRunner().invoke(main, ["slurm", "status", str(rundir)])
    assert out.exit_code == 0 and f"total: {NRUNS}/{NRUNS} runs done, 0 task(s) active" in out.output
    logs = sorted(p.name for p in (rundir / "slurm" / "logs").glob("*.out"))
    assert f"task-1.job-{job2}.out" in logs and f"task-0.job-{job1}.out" in logs
