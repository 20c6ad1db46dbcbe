"""Analysis of a search: collect, validity, dedupe, score, pseudo hull, match, metrics, plots, report.

``analyze(rundir, reference=None, top=20)`` runs all of it; see :mod:`rmsearch.analysis.analyze`.
"""

from rmsearch.analysis.analyze import analyze
from rmsearch.analysis.collect import collect, load_run

__all__ = ["analyze", "collect", "load_run"]
