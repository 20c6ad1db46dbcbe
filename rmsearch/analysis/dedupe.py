"""Deduplicate relaxed structures into clusters of the same structure.

Matching all pairs with pymatgen's StructureMatcher is quadratic (1000 unique structures
take ~12 min), so candidates are narrowed down first, as pymatgen's ``group_structures``
does with its composition hash:

1. **composition**: reduced formulas must agree; cell sizes may differ (the matcher
   compares primitive cells, so diamond found in a 2-atom and in an 8-atom cell is one
   cluster; its hits count both);
2. **energy and volume bins**: energy per atom in bins of ``energy_bin`` (eV/atom) and
   volume per atom in bins of ``volume_bin`` in ``ln V`` (0.05 = 5 %); a structure is only
   compared with clusters whose representative lies in the same or a neighbouring bin;
3. **StructureMatcher** (``stol=0.5, ltol=0.3, angle_tol=10`` degrees, primitive cell,
   volumes scaled; ``stol`` is a fraction of ``(V/N)^(1/3)``, ``ltol`` a fractional
   length tolerance) with ``fit(symmetric=True)``, each structure Niggli/primitive-reduced
   once.

2b. **fingerprint gate** (``fp_radius``, default :data:`~rmsearch.analysis.fingerprint.FP_RADIUS`):
   of those, only representatives whose radial-distribution fingerprint lies within
   ``fp_radius`` are candidates (:mod:`rmsearch.analysis.fingerprint`, computed once per
   structure, in worker processes); ``fp_radius=None`` is the plain rule. The gate also
   splits a composition into candidate groups that never share a candidate pair, which
   run in parallel with the same result as in one process.
   Pairs whose reduced cells differ in size are never sent to the matcher (without
   supercells it cannot map them: an exact filter), and :func:`symmetric_fit` stops after
   a failed first direction.

Before StructureMatcher, a quick exact-duplicate test (:func:`rmsearch.analysis.quick.quick_same`) accepts pairs
that are obviously the same: Niggli cells equal within 2 % in length and 1 degree in angle
up to a proper change of basis and, after one translation, every atom within
``0.1 (V/N)^(1/3)`` of an atom of the same element in the other (a bijection); tried on the
cells as found and then on spglib's primitive cells (``symprec`` 0.05 A, atoms not moved), so
a minimum found in cells of different sizes is caught too. Such pairs are far inside the
matcher's tolerances (it would accept them too); everything else goes to the matcher. In a
search most joins are repeat hits, so this removes most matcher calls and structure reductions.

Structures are visited in order of (energy per atom, run id); each is compared with the
candidate representatives nearest in energy and volume first, joins the first that
matches or opens a new cluster, so every cluster's representative is its lowest-energy
member and the result is deterministic. Compositions are independent
and can be processed in parallel worker processes.

Molecules (non-periodic results) follow the same greedy order with energy bins only, and
:func:`same_molecule` as the test: interatomic distances sorted per element pair first (equal within
``MOLECULE_QUICK_DTOL``: the same; differing by more than ``MOLECULE_GATE_DTOL``: not),
then pymatgen's HungarianOrderMatcher (inertia-axis alignment, Hungarian atom ordering,
Kabsch rotation) on the molecule and on its mirror image: the same when the RMSD is below
``MOLECULE_RMSD_TOL``. Mirror images (enantiomers) are one cluster, as they have the same
energy under any potential.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from rmsearch.analysis.fingerprint import FP_RADIUS, fingerprint_settings
from rmsearch.analysis.quick import (
    QUICK_ANGLE_TOL,
    QUICK_DTOL,
    QUICK_LTOL,
    QuickForm,
    quick_form,
    quick_same,
)

log = logging.getLogger(__name__)

#: Tolerances of the matcher (DESIGN §4); dimensionless except angle_tol (degrees).
MATCHER_SETTINGS: dict[str, Any] = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0,
                                    "primitive_cell": True, "scale": True, "attempt_supercell": False}
DEFAULT_ENERGY_BIN = 0.02  # eV/atom
DEFAULT_VOLUME_BIN = 0.05  # in ln(V/atom), i.e. about 5 %


#: Molecules: largest RMSD (A) after the best rotation (or rotation + mirror) and atom order.
MOLECULE_RMSD_TOL = 0.1
#: Sorted interatomic distances equal within this (A): the same molecule without a matcher call.
MOLECULE_QUICK_DTOL = 0.01
#: Sorted interatomic distances differing by more than this (A): different, without a matcher call.
MOLECULE_GATE_DTOL = 0.5


def make_matcher() -> StructureMatcher:
    """The StructureMatcher used everywhere in the analysis (see :data:`MATCHER_SETTINGS`)."""
    return StructureMatcher(**MATCHER_SETTINGS)


@dataclass
class Cluster:
    """Results that relaxed into the same structure.

    ``representative`` is the run id of the lowest-energy member; ``members`` all run ids
    (sorted, of any cell size); ``natoms``, energies (eV/atom) and volume (A^3/atom) are the
    representative's.
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
    n_quick_matches: int  # pairs accepted by the quick exact-duplicate test, no matcher call
    n_all_pairs: int  # N (N - 1) / 2 over all structures: what all-pairs matching would cost
    n_pairs_same_composition: int  # pairs left after the composition filter alone
    wall_s: float
    settings: dict[str, Any]
    n_candidate_groups: int = 0  # independent groups (fingerprint gate: candidate groups; else compositions)
    largest_candidate_group: int = 0  # structures in the largest of them

    def cluster_of(self) -> dict[int, int]:
        """Map run id -> index of its cluster in :attr:`clusters`."""
        return {rid: k for k, c in enumerate(self.clusters) for rid in c.members}


