"""Faults inside a search: every run gets its status, the pool keeps going, the summary counts.

The potentials are LAMMPS-native ``lepton`` expressions built to fail in known ways:
NaN energies at short range, a purely repulsive pair that blows the cell up, and a step
limit too small to converge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmsearch.records import read_records
from rmsearch.runner import launch

LJ = "4*0.05*((2.2/r)^12-(2.2/r)^6)"


def _potential(folder: Path, expression: str, cutoff: float = 5.0) -> Path:
    folder.mkdir()
    (folder / "potential.json").write_text(json.dumps({
        "backend": "lepton-test", "elements": ["Li", "S"], "cutoff": cutoff, "pair_style": f"lepton {cutoff}",
        "pair_coeff": [f'* * "{expression}"'], "callback": None, "volumes": {"Li": 14.0, "S": 14.0}}))
    return folder


def _search(tmp_path: Path, name: str, pot: Path, nruns: int = 16, **options) -> dict:
    # no core-repulsion overlay: it is a lepton pair style too, and the faults must come from
    # the potential alone
    summary = launch(tmp_path / name, potential=pot, nruns=nruns, workers=2, progress=False, system="Li-S",
                     natoms=(2, 6), seed=1, relax={"core_repulsion": None}, **options)
    records = read_records(tmp_path / name / "shards")
    assert sorted(r.run_id for r in records) == list(range(nruns))  # every run has exactly one record
    counted = {}
    for r in records:
        key = r.status if not r.status.startswith("error") else "error"
        counted[key] = counted.get(key, 0) + 1
    assert summary["total"]["done"] == nruns and summary["total"]["remaining"] == 0
    return {"summary": summary, "records": records, "counted": counted}


def test_nan_runs_are_recorded_and_the_others_converge(tmp_path):
    # 1e-9 sqrt(r - 2.1) is NaN for pairs closer than 2.1 A: starts with such a pair give NaN
    pot = _potential(tmp_path / "nanpot", f"{LJ} + 1e-9*sqrt(r-2.1)")
    out = _search(tmp_path, "nan", pot, minsep_factor=0.7)
    assert out["counted"].get("nan", 0) >= 1, out["counted"]
    assert out["counted"].get("converged", 0) >= 1, out["counted"]
    assert out["summary"]["status_counts"] == out["counted"]
    for r in out["records"]:
        if r.status == "nan":
            assert r.n_force_calls >= 1  # recorded with what it got, not dropped


def test_exploding_cells_are_stopped_and_counted(tmp_path):
    # long-ranged repulsion only: the cell keeps growing past 10x its start volume
    pot = _potential(tmp_path / "reppot", "1.0*(2.5/r)^2", cutoff=12.0)
    out = _search(tmp_path, "boom", pot, nruns=8)
    assert out["counted"] == {"exploded": 8}, out["counted"]
    assert out["summary"]["status_counts"] == {"exploded": 8}


def test_step_limit_is_not_converged(tmp_path):
    pot = _potential(tmp_path / "ljpot", LJ)
    out = _search(tmp_path, "short", pot, nruns=8, max_steps=3)
    assert out["counted"] == {"not_converged": 8}, out["counted"]
    assert all(r.n_force_calls == 3 for r in out["records"])


@pytest.mark.parametrize("field", ["n_force_calls", "wall_s"])
def test_fault_records_carry_bookkeeping(tmp_path, field):
    pot = _potential(tmp_path / "nanpot2", f"{LJ} + 1e-9*sqrt(r-2.1)")
    out = _search(tmp_path, "nan2", pot, nruns=6)
    assert all(getattr(r, field) >= 0 for r in out["records"])


def test_runs_past_the_run_timeout_are_recorded_and_the_pool_goes_on(tmp_path):
    # fmax 1e-30 eV/A is out of reach: every relaxation would go on for 1e9 force calls, as a
    # run stuck inside LAMMPS would; the watchdog records it and the worker is replaced
    pot = _potential(tmp_path / "ljpot", LJ)
    out = _search(tmp_path, "slow", pot, nruns=3, fmax=1e-30, max_steps=10**9, run_timeout_s=1.0)
    assert out["counted"] == {"timeout": 3}, out["counted"]
    assert out["summary"]["status_counts"] == {"timeout": 3}
    for r in out["records"]:
        assert r.wall_s >= 1.0 and "run timeout 1 s" in r.extra["message"]
        assert len(r.numbers) > 0  # the start is kept as the structure


def test_run_shard_restarts_itself_after_a_timeout(tmp_path):
    import subprocess
    import sys

    from rmsearch.config import build_config, init_rundir

    pot = _potential(tmp_path / "ljpot", LJ)
    rundir = tmp_path / "task"
    init_rundir(rundir, build_config(potential=pot, nruns=3, seed=1, system="Li-S", natoms=(2, 4),
                                     max_steps=10**9, relax={"core_repulsion": None, "fmax": 1e-30},
                                     run_timeout_s=1.0))
    res = subprocess.run([sys.executable, "-c", "from rmsearch.cli import main; main()", "run-shard",
                          str(rundir), "--task", "0", "--ntasks", "1"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    records = read_records(rundir / "shards")
    assert sorted(r.run_id for r in records) == [0, 1, 2]  # each exactly once, none lost
    assert {r.status for r in records} == {"timeout"}
    assert res.stderr.count("recorded as timeout") == 3
