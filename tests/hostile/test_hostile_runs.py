"""Searches and processes under hostile conditions: potential directories with blanks and
non-ASCII names (must work), corrupted potential files (every run fails: non-zero exit),
a resume that would shrink the search, SIGTERM/SIGINT during ``rmdata make`` at seeded
random points (temporaries removed), and the inputs that used to hang."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rmdata

from helpers.hostile import check_ok, check_refused, error_lines, snapshot
from rmsearch.cli import main as rmsearch_main

LAUNCH = ["--nruns", "2", "--system", "C", "--natoms", "2-2", "--workers", "1", "--no-progress"]


@pytest.fixture()
def uf3_copy(tmp_path):
    """The shipped carbon-uf3 potential copied to a folder with a blank and non-ASCII letters."""
    from rmsearch.registry import get_card

    pot = tmp_path / "potentiel é ü" / "carbon uf3"
    shutil.copytree(get_card("carbon-uf3").directory, pot)
    return pot


@pytest.mark.timeout(60)
def test_launch_and_status_work_with_a_potential_path_with_blanks_and_accents(uf3_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = check_ok(rmsearch_main, ["launch", "-o", "run ü", "--potential", uf3_copy, *LAUNCH])
    assert "converged 2" in out
    recs = [json.loads(line) for f in (tmp_path / "run ü" / "shards").glob("*.jsonl")
            for line in f.read_text().splitlines()]
    assert sorted(r["status"] for r in recs) == ["converged", "converged"]
    from helpers.hostile import expected_mode

    assert (tmp_path / "run ü" / "config.json").stat().st_mode & 0o777 == expected_mode()
    # a smaller resume is refused and config.json stays as it was
    config = (tmp_path / "run ü" / "config.json").read_bytes()
    err = check_refused(rmsearch_main, ["launch", "-o", "run ü", "--nruns", "1"], names=("--nruns",),
                        watch=(tmp_path,))
    assert "never shrink" in err
    assert (tmp_path / "run ü" / "config.json").read_bytes() == config
    status = json.loads(check_ok(rmsearch_main, ["status", "run ü", "--json"]))
    assert (status["done"], status["nruns"]) == (2, 2)


@pytest.mark.timeout(60)
def test_fit_native_writes_into_a_folder_with_blanks_and_accents(hostile_inputs, tmp_path, monkeypatch):
    from rmdata.make import make_dataset

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "données ü.xyz"
    make_dataset(data, "diamond", levels=[0, 1, 2], strains=[-0.02, 0.0, 0.02], workers=1)
    out = check_ok(rmsearch_main, ["fit-native", data, "-o", tmp_path / "fit é" / "uf3 ü", "--no-teacher"])
    assert "self-check LAMMPS pair style vs fit" in out
    pot = tmp_path / "fit é" / "uf3 ü"
    check_ok(rmsearch_main, ["launch", "-o", "r", "--potential", pot, *LAUNCH])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_launch_exits_non_zero_when_every_run_failed(damage, uf3_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = uf3_copy / "C.uf3"
    if damage == "garbage":
        table.write_bytes(b"\x00\x01garbage\n" * 10)
    elif damage == "truncated":
        table.write_bytes(table.read_bytes()[:200])
    else:
        table.unlink()
    from helpers.hostile import assert_clean_exit, invoke

    result = invoke(rmsearch_main, ["launch", "-o", "run", "--potential", uf3_copy, *LAUNCH])
    assert_clean_exit(result, damage)
    assert result.exit_code != 0, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and "all 2 runs of this launch failed" in errors[0], result.output


# ------------------------------------------------------------------ processes: signals and hangs

#: About 4 s alone on 2 cores (12 s for six at once): long enough that the signals of the
#: test below, at 1-4 s, land while it runs (with 30 copies, 1 s, most used to arrive late).
COPIES = 200
MAKE = [sys.executable, "-m", "rmdata.cli", "make", "--dataset", "diamond", "--copies", str(COPIES), "-j", "2",
        "-o", "out.xyz"]


def _finish(proc: subprocess.Popen, folder: Path, timeout: float = 30) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang: show where (PYTHONFAULTHANDLER dumps on SIGABRT)
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate()
        pytest.fail(f"{folder.name}: still running {timeout} s after the signal:\n{err.decode()[-6000:]}")
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.timeout(120)
def test_sigterm_and_sigint_during_make_leave_nothing_behind(tmp_path):
    """Six runs in parallel, each signalled at a seeded random moment: either the run
    finished (a complete file) or it stopped cleanly, one error line, no temporary left."""
    rng = np.random.default_rng(20)
    plan = [(sig, float(t)) for sig, t in zip([signal.SIGTERM, signal.SIGINT] * 3, rng.uniform(1.0, 4.0, 6))]
    procs = []
    for k, (sig, delay) in enumerate(plan):
        folder = tmp_path / f"case{k}"
        folder.mkdir()
        procs.append((folder, sig, delay, time.monotonic(),
                      subprocess.Popen(MAKE, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env={**os.environ, "PYTHONFAULTHANDLER": "1"})))
    for folder, sig, delay, start, proc in sorted(procs, key=lambda p: p[2]):
        time.sleep(max(0.0, start + delay - time.monotonic()))
        if proc.poll() is None:
            proc.send_signal(sig)
    interrupted = 0
    for folder, sig, delay, _, proc in procs:
        code, err = _finish(proc, folder)
        assert "Traceback" not in err, err[-2000:]
        files = sorted(p.name for p in folder.iterdir())
        if files == ["out.xyz"]:  # finished before the signal (it may still arrive before exit)
            assert len(rmdata.read(folder / "out.xyz")) == 121 * COPIES
            continue
        interrupted += 1
        assert code != 0 and files == [], (sig, delay, code, files)  # no output, no hidden temporary
        assert len(error_lines(err)) <= 1, err
        if error_lines(err):
            assert "terminated" in err or "interrupted" in err
    assert interrupted >= 3, "most signals must land while make runs"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", ["--rc=1e6", "--strains=-1", "--levels=0,1e9", "--copies=100000000"])
def test_inputs_that_used_to_hang_finish_at_once(option, tmp_path):
    before = snapshot(tmp_path)
    proc = subprocess.run([*MAKE[:-2], "-o", "x.xyz", option], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert len(error_lines(proc.stderr)) == 1 and option.split("=")[0] in proc.stderr
    assert snapshot(tmp_path) == before


def test_readme_states_the_number_of_hostile_cases():
    """README "Failure behaviour" quotes the size of this suite; keep it true."""
    import re

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(root / "tests" / "hostile")], capture_output=True, text=True, timeout=120, cwd=root)
    collected = int(re.search(r"(\d+) tests? collected", proc.stdout).group(1))
    quoted = int(re.search(r"`tests/hostile/` \((\d+) generated cases", (root / "README.md").read_text()).group(1))
    assert quoted == collected >= 800


@pytest.mark.timeout(90)
def test_sigterm_during_launch_keeps_finished_runs_and_leaves_no_temporary(uf3_copy, tmp_path):
    """SIGTERM to a running launch: one error line, exit status 143, no traceback, no hidden
    temporary in the run directory, and the finished runs are kept as readable records."""
    from rmsearch.records import read_records

    cmd = [sys.executable, "-m", "rmsearch.cli", "launch", "-o", "run", "--potential", str(uf3_copy),
           "--nruns", "400", "--system", "C", "--natoms", "4-8", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    run = tmp_path / "run" / "shards"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.stat().st_size for p in run.glob("*.jsonl")):
        time.sleep(0.2)  # wait until runs are being recorded
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc, tmp_path)
    assert code == 143 and "Traceback" not in err, err[-2000:]
    assert len(error_lines(err)) == 1 and "terminated by SIGTERM" in err
    assert not [p for p in (tmp_path / "run").rglob(".*")]
    problems: list[str] = []
    records = read_records(run, problems)
    assert 0 < len(records) < 400
    # a worker stopped mid-append may leave a cut last line, which a resume drops and redoes
    assert all("truncated last record" in p for p in problems), problems