def _composition_key(atoms: Atoms) -> str:
    from pymatgen.core import Composition

    return Composition(atoms.get_chemical_formula()).reduced_formula


#: A candidate group is cut into energy slices (one per worker) when it holds at least SPLIT_MIN
#: structures and more than SPLIT_SHARE times a worker's share of its composition.
SPLIT_MIN = 2000
SPLIT_SHARE = 1.0


def _structure(raw: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Structure:
    numbers, cell, positions = raw
    return Structure(cell, numbers, positions, coords_are_cartesian=True)


_Raw = tuple[np.ndarray, np.ndarray, np.ndarray]  # numbers, cell (3, 3), Cartesian positions (n, 3)


@dataclass
class MoleculeForm:
    """A non-periodic structure for :func:`same_molecule`: atomic numbers, Cartesian
    positions (A) and the interatomic distances (A) sorted by element pair, then by value:
    invariant under rotation, translation, mirror and atom order."""

    numbers: np.ndarray
    positions: np.ndarray
    distances: np.ndarray


def molecule_form(numbers: np.ndarray, positions: np.ndarray) -> MoleculeForm:
    """The :class:`MoleculeForm` of a molecule (``positions`` (n_atoms, 3), A)."""
    from scipy.spatial.distance import pdist

    positions, numbers = np.asarray(positions, dtype=float), np.asarray(numbers)
    i, j = np.triu_indices(len(numbers), k=1)  # pdist's pair order
    zi, zj = np.minimum(numbers[i], numbers[j]), np.maximum(numbers[i], numbers[j])
    d = pdist(positions)
    return MoleculeForm(numbers, positions, d[np.lexsort((d, zj, zi))])


def _pmg_molecule(m: MoleculeForm, mirror: bool = False):
    from pymatgen.core import Molecule

    return Molecule(m.numbers, m.positions * (-1.0 if mirror else 1.0))


def molecule_match(a: MoleculeForm, b: MoleculeForm, rmsd_tol: float = MOLECULE_RMSD_TOL) -> tuple[bool, bool]:
    """(same, matcher called): whether ``b`` is ``a`` (or its mirror image) rotated,
    translated and re-ordered, to ``rmsd_tol`` (A) after the best alignment, and whether
    that took a HungarianOrderMatcher call (see the module doc for the two distance gates)."""
    if len(a.numbers) != len(b.numbers) or not np.array_equal(np.sort(a.numbers), np.sort(b.numbers)):
        return False, False
    if len(a.numbers) < 2:
        return True, False
    gap = float(np.abs(a.distances - b.distances).max())
    if gap <= MOLECULE_QUICK_DTOL or gap > MOLECULE_GATE_DTOL:
        return gap <= MOLECULE_QUICK_DTOL, False
    from pymatgen.analysis.molecule_matcher import HungarianOrderMatcher

    matcher = HungarianOrderMatcher(_pmg_molecule(a))
    return any(matcher.match(_pmg_molecule(b, mirror))[3] <= rmsd_tol for mirror in (False, True)), True


def same_molecule(a: MoleculeForm, b: MoleculeForm, rmsd_tol: float = MOLECULE_RMSD_TOL) -> bool:
    """True if ``b`` is ``a`` (or its mirror image) moved, rotated and re-ordered (:func:`molecule_match`)."""
    return molecule_match(a, b, rmsd_tol)[0]


class _GroupClusters:
    """Greedy clustering of one composition group (see the module doc): :meth:`add` the
    items in order of (energy, run id); each joins the first matching representative or
    opens a cluster. Crystals and molecules each have their own candidate search."""

    def __init__(self, energy_bin: float, volume_bin: float, fp_radius: float | None = None):
        self.energy_bin, self.volume_bin, self.fp_radius = energy_bin, volume_bin, fp_radius
        self.matcher = make_matcher()
        # per (energy, volume) bin: fingerprints of its representatives (capacity, dim) and how many
        self.bin_fps: dict[tuple[int, int | None], tuple[np.ndarray, int]] = {}
        self.clusters: list[tuple[int, float, float, list[int]]] = []  # (rep, e, v, members)
        self.structs: list[tuple[np.ndarray, ...]] = []
        self.forms: list[QuickForm | MoleculeForm] = []
        self.reduced: dict[int, Structure] = {}  # cluster index -> reduced representative (made when first needed)
        self.prim_forms: dict[int, QuickForm] = {}  # cluster index -> primitive quick form (made when first needed)
        self.bins: dict[tuple[int, int | None], list[int]] = defaultdict(list)
        self.calls = self.quick_hits = 0

    def add(self, run_id: int, e: float, v: float, struct: tuple[np.ndarray, ...],
            fp: np.ndarray | None = None, form: QuickForm | None = None) -> None:
        """Cluster one structure: energy ``e`` (eV/atom), volume ``v`` (A^3/atom; NaN for a
        molecule) and raw structure (numbers, cell, positions; a molecule's numbers, positions);
        ``fp``: its fingerprint (:mod:`rmsearch.analysis.fingerprint`) when the group has a radius;
        ``form``: its :func:`quick_form` where already made."""
        if math.isfinite(v):
            key, form, found = self._find_crystal(e, v, struct, fp, form)
        else:
            key, form, found = self._find_molecule(e, struct)
        if found is not None:
            self.clusters[found][3].append(run_id)
        else:
            self.open(key, (run_id, e, v, [run_id]), struct, fp, form)

    def open(self, key: tuple[int, int | None], cluster: tuple[int, float, float, list[int]],
             struct: tuple[np.ndarray, ...], fp: np.ndarray | None, form: QuickForm | MoleculeForm) -> None:
        """Open ``cluster`` (rep, e, v, members) with its representative's bins ``key``, raw
        structure, fingerprint and quick form."""
        if fp is not None:
            self._store_fp(key, fp)
        self.bins[key].append(len(self.clusters))
        self.clusters.append(cluster)
        self.structs.append(struct)
        self.forms.append(form)

    def bin_key(self, e: float, v: float) -> tuple[int, int]:
        """The (energy, ln volume) bins of a crystal."""
        return math.floor(e / self.energy_bin), math.floor(math.log(v) / self.volume_bin)

    def _find_molecule(self, e: float, struct: tuple[np.ndarray, ...]):
        key: tuple[int, int | None] = (math.floor(e / self.energy_bin), None)
        near = [k for de in (-1, 0, 1) for k in self.bins.get((key[0] + de, None), ())]
        form = molecule_form(*struct)
        for k in sorted(near, key=lambda k: (abs(self.clusters[k][1] - e), k)):
            same, called = molecule_match(self.forms[k], form)
            self.calls += called
            if same:
                self.quick_hits += not called
                return key, form, k
        return key, form, None

    def _store_fp(self, key: tuple[int, int | None], fp: np.ndarray) -> None:
        arr, n = self.bin_fps.get(key, (None, 0))
        if arr is None:
            arr = np.empty((16, len(fp)))
        elif n == len(arr):
            arr = np.concatenate([arr, np.empty_like(arr)])
        arr[n] = fp
        self.bin_fps[key] = (arr, n + 1)

    def _find_crystal(self, e: float, v: float, struct: tuple[np.ndarray, ...], fp: np.ndarray | None = None,
                      form: QuickForm | None = None):
        be, bv = math.floor(e / self.energy_bin), math.floor(math.log(v) / self.volume_bin)
        # nearest representatives (in energy and volume) first: a duplicate usually matches at once
        keys = [(be + de, bv + dv) for de in (-1, 0, 1) for dv in (-1, 0, 1)]
        if fp is not None and self.fp_radius is not None:  # one numpy distance per bin, not per representative
            near = []
            for key in keys:
                if key in self.bin_fps:
                    arr, n = self.bin_fps[key]
                    ks = self.bins[key]
                    near += [ks[i] for i in np.flatnonzero(np.linalg.norm(arr[:n] - fp, axis=1) <= self.fp_radius)]
        else:
            near = [k for key in keys for k in self.bins.get(key, ())]
        candidates = sorted(near, key=lambda k: (abs(self.clusters[k][1] - e) / self.energy_bin
                                                 + abs(math.log(self.clusters[k][2] / v)) / self.volume_bin, k))
        form = form if form is not None else quick_form(*struct)
        found = next((k for k in candidates if quick_same(self.forms[k], form)), None)
        if found is None and candidates:  # the same minimum in another cell size: compare primitive cells
            prim = quick_form(*struct, primitive=True)
            for k in candidates:
                if k not in self.prim_forms:
                    self.prim_forms[k] = quick_form(*self.structs[k], primitive=True)
                if quick_same(self.prim_forms[k], prim):
                    found = k
                    break
        if found is not None:
            self.quick_hits += 1
            return (be, bv), form, found
        if candidates:
            red = self._reduce(struct)
            for k in candidates:
                if k not in self.reduced:
                    self.reduced[k] = self._reduce(self.structs[k])
                if len(self.reduced[k]) != len(red):
                    continue  # without supercells the matcher never maps cells of different sizes: exact
                self.calls += 1
                if symmetric_fit(self.matcher, self.reduced[k], red):
                    return (be, bv), form, k
        return (be, bv), form, None

    def _reduce(self, raw: _Raw) -> Structure:
        return reduce_structure(_structure(raw))


def symmetric_fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    """``matcher.fit(a, b, symmetric=True, skip_structure_reduction=True)`` for two reduced
    structures, stopping after the first direction when it fails: pymatgen's symmetric fit
    is the two one-way fits, a->b and b->a, and always computes both; asked one way at a time
    (public ``fit`` calls), the answer is the same in about half the time for different pairs."""
    return bool(matcher.fit(a, b, skip_structure_reduction=True)
                and matcher.fit(b, a, skip_structure_reduction=True))


def reduce_structure(struct: Structure) -> Structure:
    """The reduced cell the matcher compares (Niggli, then primitive, as ``StructureMatcher.fit``
    without ``skip_structure_reduction`` makes it), through pymatgen's public
    ``Structure.get_reduced_structure``/``get_primitive_structure`` and without the matcher's
    ``lru_cache`` (whose lookups compare whole structures: 30 % of the cost)."""
    reduced = struct.get_reduced_structure(reduction_algo="niggli")
    if MATCHER_SETTINGS["primitive_cell"]:
        reduced = reduced.get_primitive_structure()
    return Structure.from_sites(reduced)


_Item = tuple[int, float, float, tuple[np.ndarray, ...]]  # run id, eV/atom, A^3/atom (NaN: molecule), raw


def _dedupe_group(args: tuple[list[_Item], float, float, np.ndarray | None, float | None, list | None]
                  ) -> tuple[list[tuple[int, float, float, list[int]]], int, int]:
    """Cluster one composition group or candidate group (items sorted by energy and run id;
    ``fps`` their fingerprints or None, ``forms`` their quick forms or None); returns
    (clusters, matcher calls, quick matches)."""
    items, energy_bin, volume_bin, fps, fp_radius, forms = args
    group = _GroupClusters(energy_bin, volume_bin, fp_radius if fps is not None else None)
    for k, item in enumerate(items):
        group.add(*item, fp=None if fps is None else fps[k], form=None if forms is None else forms[k])
    return group.clusters, group.calls, group.quick_hits


def _fingerprints(args: tuple[list[_Raw], list[tuple[int, int]]]) -> tuple[list[QuickForm], np.ndarray]:
    """Quick forms and fingerprints (n, dim) of raw periodic structures (numbers, cell, positions);
    the fingerprint is taken in the quick form's Niggli cell (fewest periodic images)."""
    from rmsearch.analysis.fingerprint import fingerprint

    raws, channels = args
    forms = [quick_form(numbers, cell, positions) for numbers, cell, positions in raws]
    return forms, np.asarray([fingerprint(f.numbers, f.cell, f.frac, channels) for f in forms])


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _group_tasks(items: list[_Item], energy_bin: float, volume_bin: float, fp_radius: float | None,
                 pmap, n_tasks: int) -> tuple[list[tuple], dict[str, int], _Split | None]:
    """Split one composition group (sorted by energy, run id) into independent clustering tasks.

    Without a radius, or for molecules, the group is one task. With one, the crystals'
    fingerprints are computed (``pmap``: a map over worker processes), the group is split
    into candidate groups (:func:`rmsearch.analysis.fingerprint.candidate_components`) and
    those are packed into about ``n_tasks`` tasks (largest first), each kept in energy
    order: the greedy rule gives the same clusters as on the whole group, because a
    structure's candidates never lie in another candidate group. A candidate group larger
    than ``len(items) / n_tasks`` (and :data:`SPLIT_MIN`; in a dense search the candidate
    graph percolates: 60 % of 100,000 carbon results in one group) is cut into ``n_tasks``
    energy slices that run in parallel; the returned :class:`_Split` stitches them.
    """
    if fp_radius is None or not items or not all(math.isfinite(it[2]) for it in items):
        return [(items, energy_bin, volume_bin, None, None, None)], {"components": 1, "largest": len(items)}, None
    from rmsearch.analysis.fingerprint import candidate_components, pair_channels

    channels = pair_channels(items[0][3][0])
    size = max(64, -(-len(items) // (4 * max(n_tasks, 1))))
    parts = list(pmap(_fingerprints, [([it[3] for it in items[sl]], channels) for sl in _chunks(len(items), size)]))
    forms = [f for part, _ in parts for f in part]
    fps = np.concatenate([fp for _, fp in parts])
    bins = np.array([(math.floor(it[1] / energy_bin), math.floor(math.log(it[2]) / volume_bin)) for it in items])
    labels = candidate_components(fps, bins, fp_radius)
    members: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels.tolist()):
        members[lab].append(i)
    stats = {"components": len(members), "largest": max(len(m) for m in members.values())}
    split = None
    big = max(members, key=lambda lab: len(members[lab]))
    if n_tasks > 1 and len(members[big]) >= SPLIT_MIN and len(members[big]) > SPLIT_SHARE * len(items) / n_tasks:
        # one candidate group would keep one process busy: cluster it in energy slices in
        # parallel, then stitch the slices (_stitch)
        comp = members.pop(big)
        cuts = np.array_split(np.asarray(comp), n_tasks)
        for k, part in enumerate(cuts):
            members[f"split{k}"] = part.tolist()
        split = _Split(slice_of={items[i][0]: k for k, part in enumerate(cuts) for i in part.tolist()},
                       n_slices=len(cuts), data={items[i][0]: (items[i][3], fps[i], forms[i]) for i in comp})
        stats["split"] = len(cuts)
    # pack components into n_tasks packs of about equal size, biggest first
    packs: list[list[int]] = [[] for _ in range(max(1, min(n_tasks, len(members))))]
    load = [0] * len(packs)
    for comp in sorted(members.values(), key=lambda m: (-len(m), m[0])):
        b = load.index(min(load))
        packs[b].extend(comp)
        load[b] += len(comp)
    tasks = []
    for idx in packs:
        idx.sort()  # back in energy order
        tasks.append(([items[i] for i in idx], energy_bin, volume_bin, fps[idx], fp_radius, [forms[i] for i in idx]))
    return tasks, stats, split


@dataclass
class _Split:
    """A candidate group too large for one process, clustered in energy slices in parallel
    (:func:`_group_tasks`) and stitched afterwards (:func:`_stitch`)."""

    slice_of: dict[int, int]  # run id -> slice (0 = lowest energies)
    n_slices: int
    data: dict[int, tuple]  # run id -> (raw structure, fingerprint, quick form)


def _stitch(found: list[tuple[int, float, float, list[int]]], split: _Split, energy_bin: float,
            volume_bin: float, fp_radius: float) -> tuple[list[tuple[int, float, float, list[int]]], int, int]:
    """Join the slices of a split candidate group: each cluster of a slice whose representative
    lies within two energy bins of the slice below is tried (same candidate rule and tests) against
    that slice's representatives there, and joins the first that matches. Returns (clusters,
    matcher calls, quick matches)."""
    by_slice: dict[int | None, list] = defaultdict(list)
    for c in found:
        by_slice[split.slice_of.get(c[0])].append(c)
    merged, calls, quick = sorted(by_slice.pop(0, []), key=lambda c: (c[1], c[0])), 0, 0
    for s in range(1, split.n_slices):
        upper = sorted(by_slice.pop(s, []), key=lambda c: (c[1], c[0]))
        if not merged or not upper:
            merged += upper
            continue
        lo, hi = upper[0][1] - 2.0 * energy_bin, merged[-1][1] + 2.0 * energy_bin
        group = _GroupClusters(energy_bin, volume_bin, fp_radius)
        for c in merged:
            if c[1] >= lo:
                struct, fp, form = split.data[c[0]]
                group.open(group.bin_key(c[1], c[2]), c, struct, fp, form)
        rest = []
        for c in upper:
            if c[1] <= hi:
                struct, fp, form = split.data[c[0]]
                _, _, k = group._find_crystal(c[1], c[2], struct, fp, form)
                if k is not None:
                    group.clusters[k][3].extend(c[3])
                    continue
            rest.append(c)
        calls, quick = calls + group.calls, quick + group.quick_hits
        merged = sorted(merged + rest, key=lambda c: (c[1], c[0]))
    return [c for cs in by_slice.values() for c in cs] + merged, calls, quick


def dedupe(items: Iterable[tuple[int, Atoms, float]], *, energy_bin: float = DEFAULT_ENERGY_BIN,
           volume_bin: float = DEFAULT_VOLUME_BIN, workers: int = 1,
           fp_radius: float | None = FP_RADIUS) -> DedupeResult:
    """Cluster structures ``(run_id, atoms, energy_per_atom [eV/atom])`` (see module doc).

    ``items`` may be a generator: each Atoms is reduced to arrays at once and dropped.
    ``workers`` > 1 spreads composition groups, and candidate groups within one
    composition, over that many processes. ``fp_radius``: largest fingerprint distance of a
    candidate pair (:mod:`rmsearch.analysis.fingerprint`); None compares every pair in
    neighbouring bins (the plain rule).
    """
    if energy_bin <= 0 or volume_bin <= 0:
        raise ValueError(f"energy_bin={energy_bin} and volume_bin={volume_bin} must be positive")
    if fp_radius is not None and not (math.isfinite(fp_radius) and fp_radius > 0):
        raise ValueError(f"fp_radius={fp_radius}: must be positive (or None)")
    t0 = time.perf_counter()
    groups: dict[str, list[_Item]] = defaultdict(list)
    natoms_of: dict[int, int] = {}
    keys_of: dict[tuple[int, ...], str] = {}
    n = 0
    for run_id, atoms, e in items:
        n += 1
        natoms_of[int(run_id)] = len(atoms)
        periodic = bool(atoms.pbc.all())
        v = atoms.get_volume() / len(atoms) if periodic else math.nan
        counts = tuple(np.bincount(atoms.numbers).tolist())
        if counts not in keys_of:  # the reduced formula, computed once per stoichiometry
            keys_of[counts] = _composition_key(atoms)
        groups[keys_of[counts]].append(
            (int(run_id), float(e), float(v),
             (atoms.numbers.copy(), np.asarray(atoms.cell).copy(), atoms.positions.copy()) if periodic
             else (atoms.numbers.copy(), atoms.positions.copy())))
    keys = sorted(groups)
    for key in keys:
        groups[key].sort(key=lambda it: (it[1], it[0]))
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        pmap = pool.map if pool is not None else map
        tasks: list[tuple] = []
        task_key: list[str] = []
        split: dict[str, dict[str, int]] = {}
        slices: dict[str, _Split] = {}
        for key in keys:
            group_tasks, split[key], cut = _group_tasks(groups[key], energy_bin, volume_bin, fp_radius, pmap,
                                                        workers)
            if cut is not None:
                slices[key] = cut
            tasks += group_tasks
            task_key += [key] * len(group_tasks)
        # biggest tasks first so that the workers finish together
        order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][0]))
        done = dict(zip(order, pmap(_dedupe_group, [tasks[i] for i in order])))
    finally:
        if pool is not None:
            pool.shutdown()
    results = [done[i] for i in range(len(tasks))]
    for key, cut in slices.items():  # join the energy slices of split candidate groups
        mine = [i for i, k in enumerate(task_key) if k == key]
        found, calls, quick = _stitch([c for i in mine for c in results[i][0]], cut, energy_bin, volume_bin,
                                      fp_radius)
        results = [r for i, r in enumerate(results) if i not in mine] + [
            (found, sum(results[i][1] for i in mine) + calls, sum(results[i][2] for i in mine) + quick)]
        task_key = [k for i, k in enumerate(task_key) if i not in mine] + [key]
    clusters = [Cluster(formula=key, natoms=natoms_of[rep], representative=rep, energy_per_atom=e,
                        volume_per_atom=v, members=sorted(members))
                for key, (found, _, _) in zip(task_key, results) for rep, e, v, members in found]
    clusters.sort(key=lambda c: (c.energy_per_atom, c.representative))
    sizes = np.array([len(groups[k]) for k in keys], dtype=np.int64)
    res = DedupeResult(clusters=clusters, n_structures=n, n_matcher_calls=sum(r[1] for r in results),
                       n_quick_matches=sum(r[2] for r in results),
                       n_all_pairs=n * (n - 1) // 2,
                       n_pairs_same_composition=int((sizes * (sizes - 1) // 2).sum()),
                       wall_s=time.perf_counter() - t0,
                       n_candidate_groups=sum(d["components"] for d in split.values()),
                       largest_candidate_group=max((d["largest"] for d in split.values()), default=0),
                       settings={"matcher": make_matcher().as_dict(), "energy_bin_eV_atom": energy_bin,
                                 "volume_bin_ln": volume_bin, "fit_symmetric": True,
                                 "fingerprint": None if fp_radius is None else dict(fingerprint_settings(),
                                                                                    radius=fp_radius),
                                 "quick_test": {"ltol": QUICK_LTOL, "angle_tol_deg": QUICK_ANGLE_TOL,
                                                "dtol_per_length": QUICK_DTOL},
                                 "molecules": {"rmsd_tol_A": MOLECULE_RMSD_TOL, "quick_dtol_A": MOLECULE_QUICK_DTOL,
                                               "gate_dtol_A": MOLECULE_GATE_DTOL, "mirror_images_merged": True}})
    log.info("dedupe: %d structures -> %d clusters, %d matcher calls + %d quick matches (all pairs %d), %.1f s",
             n, len(clusters), res.n_matcher_calls, res.n_quick_matches, res.n_all_pairs, res.wall_s)
    return res
