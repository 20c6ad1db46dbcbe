"""A real single-node SLURM for the tests: private munged, slurmctld and slurmd.

Everything lives under one temporary folder: the munge key and socket, ``slurm.conf``,
state and spool directories, logs and PID files, on free TCP ports, so the cluster is
independent of ``/etc`` and of any other SLURM on the machine. Clients reach it through
``SLURM_CONF``, which the fixture sets for the test session and restores afterwards.
Teardown cancels the cluster's jobs and stops only the three daemons it started, by their
recorded PIDs.

Where SLURM cannot be installed or started the dependent tests fail with the reason
(``tests/helpers/ensure_system_packages.sh`` installs Debian's packages); they never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODE = "rmnode1"
PARTITION = "rmtest"


class SlurmStartError(RuntimeError):
    """SLURM could not be started; the message says why and where the logs are."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """A single-node SLURM cluster run from ``root`` (a private, empty directory)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.jobcomp = self.root / "log" / "jobcomp.txt"
        self.partition = PARTITION
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ---------------------------------------------------------------- set-up
    def _write_munge(self) -> None:
        mdir = self.root / "munge"
        mdir.mkdir(mode=0o700)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    def _node_line(self) -> str:
        """The ``NodeName=`` line from ``slurmd -C`` (this machine's topology)."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30,
                             env=self.env, check=False).stdout
        line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), None)
        if line is None:
            raise SlurmStartError(f"'slurmd -C' printed no NodeName line: {out!r}")
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        fields.pop("NodeName")
        if "RealMemory" in fields:  # leave head room: slurmd drains a node that has less
            fields["RealMemory"] = str(max(int(fields["RealMemory"]) - 512, 256))
        topo = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 {topo} State=UNKNOWN"

    def _write_conf(self) -> None:
        for sub in ("etc", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(mode=0o755)
        (self.root / "etc" / "plugstack.conf").write_text("")
        host = socket.gethostname()
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=rmtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            f"PlugStackConfig={r}/etc/plugstack.conf",
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "MinJobAge=3600",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1",
            "ReturnToService=2",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "KillWait=2",
            "MaxArraySize=100001",
            self._node_line(),
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - kept open by the daemon
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise SlurmStartError(f"{name} exited with status {proc.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 15) -> str:
        """The last lines of a daemon's log files, for error messages."""
        lines: list[str] = []
        for path in sorted((self.root / "log").glob(f"{name}*")):
            lines += [f"[{path.name}] {ln}" for ln in path.read_text(errors="replace").splitlines()[-n:]]
        return " | ".join(lines) or "(no log output)"

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and slurmd and wait until the node is idle."""
        missing = [p for p in PROGRAMS if shutil.which(p) is None]
        if missing:
            raise SlurmStartError(f"SLURM programs not found: {', '.join(missing)}; run "
                                  "tests/helpers/ensure_system_packages.sh (apt-get install slurmctld slurmd "
                                  "slurm-client munge)")
        if len(str(self.munge_socket)) > 100:
            raise SlurmStartError(f"temporary folder path too long for a unix socket: {self.munge_socket}")
        self._write_munge()
        self._write_conf()
        m = self.root / "munge"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={m}/munge.key", f"--log-file={self.root}/log/munged.log",
                               f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed",
                               "--num-threads=2"])
        self._wait(lambda: self.munge_socket.exists(), "munged", "munge socket to appear", timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._ping(), "slurmctld", "slurmctld to answer 'scontrol ping'", timeout)
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(lambda: self.node_state() in {"idle", "mixed", "allocated"}, "slurmd",
                   f"node {NODE} to become idle", timeout)

    def _wait(self, ok, name: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(name)
            if ok():
                return
            time.sleep(0.2)
        raise SlurmStartError(f"timed out after {timeout:.0f} s waiting for {what}: {self.log_tail(name)}")

    def _ping(self) -> bool:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=self.env,
                             timeout=20, check=False)
        return "UP" in out.stdout

    def node_state(self) -> str:
        """The node state as ``sinfo`` reports it (``idle``, ``down*``, ...), or '' on error."""
        out = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], capture_output=True, text=True,
                             env=self.env, timeout=20, check=False)
        return out.stdout.strip()

    # -------------------------------------------------------------- teardown
    def cancel_all(self, timeout: float = 30.0) -> None:
        """Cancel every job of this cluster and wait until none is running."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        subprocess.run(["scancel", "--partition", PARTITION], env=self.env, timeout=20, check=False,
                       capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i"], capture_output=True,
                                 text=True, env=self.env, timeout=20, check=False).stdout
            if not out.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel jobs, then stop slurmd, slurmctld and munged (only the processes started here)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM; ``SLURM_CONF`` points at it for the whole session.

    Fails (never skips) with the reason when SLURM cannot be started.
    """
    root = tmp_path_factory.mktemp("slurm")
    cluster = LocalSlurm(root)
    old = os.environ.get("SLURM_CONF")
    problem = None
    try:
        cluster.start()
    except (SlurmStartError, OSError, subprocess.SubprocessError) as exc:
        problem = f"cannot start a local SLURM: {exc}"
    if problem is not None:
        cluster.stop()
        pytest.fail(problem, pytrace=False)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        cluster.stop()


@pytest.fixture(scope="session")
def lis_potential(tmp_path_factory) -> Path:
    """A Li-S potential directory with a LAMMPS-native pair style (no model file).

    One Lennard-Jones parameter set for all pairs (eps 0.1 eV, sigma 2.6 A, cutoff 5 A):
    ``lammps_inputs/pair.in`` repeats its placeholders in a comment, so a multi-line
    ``pair_coeff`` list would leak commands out of that comment.
    """
    pot = tmp_path_factory.mktemp("lis_lj")
    (pot / "potential.json").write_text(json.dumps({
        "backend": "lammps-native", "elements": ["Li", "S"], "cutoff": 5.0,
        "pair_style": "lj/cut 5.0", "pair_coeff": ["* * 0.1 2.6"], "callback": None,
        "volumes": {"Li": 18.0, "S": 25.0}}))
    return pot
