"""rmsearch launch under SIGKILL at random points: no run lost, none doubled, none truncated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
NRUNS = 40


def _launch(rundir: Path, pot: Path | None) -> list[str]:
    args = [sys.executable, "-c", "from rmsearch.cli import main; main()", "launch", "-o", str(rundir),
            "--no-progress", "--json"]
    if pot is not None:
        # ASE's FIRE (~3x the force calls of the default) keeps each run long enough that the
        # kill points fall between records, not all into the workers' start-up
        args += ["--system", "Li-S", "--natoms", "2-8", "--nruns", str(NRUNS), "--potential", str(pot),
                 "--workers", "2", "--seed", "7", "--optimizer", "fire"]
    return args


def _lines(rundir: Path) -> list[bytes]:
    return [ln for shard in sorted((rundir / "shards").glob("*.jsonl")) for ln in shard.read_bytes().split(b"\n")
            if ln.strip()]


def test_sigkill_at_ten_random_points_then_resume_equals_uninterrupted(lj_potential, tmp_path):
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(_launch(ref, lj_potential), env=ENV, check=True, capture_output=True, timeout=600)
    full = time.perf_counter() - t0
    expected = {json.loads(ln)["run_id"]: json.loads(ln) for ln in _lines(ref)}
    assert sorted(expected) == list(range(NRUNS))

    rundir = tmp_path / "run"
    rng = np.random.default_rng(2024)
    # Kill points are random points in the search's progress, not in wall time: the workers' start-up
    # (imports, LAMMPS) dominates a short search, so wall-time points can all land before the first
    # record. Each kill waits for a random record count, then a random fraction of a run's duration,
    # so that it also hits runs in flight.
    per_run_s = full / NRUNS
    counts = []
    for k, target in enumerate(np.sort(rng.choice(np.arange(1, NRUNS - 4), size=10, replace=False))):
        proc = subprocess.Popen(_launch(rundir, lj_potential if k == 0 else None), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.perf_counter() + 300
        while proc.poll() is None and len(_lines(rundir)) < target and time.perf_counter() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 2.0 * per_run_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.3)  # workers notice their parent died and exit
        counts.append(len(_lines(rundir)))
    subprocess.run(_launch(rundir, None), env=ENV, check=True, capture_output=True, timeout=600)

    lines = _lines(rundir)
    records = [json.loads(ln) for ln in lines]  # every stored line is a complete record
    ids = [r["run_id"] for r in records]
    assert sorted(ids) == list(range(NRUNS)), "runs lost or doubled"
    for rec in records:  # the same results as the uninterrupted search, run by run
        ref_rec = expected[rec["run_id"]]
        assert rec["status"] == ref_rec["status"]
        assert rec["energy_per_atom"] == ref_rec["energy_per_atom"]
        assert rec["positions"] == ref_rec["positions"]
    assert counts == sorted(counts) and counts[0] > 0  # progress was kept across kills
    assert counts[-1] < NRUNS, "the last kill came after the search had finished"


def test_full_disk_stops_launch_with_one_line_and_resume_completes(lj_potential, tmp_path):
    fs = tmp_path / "small"
    fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(fs)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs: {mounted.stderr.strip()}"
    try:
        rundir = fs / "run"
        proc = subprocess.run(_launch(rundir, lj_potential), env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "no space left on device" in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        kept = len(_lines(rundir))
        assert 0 < kept < NRUNS
        subprocess.run(["mount", "-o", "remount,size=4m", str(fs)], check=True)
        subprocess.run(_launch(rundir, None), env=ENV, check=True, capture_output=True, timeout=600)
        ids = sorted(json.loads(ln)["run_id"] for ln in _lines(rundir))  # no cut line remains
        assert ids == list(range(NRUNS))
    finally:
        subprocess.run(["umount", str(fs)], check=False)
