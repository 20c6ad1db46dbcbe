"""Site profiles, option validation and the generated job script (checked by a real sbatch)."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from rmdata.errors import RMError
from rmsearch import slurm, slurm_options
from rmsearch.cli import main


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    """An empty user config dir via $RMSEARCH_CONFIG."""
    home = tmp_path / "config"
    monkeypatch.setenv("RMSEARCH_CONFIG", str(home))
    return home


@pytest.fixture
def rundir(tmp_path):
    """A minimal run directory: 10 run ids, no records yet."""
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "config.json").write_text(json.dumps({"nruns": 10}))
    return rd


def test_profile_formats_agree(config_home):
    profiles = config_home / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "a.toml").write_text('partition = "cpu"\naccount = "chem1"\ntime = "1-00:00:00"\n'
                                     'modules = ["python/3.11", "openmpi"]\n'
                                     'setup = ["source $HOME/rm/bin/activate"]\nextra_sbatch = "--qos=low"\n')
    (profiles / "b.json").write_text(json.dumps({"partition": "cpu", "account": "chem1", "time": "1-00:00:00",
                                                 "modules": ["python/3.11", "openmpi"],
                                                 "setup": ["source $HOME/rm/bin/activate"],
                                                 "extra_sbatch": ["--qos=low"]}))
    (profiles / "c.yaml").write_text("partition: cpu\naccount: chem1\ntime: 1-00:00:00\n"
                                     "modules: [python/3.11, openmpi]\nsetup:\n - source $HOME/rm/bin/activate\n"
                                     "extra_sbatch: [--qos=low]\n")
    a, b, c = (slurm_options.load_profile(n) for n in "abc")
    assert a == b == c
    assert a.modules == ["python/3.11", "openmpi"] and a.extra_sbatch == ["--qos=low"]
    assert slurm_options.load_profile(profiles / "a.toml") == a  # a path works as well as a name


@pytest.mark.parametrize("text, field", [
    ('partion = "cpu"\n', "partion"),
    ('time = "two hours"\n', "time"),
    ('mem = "lots"\n', "mem"),
    ('cpus_per_task = 0\n', "cpus_per_task"),
    ('partition = "a b"\n', "partition"),
    ('extra_sbatch = ["--array=0-3"]\n', "--array"),
    ('extra_sbatch = ["qos=low"]\n', "extra_sbatch"),
    ('modules = [1, 2]\n', "modules"),
    ('partition = \n', "not a valid TOML"),
])
def test_bad_profile_is_one_line_error_naming_file_and_field(config_home, text, field):
    (config_home / "profiles").mkdir(parents=True)
    path = config_home / "profiles" / "bad.toml"
    path.write_text(text)
    with pytest.raises(RMError) as err:
        slurm_options.load_profile("bad")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and field in msg


def test_missing_profile_lists_what_exists(config_home):
    (config_home / "profiles").mkdir(parents=True)
    (config_home / "profiles" / "site.toml").write_text('partition = "cpu"\n')
    with pytest.raises(RMError, match=r"no profile 'other'.*have: site"):
        slurm_options.load_profile("other")


def test_profile_command_roundtrip(config_home):
    res = CliRunner().invoke(main, ["slurm", "profile", "mysite", "--partition", "cpu", "--account", "x1",
                                    "--module", "python/3.11", "--setup", "source /opt/rm/bin/activate",
                                    "--extra-sbatch", "--qos=low --constraint haswell", "--launcher", "srun"])
    assert res.exit_code == 0, res.output
    opts = slurm_options.load_profile("mysite")
    assert (opts.partition, opts.account, opts.launcher) == ("cpu", "x1", "srun")
    assert opts.extra_sbatch == ["--qos=low", "--constraint haswell"]
    assert opts.setup == ["source /opt/rm/bin/activate"]
    res = CliRunner().invoke(main, ["slurm", "profile", "bad", "--time", "soon"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1


def test_split_sbatch_and_array_spec():
    assert slurm_options.split_sbatch_options('--qos=debug --constraint "a&b" -C x') == \
        ["--qos=debug", "--constraint a&b", "-C x"]
    with pytest.raises(RMError):
        slurm_options.split_sbatch_options("qos=debug")
    assert slurm.array_spec([7, 0, 1, 2, 5, 8]) == "0-2,5,7-8"
    assert slurm.array_spec([3], max_concurrent=2) == "3%2"
    assert slurm.default_array_size(10) == 1 and slurm.default_array_size(250) == 3
    assert slurm.default_array_size(10**7) == slurm.MAX_DEFAULT_ARRAY


def test_job_script_contents(rundir):
    opts = slurm_options.SlurmOptions(partition="cpu", account="chem1", time="30", mem="2G", max_concurrent=2,
                              modules=["python/3.11"], setup=["source /opt/rm/bin/activate"],
                              extra_sbatch=["--qos=low"], launcher="srun --cpu-bind=cores")
    text = slurm.render_job_script(rundir, 4, opts)
    lines = text.splitlines()
    sb = [ln for ln in lines if ln.startswith("#SBATCH")]
    for want in ("--array=0-3%2", "--partition=cpu", "--account=chem1", "--time=30", "--mem=2G",
                 "--qos=low", "--cpus-per-task=1", f"--output={rundir.resolve()}/slurm/logs/task-%a.job-%A.out"):
        assert f"#SBATCH {want}" in sb
    body = lines.index("set -eo pipefail")
    assert max(lines.index(s) for s in sb) < body  # sbatch ignores #SBATCH after the first command
    assert "module load python/3.11" in lines and "source /opt/rm/bin/activate" in lines
    assert "OMP_NUM_THREADS=1" in text
    last = lines[-1]
    assert last.startswith("srun --cpu-bind=cores ") and "run-shard" in last and "--ntasks 4" in last
    assert '--task "$SLURM_ARRAY_TASK_ID"' in last
    res = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, check=False)
    assert res.returncode == 0, res.stderr


def test_job_script_refuses_paths_sbatch_cannot_take(tmp_path):
    bad = tmp_path / "my run"
    bad.mkdir()
    with pytest.raises(RMError, match="without spaces"):
        slurm.render_job_script(bad, 2, slurm_options.SlurmOptions())


def test_array_size_checks(rundir):
    with pytest.raises(RMError, match="larger than the number of runs"):
        slurm.submit_slurm(rundir, slurm_options.SlurmOptions(array_size=11), dry_run=True)
    with pytest.raises(RMError, match="not a run directory"):
        slurm.submit_slurm(rundir.parent, slurm_options.SlurmOptions(), dry_run=True)


def test_dry_run_writes_script_accepted_by_sbatch_test_only(slurm_cluster, rundir, config_home):
    (config_home / "profiles").mkdir(parents=True)
    (config_home / "profiles" / "local.toml").write_text(
        f'partition = "{slurm_cluster.partition}"\ntime = "00:10:00"\nmem = "500M"\n')
    res = CliRunner().invoke(main, ["slurm", "submit", str(rundir), "--profile", "local",
                                    "--array-size", "3", "--dry-run"])
    assert res.exit_code == 0, res.output
    script = rundir / "slurm" / "job.sh"
    assert script.is_file() and (rundir / "slurm" / "logs").is_dir()
    assert not (rundir / "slurm" / "jobs.json").exists()  # nothing submitted
    stored = json.loads((rundir / "slurm" / "options.json").read_text())
    assert stored["partition"] == slurm_cluster.partition and stored["array_size"] == 3
    msg = slurm.sbatch_test_only(script)
    assert "to start at" in msg and slurm_cluster.partition in msg
    # the check can fail: a partition the cluster lacks is rejected
    with pytest.raises(RMError, match="sbatch"):
        slurm.sbatch_test_only(script, ["--partition=nosuchpartition"])
    res = CliRunner().invoke(main, ["slurm", "check", str(rundir)])
    assert res.exit_code == 0 and "to start at" in res.output


def test_prepare_search_then_dry_run_submit(lis_potential, tmp_path):
    """What 'launch --scheduler slurm --dry-run' does: a run directory, a script, no job."""
    rd = tmp_path / "search"
    with pytest.raises(RMError, match="--potential and --nruns are required"):
        slurm.prepare_search(rd, potential=lis_potential)
    config = slurm.prepare_search(rd, potential=lis_potential, nruns=30, system="Li-S", natoms="2-4",
                                  seed=3, fmax=0.2, max_steps=None)
    assert config["nruns"] == 30 and config["relax"]["fmax"] == 0.2
    stored = (rd / "config.json").read_bytes()
    assert slurm.prepare_search(rd)["nruns"] == 30 and (rd / "config.json").read_bytes() == stored
    assert slurm.prepare_search(rd, nruns=40)["nruns"] == 40  # a search may grow
    with pytest.raises(RMError, match="'seed'"):
        slurm.prepare_search(rd, seed=4)  # but not change what its runs are
    assert slurm.submit_slurm(rd, slurm_options.SlurmOptions(), dry_run=True) is None
    assert "--array=0-0" in (rd / "slurm" / "job.sh").read_text()  # 40 runs: one task by default
    assert json.loads((rd / "config.json").read_text())["nruns"] == 40


def test_status_of_unsubmitted_run_dir_is_a_clear_error(rundir):
    res = CliRunner().invoke(main, ["slurm", "status", str(rundir)])
    assert res.exit_code == 2 and "never submitted to SLURM" in res.output and res.output.count("\n") == 1
