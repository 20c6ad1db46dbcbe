"""Small shared helpers: atomic file output, provenance, thread pinning."""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rmdata.errors import RMError

log = logging.getLogger(__name__)


def _temp_stem(name: str) -> str:
    """The hidden temporary's stem for the file ``name``: the name itself while short, else a
    16-character hash of it, so the temporary's name stays within the file-name limit."""
    if len(os.fsencode(name)) <= 100:
        return name
    return "rm" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def finish_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by ``mkstemp`` (0600) or ``mkdtemp`` (0700) the mode a plain
    ``open``/``mkdir`` would: 0666 (0777 for a folder) less the umask."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    On any exception (SIGINT, and SIGTERM in the command-line tools, included) the
    temporary file is removed and ``path`` is left as it was, so a crash, a full disk or
    bad input never leaves a half-written output behind. The temporary name
    (``.NAME.PID.*``, NAME shortened to a hash when long) carries the writer's pid, so
    the leftovers of a process killed with SIGKILL are recognised and removed by the
    next writer. The output gets the usual permissions (0666 less the umask).
    """
    path = Path(path)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _discard(None, created)
        raise RMError(f"{path}: cannot create the folder {path.parent} ({exc.strerror or exc}); "
                      "choose another location") from exc
    remove_stale_temporaries(path)
    suffix = suffix or path.suffix or ".tmp"
    if len(os.fsencode(suffix)) > 16:
        suffix = ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_temp_stem(path.name)}.{os.getpid()}.", suffix=suffix,
                                   dir=path.parent)
    except OSError as exc:
        _discard(None, created)
        if exc.errno == errno.ENOSPC:
            raise RMError(f"{path}: no space left on device; free some space and run again "
                          "(previous outputs were left intact)") from exc
        raise RMError(f"{path}: cannot create a file in {path.parent} ({exc.strerror or exc}); "
                      "choose another location") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            finish_permissions(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as exc:
        _discard(tmp_path, created)
        if exc.errno == errno.ENOSPC:
            raise RMError(f"{path}: no space left on device; free some space and run again "
                          "(previous outputs were left intact)") from exc
        raise
    except BaseException:
        _discard(tmp_path, created)
        raise


def _discard(tmp: Path | None, created: list[Path]) -> None:
    """Remove a failed writer's temporary and the (still empty) folders made for its output."""
    if tmp is not None:
        tmp.unlink(missing_ok=True)
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporaries of ``path`` left by writers that no longer run; return them."""
    path = Path(path)
    stem = _temp_stem(path.name)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(stem)}.*"):
        pid = tmp.name[len(stem) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it survives a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def range_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """A range as text: ``[0, 3]``, ``(0, 1e4]``, ``>= 1``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "any finite number"


def check_finite(value: float, name: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is finite and inside the range, else a one-line RMError naming ``name``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RMError(f"{name} {value!r}: not a number; give a finite number "
                      f"({range_text(low, high, low_open, high_open)})") from None
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise RMError(f"{name} {value}: must be a finite number {range_text(low, high, low_open, high_open)}")
    return x


def pin_threads(n: int = 1) -> None:
    """Limit OpenMP, BLAS and torch to ``n`` threads in this process.

    Default threading on small machines was measured 10-50x slower for the small
    matrices of structure search; parallelise with processes instead. torch is pinned
    if it is already imported; call this again after importing it.

    It also asks MKL (torch's CPU BLAS) for results that do not depend on the memory
    alignment of its arrays (``MKL_CBWR=AUTO,STRICT``, unless the variable is set): MKL's
    fastest code path otherwise rounds a float32 product differently with the address
    of its input, so a relaxation's result depended on what its worker process had
    allocated before it, i.e. on the number of workers. Measured on molecule searches:
    same speed (README, "Same seed, same records", lists the other sources removed). MKL
    reads the variable once, so this must run before torch's first matrix product (worker
    processes call it first thing).
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    torch = sys.modules.get("torch")  # never import torch just to pin it (2 s)
    if torch is not None:
        torch.set_num_threads(n)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(n)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the source tree this package runs from, if it is a checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def provenance(config: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """Provenance record for an output file: package version, git commit, config and its hash, seed.

    Deliberately free of timestamps and host names so that the same inputs and seed give
    identical bytes.
    """
    from rmdata.version import __version__

    return {
        "package": "response-matching",
        "version": __version__,
        "git_commit": git_commit(),
        "config": config,
        "config_hash": config_hash(config),
        "seed": seed,
    }


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: The signals a command turns into a clean stop (rmdata.cliutils.RMGroup).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_quietly(signum, _frame):
    raise SystemExit(128 + signum)


def _unblock_then(initializer, *args) -> None:
    # A forked worker inherits the command's handlers, whose exception a pool worker would
    # print with a traceback ("Process ForkPoolWorker-2: ..."), e.g. when the parent's
    # clean-up terminates the pool while this worker is still starting. SystemExit leaves
    # a worker silently and still runs its ``finally`` blocks (temporaries removed).
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_quietly)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if initializer is not None:
        initializer(*args)


def worker_pool(workers: int, initializer=None, initargs: tuple = ()):
    """A ``multiprocessing`` pool (fork where available) that a stop signal cannot tear.

    A SIGINT/SIGTERM that lands while the pool forks would run the command's handler inside
    Python's after-fork hooks (printed as "Exception ignored" with a traceback, then lost)
    or between two forks (workers left running, holding the caller's pipes). So, while the
    pool starts, both signals are blocked in this thread (the workers inherit the mask) and
    recorded rather than handled (another thread may receive them); once the pool exists the
    caller's handlers are back and a recorded signal is raised again, after the pool is
    terminated. The workers leave quietly on either signal (``SystemExit``, no traceback)
    and unblock both before ``initializer(*initargs)``.
    """
    import multiprocessing as mp
    import threading

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pending: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                    for sig in STOP_SIGNALS}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pool = ctx.Pool(workers, initializer=_unblock_then, initargs=(initializer, *initargs))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if pending:
        try:
            signal.raise_signal(pending[0])
        except BaseException:
            pool.terminate()
            pool.join()
            raise
    return pool
