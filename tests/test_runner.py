"""Runner: SIGKILL and resume, worker death, lock, config checks, run-shard, status, errors.

Most tests use a LAMMPS-native Lennard-Jones potential directory (``callback: null``, the
same code path as any native backend) so that a relaxation takes ~0.2 s; one test runs
``launch`` with the session's MACE model exported by ``rmsearch export``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rmdata.errors import RMError
from rmsearch.records import read_records
from rmsearch.config import build_config, init_rundir
from rmsearch.locks import rundir_lock
from rmsearch.runner import launch, rundir_status
from rmsearch.shards import run_shard

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rmsearch.cli import main; main()", *args]


def _raw_lines(rundir: Path) -> list[dict]:
    """Every line of every shard parsed as JSON; fails on a truncated or broken line."""
    out = []
    for shard in sorted((rundir / "shards").glob("*.jsonl")):
        data = shard.read_bytes()
        assert not data or data.endswith(b"\n"), f"{shard} ends with a truncated record"
        out += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return out


def _n_records(rundir: Path) -> int:
    shard_dir = rundir / "shards"
    if not shard_dir.is_dir():
        return 0
    return sum(p.read_bytes().count(b"\n") for p in shard_dir.glob("*.jsonl"))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _is_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"spawn_main" in cmd


def _wait_for_records(rundir: Path, proc: subprocess.Popen, n: int, timeout: float = 120) -> None:
    t0 = time.time()
    while _n_records(rundir) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no records appeared"
        time.sleep(0.05)


def test_sigkill_mid_run_then_relaunch_gives_exactly_nruns(lj_potential, tmp_path):
    rng = np.random.default_rng(4)
    rundir = tmp_path / "run"
    nruns = 2000  # lj/cut runs take ~1 ms: a search of 30 could end before the kill
    args = _cli("launch", "--system", "Li-S", "--natoms", "2-8", "--nruns", str(nruns), "--potential",
                str(lj_potential), "--workers", "2", "--seed", "3", "--no-progress", "-o", str(rundir))
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_records(rundir, proc, int(rng.integers(3, 8)))
        time.sleep(float(rng.uniform(0.0, 0.5)))
        workers = [p for p in _children(proc.pid) if _is_worker(p)]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10  # the workers die with their parent (PR_SET_PDEATHSIG)
    while any(Path(f"/proc/{p}").exists() and _is_worker(p) for p in workers):
        assert time.time() < deadline, "orphan workers survived the killed launch"
        time.sleep(0.05)
    before = {r["run_id"]: r for r in _raw_lines(rundir)}
    assert 0 < len(before) < nruns
    # a crash in the middle of a write leaves a cut line: it must be dropped and redone
    with open(rundir / "shards" / "local-0.jsonl", "ab") as fh:
        fh.write(b'{"run_id": 39, "seed": 3, "status": "conv')
    status = rundir_status(rundir)
    assert status["done"] == len(before) and status["remaining"] == nruns - len(before)
    assert status["running"] is None and status["problems"]

    out = subprocess.run(_cli("launch", "-o", str(rundir), "--no-progress", "--json"), check=False,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["runs"] == nruns - len(before)  # only the missing ids ran
    lines = _raw_lines(rundir)
    ids = [r["run_id"] for r in lines]
    assert len(ids) == nruns and sorted(ids) == list(range(nruns))  # exactly once each
    after = {r["run_id"]: r for r in lines}
    for rid, rec in before.items():  # finished runs were kept, not redone
        assert after[rid] == rec
    # a run is reproducible: its start and relaxation depend only on (seed, run id)
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer
    from rmsearch.config import read_config, relax_settings_from_dict
    from rmsearch.starts import StartSpec, make_start

    config = read_config(rundir)
    rid = min(before)
    with Relaxer(load_potential(lj_potential), relax_settings_from_dict(config["relax"])) as relaxer:
        again = relaxer.relax(make_start(StartSpec.from_dict(config["start"]), rid, 3))
    assert again.energy_per_atom == pytest.approx(after[rid]["energy_per_atom"], abs=1e-12)
    assert summary["total"]["done"] == nruns and summary["total"]["remaining"] == 0
    assert summary["total"]["status_counts"].get("converged", 0) >= nruns // 2

    # resume again: nothing to do; more runs: only the new ids
    again = launch(rundir, progress=False)
    assert again["runs"] == 0
    more = launch(rundir, nruns=nruns + 3, workers=1, progress=False)
    assert more["runs"] == 3
    assert sorted(r["run_id"] for r in _raw_lines(rundir)) == list(range(nruns + 3))


def test_dead_worker_is_replaced_and_its_run_redone(lj_potential, tmp_path):
    rundir = tmp_path / "run"
    nruns = 16
    proc = subprocess.Popen(_cli("launch", "--composition", "LiS", "--natoms", "2-6", "--nruns",
                                 str(nruns), "--potential", str(lj_potential), "--workers", "2",
                                 "--no-progress", "-o", str(rundir)),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(rundir, proc, 3)
        victim = next(p for p in _children(proc.pid) if _is_worker(p))
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "died" in err  # the parent says so
    ids = sorted(r["run_id"] for r in _raw_lines(rundir))
    assert ids == list(range(nruns))
    assert f"{nruns}/{nruns} done" in out


def test_lock_refuses_a_second_launch_naming_the_pid(lj_potential, tmp_path):
    rundir = tmp_path / "run"
    config = build_config(potential=lj_potential, nruns=4, system="Li-S", natoms="2-4")
    init_rundir(rundir, config)
    with rundir_lock(rundir):
        out = subprocess.run(_cli("launch", "-o", str(rundir), "--no-progress"), check=False, env=ENV,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2
        err = out.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err
        assert f"pid {os.getpid()}" in err
        assert rundir_status(rundir)["running"].startswith(f"another launch (pid {os.getpid()}")
        with pytest.raises(RMError, match=f"pid {os.getpid()}"):
            run_shard(rundir, 0, 2)  # a SLURM task cannot run beside a local launch
    assert rundir_status(rundir)["running"] is None
    assert _n_records(rundir) == 0


def test_resume_refuses_a_different_search(lj_potential, tmp_path):
    rundir = tmp_path / "run"
    init_rundir(rundir, build_config(potential=lj_potential, nruns=4, seed=1, system="Li-S"))
    with pytest.raises(RMError, match="'seed'"):
        launch(rundir, seed=2, progress=False)
    with pytest.raises(RMError, match="'start'"):
        launch(rundir, composition="Li2S", progress=False)
    with pytest.raises(RMError, match="'relax'"):
        launch(rundir, fmax=0.05, progress=False)
    with pytest.raises(RMError, match="'relax'"):
        launch(rundir, dtype="float64", progress=False)
    changed = tmp_path / "pot2"
    changed.mkdir()
    meta = json.loads((lj_potential / "potential.json").read_text())
    meta["pair_coeff"] = ["* * 0.06 2.2"]
    (changed / "potential.json").write_text(json.dumps(meta))
    with pytest.raises(RMError, match="'potential_sha256'"):
        launch(rundir, potential=changed, progress=False)
    assert _n_records(rundir) == 0


def test_run_shard_partition_status_and_errors(lj_potential, tmp_path, monkeypatch):
    """run_shard runs its ids only; a relaxer that raises gives 'error: ...' and the rest go on."""
    from rmsearch.relax import Relaxer

    rundir = tmp_path / "run"
    init_rundir(rundir, build_config(potential=lj_potential, nruns=12, seed=5, system="Li-S", natoms="2-6"))
    real_relax = Relaxer.relax
    calls = Counter()

    def flaky(self, atoms, rng=None):
        calls["n"] += 1
        if calls["n"] % 3 == 2:
            raise RuntimeError("injected failure")
        return real_relax(self, atoms, rng=rng)

    monkeypatch.setattr(Relaxer, "relax", flaky)
    s0 = run_shard(rundir, 0, 3)
    assert s0["runs"] == 4
    recs = read_records(rundir / "shards")
    assert [r.run_id for r in recs] == [0, 3, 6, 9]
    assert (rundir / "shards" / "task-0.jsonl").exists()
    errors = [r for r in recs if r.status.startswith("error")]
    assert [r.run_id for r in errors] == [3]
    assert errors[0].status == "error: RuntimeError: injected failure"
    assert len(errors[0].numbers) == len(errors[0].positions) > 0  # the start is kept
    assert all(not r.status.startswith("error: RuntimeError") for r in recs if r not in errors)
    monkeypatch.setattr(Relaxer, "relax", real_relax)
    assert run_shard(rundir, 0, 3)["runs"] == 0  # nothing run twice
    run_shard(rundir, 2, 3)
    recs = read_records(rundir / "shards")
    assert sorted(r.run_id for r in recs) == [0, 2, 3, 5, 6, 8, 9, 11]
    counts = Counter("error" if r.status.startswith("error") else r.status for r in recs)
    st = rundir_status(rundir)
    assert st["done"] == 8 and st["remaining"] == 4
    assert st["status_counts"] == dict(counts) and counts["error"] >= 1
    assert st["failed"] == sum(n for k, n in counts.items() if k not in ("converged", "not_converged"))
    assert st["converged"] == counts["converged"] >= 4
    best = min(r.energy_per_atom for r in read_records(rundir / "shards") if r.status == "converged")
    assert st["best_energy_per_atom"] == pytest.approx(best)
    # the CLI prints the same numbers
    out = subprocess.run(_cli("status", str(rundir), "--json"), check=False, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["done"] == 8


def test_a_systematic_fault_stops_the_search(lj_potential, tmp_path, monkeypatch):
    """When every run fails the same way, the task stops after MAX_ERROR_STREAK runs."""
    from rmsearch import shards
    from rmsearch.relax import Relaxer

    def broken(self, atoms, rng=None):
        raise KeyError("neighbor_style")

    monkeypatch.setattr(Relaxer, "relax", broken)
    monkeypatch.setattr(shards, "MAX_ERROR_STREAK", 4)
    rundir = tmp_path / "run"
    init_rundir(rundir, build_config(potential=lj_potential, nruns=30, system="Li-S", natoms="2-4"))
    with pytest.raises(RMError, match="4 runs in a row failed.*KeyError"):
        run_shard(rundir, 0, 1)
    assert rundir_status(rundir)["done"] == 4


def test_records_carry_results_and_start_information(lj_potential, tmp_path):
    rundir = tmp_path / "run"
    init_rundir(rundir, build_config(potential=lj_potential, nruns=3, seed=2, composition="Li2S",
                                     natoms="3-6", spacegroup="random", fmax=0.02))
    run_shard(rundir, 0, 1)
    from ase.units import GPa

    from rmsearch.starts import StartSpec, make_start

    config = json.loads((rundir / "config.json").read_text())
    spec = StartSpec.from_dict(config["start"])
    recs = read_records(rundir / "shards")
    assert len(recs) == 3 and any(r.status == "converged" for r in recs)
    for rec in recs:
        start = make_start(spec, rec.run_id, 2)
        assert rec.seed == 2 and rec.formula == start.get_chemical_formula()
        assert rec.spacegroup_start == start.info["spacegroup_start"]
        assert rec.extra["start_kind"] == start.info["start_kind"]
        if rec.status != "converged":  # the relaxer's own failure statuses are tested elsewhere
            continue
        assert rec.fmax < 0.02
        assert abs(rec.pressure_gpa) < 0.1 + 1e-9
        assert rec.pressure_gpa == pytest.approx(-np.mean(rec.stress[:3]) / GPa)
        atoms = rec.to_atoms()
        assert rec.volume_per_atom == pytest.approx(atoms.get_volume() / len(atoms))
        assert rec.energy_per_atom == pytest.approx(rec.energy / len(atoms))
        assert rec.n_force_calls >= rec.n_steps > 0 and rec.wall_s > 0


def test_molecule_search_records_non_periodic_structures(lj_potential, tmp_path):
    rundir = tmp_path / "run"
    init_rundir(rundir, build_config(potential=lj_potential, nruns=2, seed=0, molecule="Li2S3"))
    run_shard(rundir, 0, 1)
    recs = read_records(rundir / "shards")
    assert len(recs) == 2
    for rec in recs:
        assert rec.formula == "Li2S3" and not any(rec.pbc)
        assert rec.status in ("converged", "lost_atoms") and np.isnan(rec.volume_per_atom)


def test_launch_with_slurm_scheduler_writes_a_job_array(lj_potential, tmp_path):
    """--scheduler slurm --dry-run: the run directory and RUNDIR/slurm/job.sh, no job, no runs."""
    from click.testing import CliRunner

    from rmsearch.cli import main

    rundir = tmp_path / "run"
    res = CliRunner().invoke(main, ["launch", "--scheduler", "slurm", "--dry-run", "--array-size", "3",
                                    "--system", "Li-S", "--nruns", "9", "--potential", str(lj_potential),
                                    "-o", str(rundir)])
    assert res.exit_code == 0, res.output
    script = (rundir / "slurm" / "job.sh").read_text()
    assert "--array=0-2" in script and "run-shard" in script
    assert json.loads((rundir / "config.json").read_text())["nruns"] == 9
    assert _n_records(rundir) == 0
    res = CliRunner().invoke(main, ["launch", "--partition", "x", "-o", str(rundir)])
    assert res.exit_code == 2 and "--partition applies to --scheduler slurm only" in res.output


def test_bad_input_is_one_line_error(lj_potential, tmp_path):
    out = subprocess.run(_cli("launch", "--system", "Li-Fe", "--nruns", "3", "--potential", str(lj_potential),
                              "-o", str(tmp_path / "r")), check=False, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "Fe" in out.stderr
    with pytest.raises(RMError, match="--potential and --nruns are required"):
        launch(tmp_path / "new", progress=False)
    with pytest.raises(RMError, match="not a run directory"):
        rundir_status(tmp_path)


@pytest.mark.slow
def test_launch_with_exported_mace_model(diamond_model, tmp_path):
    """The real pipeline: the session's MACE model exported (its self-check is tested in
    test_export.py), 2 carbon runs in a worker process through the mace callback backend
    (the pool itself is tested above with the cheaper LJ potential)."""
    from rmsearch.potentials import export_potential

    pot = export_potential(diamond_model, tmp_path / "pot", verify=False)
    summary = launch(tmp_path / "run", potential=pot.directory, nruns=2, workers=1,
                     composition="C", natoms="8", max_steps=150, progress=False)
    assert summary["runs"] == 2 and summary["total"]["done"] == 2
    recs = read_records(tmp_path / "run" / "shards")
    assert {r.run_id for r in recs} == {0, 1}
    assert {p.name for p in (tmp_path / "run" / "shards").iterdir()} == {"local-0.jsonl"}
    assert all(r.status in ("converged", "not_converged") for r in recs)
    for r in recs:
        assert np.isfinite(r.energy_per_atom) and 0 < r.n_force_calls <= 150
        assert 0 < r.extra["model_time_s"] < r.wall_s


_HISTORY_PROBE = """
import json, sys
from rmdata.utils import pin_threads
pin_threads(1)  # as a pool worker does, before torch is used
from rmsearch.shards import ShardWorker
rundir, name, *history = sys.argv[1:]
worker = ShardWorker(rundir, name)
rec = [worker.run_one(int(run_id)) for run_id in history][-1]
worker.close()
print(json.dumps([rec.status, rec.energy, rec.n_force_calls, rec.positions]))
"""


def test_a_molecule_run_does_not_depend_on_the_run_before_it(tmp_path):
    """A worker reuses one LAMMPS instance for runs of one composition. With a triclinic,
    shrink-wrapped box LAMMPS mapped each run's first positions through the previous run's
    box (fractional coordinates), so run 2 of a float32 C3H7NO search ended 1.2e-4 A
    elsewhere when run 1 had come before it in the same worker. Now the record is the same
    bit for bit. Each history runs in a fresh process, set up as a pool worker is."""
    from rmsearch.registry import model_directory

    init_rundir(tmp_path / "run", build_config(potential=model_directory("molecules-mace"), nruns=4, seed=0,
                                               molecule="C3H7NO", fmax=0.001, kick=0.75, kick_fmax=0.0002,
                                               max_steps=3000, dtype="float32"))
    results = []
    for history in (["2"], ["1", "2"]):
        proc = subprocess.run([sys.executable, "-c", _HISTORY_PROBE, str(tmp_path / "run"),
                               f"probe-{len(history)}", *history], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    alone, after = results
    assert alone[0] == after[0] == "converged"
    assert alone[1:3] == after[1:3]
    assert alone[3] == after[3]


def test_mace_molecule_search_is_the_same_with_one_or_two_workers(tmp_path):
    """A run's record is a function of the search and its run id, not of the worker count:
    the paper's molecule protocol with the shipped float32 MACE gives bit-identical
    energies, force-call counts and structures with one worker and with two (it did not
    while TorchScript re-optimised its graph after the first calls, MKL's float32 paths
    depended on the memory alignment of their inputs, and LAMMPS mapped a molecule's
    positions through the previous run's box: the test above)."""
    from rmsearch.registry import model_directory

    pot = model_directory("molecules-mace")
    records = {}
    for workers in (1, 2):
        launch(tmp_path / f"w{workers}", potential=pot, nruns=4, workers=workers, molecule="C3H7NO", seed=0,
               fmax=0.001, kick=0.75, kick_fmax=0.0002, max_steps=3000, progress=False)
        records[workers] = {r.run_id: r for r in read_records(tmp_path / f"w{workers}" / "shards")}
    assert sorted(records[1]) == sorted(records[2]) == [0, 1, 2, 3]
    for run_id, one in records[1].items():
        two = records[2][run_id]
        assert (one.status, one.energy, one.n_force_calls) == (two.status, two.energy, two.n_force_calls), run_id
        assert one.positions == two.positions, run_id
