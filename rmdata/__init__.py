"""rmdata: response-matched training sets for machine-learned interatomic potentials.

Known stable structures are perturbed and every perturbed frame is labelled with the
response of a harmonic well centred on the original (Response Matching, B. Cheng,
JCTC 2024): forces pull atoms back, stress pulls the cell back.

The Python API (imported on first use, so ``import rmdata`` stays light)::

    >>> import rmdata
    >>> summary = rmdata.make_dataset("diamond.xyz", "diamond", copies=1)   # doctest: +SKIP
    >>> frames = rmdata.read("diamond.xyz")                                 # doctest: +SKIP

See ``docs/api.md``.
"""

from rmdata.errors import RMError
from rmdata.lazy import lazy_attributes

#: Public names defined in submodules, imported on first access (module path by name); even the
#: version (importlib.metadata reads the installed distributions: slow to start).
_LAZY = {"__version__": "rmdata.version", "make_dataset": "rmdata.make", "MakeSummary": "rmdata.make",
         "read": "rmdata.io"}

__all__ = ["RMError", *_LAZY]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
