"""rmsearch: structure search with a response-matched potential in LAMMPS.

Export a trained potential to LAMMPS, relax thousands of random starts in parallel,
then deduplicate, cluster, score and report the results.
"""

from rmdata import __version__

__all__ = ["__version__"]
