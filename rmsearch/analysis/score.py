"""Score clusters: energy per atom, pressure, volume, space group, hit count.

Space groups come from spglib at three distance tolerances (``symprec`` 1e-3, 1e-2 and
1e-1 A): a structure relaxed with loose force tolerances often shows its symmetry only
at the looser settings, so all three are reported. Units: eV/atom, GPa (positive =
compressed), A^3/atom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from rmsearch.analysis.dedupe import Cluster
from rmsearch.records import RunRecord
from rmsearch.symmetry import REPORT_SYMPRECS, spacegroup


@dataclass
class ClusterScore:
    """One ranked cluster. ``e_hull``/``e_ex`` (eV/atom) are set when a hull was built."""

    cluster_id: int
    formula: str
    natoms: int
    representative: int
    hits: int
    members: list[int]
    energy_per_atom: float
    pressure_gpa: float
    volume_per_atom: float
    spacegroups: dict[str, list[Any]] = field(default_factory=dict)  # symprec -> [number, symbol]
    e_ex: float | None = None
    e_hull: float | None = None
    snap: dict[str, Any] | None = None  # symmetry snapping (rmsearch.analysis.snap): status, energy, spacegroups

    @property
    def spacegroup_number(self) -> int:
        """Space-group number at symprec 1e-2 A (the one shown in plots and the database)."""
        return int(self.spacegroups.get("0.01", [0])[0])

    @property
    def spacegroup_symbol(self) -> str:
        return str(self.spacegroups.get("0.01", [0, ""])[1])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_clusters(clusters: list[Cluster], records: dict[int, RunRecord], workers: int = 1) -> list[ClusterScore]:
    """Scores of ``clusters`` in their given order; ``cluster_id`` is the position in that order.

    ``workers`` > 1 finds the space groups (three spglib calls per cluster) in that many processes.
    """
    raws = [_raw(records[c.representative]) for c in clusters]
    if workers > 1 and len(raws) > 256:
        from concurrent.futures import ProcessPoolExecutor

        size = -(-len(raws) // (4 * workers))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            groups = [g for part in pool.map(_spacegroups, [raws[i:i + size] for i in range(0, len(raws), size)])
                      for g in part]
    else:
        groups = _spacegroups(raws)
    scores = []
    for k, (c, sgs) in enumerate(zip(clusters, groups)):
        rec = records[c.representative]
        scores.append(ClusterScore(cluster_id=k, formula=c.formula, natoms=c.natoms,
                                   representative=c.representative, hits=c.hits, members=list(c.members),
                                   energy_per_atom=float(rec.energy_per_atom),
                                   pressure_gpa=float(rec.pressure_gpa),
                                   volume_per_atom=float(rec.volume_per_atom), spacegroups=sgs))
    return scores


def _raw(rec: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, cell, Cartesian positions, pbc) of a record: what a worker needs, cheap to send."""
    return (np.asarray(rec.numbers), np.asarray(rec.cell, dtype=float), np.asarray(rec.positions, dtype=float),
            np.asarray(rec.pbc, dtype=bool))


def _spacegroups(raws: list[tuple[np.ndarray, ...]]) -> list[dict[str, list[Any]]]:
    """Space groups at every :data:`rmsearch.symmetry.REPORT_SYMPRECS` of raw structures
    (symprec -> [number, symbol])."""
    out = []
    for numbers, cell, positions, pbc in raws:
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        out.append({str(p): list(spacegroup(atoms, p)) for p in REPORT_SYMPRECS})
    return out
