"""The package version (one home: ``rmdata.__version__``, ``rmsearch.__version__`` and every
provenance record read it from here)."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:
    __version__ = _distribution_version("response-matching")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.1.0"

__all__ = ["__version__"]
