"""rmsearch: structure search with a response-matched potential in LAMMPS.

Export a trained potential to LAMMPS, relax thousands of random starts in parallel,
then deduplicate, cluster, score and report the results.

The Python API (:mod:`rmsearch.api`; imported on first use, so ``import rmsearch`` stays
light for the command-line tools)::

    >>> import rmsearch
    >>> run = rmsearch.search("model:carbon-uf3", system="C", natoms="2-8", nruns=20,
    ...                       out="c_run")                                     # doctest: +SKIP
    >>> best = run.analyze().clusters[0]                                      # doctest: +SKIP

``export``, ``search`` (-> ``RunDirectory``), ``analyze`` (-> ``AnalysisResult``),
``relax_atoms``, ``iter_relax``, ``relax_file`` and the ASE calculator ``Calculator``.
The relaxation function is ``relax_atoms`` because ``rmsearch.relax`` is the module of the
relax protocol (see :mod:`rmsearch.api`). Examples: ``docs/api.md``.
"""

from rmdata.lazy import lazy_attributes

#: The public API: name -> module, imported on first use (PEP 562).
_API = {"__version__": "rmdata.version", "export": "rmsearch.api", "search": "rmsearch.api",
        "analyze": "rmsearch.api", "RunDirectory": "rmsearch.api", "AnalysisResult": "rmsearch.api",
        "relax_atoms": "rmsearch.api", "iter_relax": "rmsearch.api", "relax_file": "rmsearch.api",
        "Calculator": "rmsearch.calculator"}

__all__ = list(_API)

__getattr__, __dir__ = lazy_attributes(__name__, _API)
