"""rmsearch: structure search with a response-matched potential in LAMMPS.

Export a trained potential to LAMMPS, relax thousands of random starts in parallel,
then deduplicate, cluster, score and report the results.
"""

from rmdata.version import __version__

#: The public API, imported on first use (``import rmsearch`` stays light for the CLI).
_API = {"relax_atoms": "rmsearch.api", "iter_relax": "rmsearch.api", "relax_file": "rmsearch.api",
        "Calculator": "rmsearch.calculator"}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rmsearch' has no attribute {name!r}")
