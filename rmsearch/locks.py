"""Run-directory locks: who may run on a run directory at the same time.

``RUNDIR/lock``: ``launch`` holds an exclusive ``flock`` on it and writes its pid there;
``run-shard`` holds a shared one (many array tasks at once, but never together with a
local launch). Each shard writer also holds an exclusive ``flock`` on its own shard
(:class:`rmsearch.shards.ShardWriter`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from rmdata.errors import RMError


@contextlib.contextmanager
def rundir_lock(rundir: str | os.PathLike, *, shared: bool = False) -> Iterator[Path]:
    """Hold ``RUNDIR/lock``: exclusive for ``launch`` (records the pid), shared for
    ``run-shard`` tasks. Raises RMError naming the holder when it is taken."""
    path = Path(rundir) / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RMError(f"{rundir}: in use by {lock_holder(path)}; wait for it to finish or "
                          f"stop it (lock file {path})") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {os.uname().nodename}\n".encode(), 0)
            os.fsync(fd)
        yield path
    finally:
        os.close(fd)  # releases the flock


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds a run-directory lock, in words (``launch`` pid, or run-shard tasks)."""
    try:
        pid_text, host = (Path(path).read_text().split() + ["", ""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return "run-shard tasks (SLURM array?)"
    if host == os.uname().nodename:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "run-shard tasks (SLURM array?)"
        except PermissionError:
            pass
    return f"another launch (pid {pid} on {host})"


def running_launch(rundir: str | os.PathLike) -> str | None:
    """The holder of the run directory's lock, or None if nobody runs on it."""
    path = Path(rundir) / "lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return lock_holder(path)
    finally:
        os.close(fd)
    return None
