"""Deduplicate relaxed structures into clusters of the same structure.

Matching all pairs with pymatgen's StructureMatcher is quadratic (1000 unique structures
take ~12 min), so candidates are narrowed down first, as pymatgen's ``group_structures``
does with its composition hash:

1. **composition**: reduced formula and number of atoms must agree;
2. **energy and volume bins**: energy per atom in bins of ``energy_bin`` (eV/atom) and
   volume per atom in bins of ``volume_bin`` in ``ln V`` (0.05 = 5 %); a structure is only
   compared with clusters whose representative lies in the same or a neighbouring bin;
3. **StructureMatcher** (``stol=0.5, ltol=0.3, angle_tol=10`` degrees, primitive cell,
   volumes scaled; ``stol`` is a fraction of ``(V/N)^(1/3)``, ``ltol`` a fractional
   length tolerance) with ``fit(symmetric=True)``, each structure Niggli/primitive-reduced
   once.

Structures are visited in order of (energy per atom, run id); each is compared with the
candidate representatives nearest in energy and volume first, joins the first that
matches or opens a new cluster, so every cluster's representative is its lowest-energy
member and the result is deterministic. Compositions are independent
and can be processed in parallel worker processes.

Periodic structures only: a non-periodic (molecule) result becomes a cluster of its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

log = logging.getLogger(__name__)

#: Tolerances of the matcher (DESIGN §4); dimensionless except angle_tol (degrees).
MATCHER_SETTINGS: dict[str, Any] = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0,
                                    "primitive_cell": True, "scale": True, "attempt_supercell": False}
DEFAULT_ENERGY_BIN = 0.02  # eV/atom
DEFAULT_VOLUME_BIN = 0.05  # in ln(V/atom), i.e. about 5 %


def make_matcher() -> StructureMatcher:
    """The StructureMatcher used everywhere in the analysis (see :data:`MATCHER_SETTINGS`)."""
    return StructureMatcher(**MATCHER_SETTINGS)


@dataclass
class Cluster:
    """Results that relaxed into the same structure.

    ``representative`` is the run id of the lowest-energy member; ``members`` all run ids
    (sorted); energies in eV/atom, volume in A^3/atom of the representative.
    """

    formula: str
    natoms: int
    representative: int
    energy_per_atom: float
    volume_per_atom: float
    members: list[int] = field(default_factory=list)

    @property
    def hits(self) -> int:
        """Number of independent runs that found this structure."""
        return len(self.members)


@dataclass
class DedupeResult:
    """Clusters (sorted by energy per atom, then representative run id) and match statistics."""

    clusters: list[Cluster]
    n_structures: int
    n_matcher_calls: int
    n_all_pairs: int  # N (N - 1) / 2 over all structures: what all-pairs matching would cost
    n_pairs_same_composition: int  # pairs left after the composition filter alone
    wall_s: float
    settings: dict[str, Any]

    def cluster_of(self) -> dict[int, int]:
        """Map run id -> index of its cluster in :attr:`clusters`."""
        return {rid: k for k, c in enumerate(self.clusters) for rid in c.members}


def _composition_key(atoms: Atoms) -> tuple[str, int]:
    from pymatgen.core import Composition

    comp = Composition(atoms.get_chemical_formula())
    return comp.reduced_formula, len(atoms)


def _dedupe_group(args: tuple[list[tuple[int, float, float, Structure | None]], float, float]
                  ) -> tuple[list[tuple[int, float, float, list[int]]], int]:
    """Greedy clustering of one composition group; returns (clusters, matcher calls).

    Items are (run_id, energy_per_atom, volume_per_atom, structure or None), already sorted.
    """
    items, energy_bin, volume_bin = args
    matcher = make_matcher()
    clusters: list[tuple[int, float, float, list[int]]] = []
    reduced: list[Structure | None] = []
    bins: dict[tuple[int, int], list[int]] = defaultdict(list)
    calls = 0
    for run_id, e, v, struct in items:
        if struct is None:  # molecule: no periodic matcher, a cluster of its own
            clusters.append((run_id, e, v, [run_id]))
            reduced.append(None)
            continue
        red = matcher._get_reduced_structure(struct, matcher._primitive_cell, niggli=True)
        be, bv = math.floor(e / energy_bin), math.floor(math.log(v) / volume_bin)
        # nearest representatives (in energy and volume) first: a duplicate usually matches at once
        near = [k for de in (-1, 0, 1) for dv in (-1, 0, 1) for k in bins.get((be + de, bv + dv), ())]
        candidates = sorted(near, key=lambda k: (abs(clusters[k][1] - e) / energy_bin
                                                 + abs(math.log(clusters[k][2] / v)) / volume_bin, k))
        for k in candidates:
            calls += 1
            if matcher.fit(reduced[k], red, symmetric=True, skip_structure_reduction=True):
                clusters[k][3].append(run_id)
                break
        else:
            bins[(be, bv)].append(len(clusters))
            clusters.append((run_id, e, v, [run_id]))
            reduced.append(red)
    return clusters, calls


def dedupe(items: Sequence[tuple[int, Atoms, float]], *, energy_bin: float = DEFAULT_ENERGY_BIN,
           volume_bin: float = DEFAULT_VOLUME_BIN, workers: int = 1) -> DedupeResult:
    """Cluster structures ``(run_id, atoms, energy_per_atom [eV/atom])`` (see module doc).

    ``workers`` > 1 spreads composition groups over that many processes.
    """
    if energy_bin <= 0 or volume_bin <= 0:
        raise ValueError(f"energy_bin={energy_bin} and volume_bin={volume_bin} must be positive")
    t0 = time.perf_counter()
    groups: dict[tuple[str, int], list[tuple[int, float, float, Structure | None]]] = defaultdict(list)
    adaptor = AseAtomsAdaptor()
    for run_id, atoms, e in items:
        periodic = bool(atoms.pbc.all())
        v = atoms.get_volume() / len(atoms) if periodic else math.nan
        groups[_composition_key(atoms)].append(
            (int(run_id), float(e), float(v), adaptor.get_structure(atoms) if periodic else None))
    keys = sorted(groups)
    for key in keys:
        groups[key].sort(key=lambda it: (it[1], it[0]))
    tasks = [(groups[k], energy_bin, volume_bin) for k in keys]
    if workers > 1 and len(tasks) > 1:
        # biggest groups first so that the workers finish together
        order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][0]))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = dict(zip(order, pool.map(_dedupe_group, [tasks[i] for i in order])))
        results = [done[i] for i in range(len(tasks))]
    else:
        results = [_dedupe_group(t) for t in tasks]
    clusters = [Cluster(formula=key[0], natoms=key[1], representative=rep, energy_per_atom=e,
                        volume_per_atom=v, members=sorted(members))
                for key, (found, _) in zip(keys, results) for rep, e, v, members in found]
    clusters.sort(key=lambda c: (c.energy_per_atom, c.representative))
    n = len(items)
    sizes = np.array([len(groups[k]) for k in keys], dtype=np.int64)
    res = DedupeResult(clusters=clusters, n_structures=n, n_matcher_calls=sum(c for _, c in results),
                       n_all_pairs=n * (n - 1) // 2,
                       n_pairs_same_composition=int((sizes * (sizes - 1) // 2).sum()),
                       wall_s=time.perf_counter() - t0,
                       settings={"matcher": make_matcher().as_dict(), "energy_bin_eV_atom": energy_bin,
                                 "volume_bin_ln": volume_bin, "fit_symmetric": True})
    log.info("dedupe: %d structures -> %d clusters, %d matcher calls (all pairs %d), %.1f s",
             n, len(clusters), res.n_matcher_calls, res.n_all_pairs, res.wall_s)
    return res
