"""rmdata: response-matched training sets for machine-learned interatomic potentials.

Known stable structures are perturbed and every perturbed frame is labelled with the
response of a harmonic well centred on the original (Response Matching, B. Cheng,
JCTC 2024): forces pull atoms back, stress pulls the cell back.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("response-matching")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.1.0"

from rmdata.errors import RMError  # noqa: E402


def read(path, index=":"):
    """Read an rmdata file (extxyz or HDF5) into ASE ``Atoms`` carrying the labels.

    See :func:`rmdata.io.read`.
    """
    from rmdata.io import read as _read

    return _read(path, index=index)


__all__ = ["RMError", "read", "__version__"]
