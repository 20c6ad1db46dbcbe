"""Symmetry snapping: symmetrise near-symmetric minima, re-relax them, merge what becomes equal.

A relaxation stopped at ``fmax`` 0.01 eV/A often ends a little short of a symmetric
minimum: spglib sees P1 at ``symprec`` 1e-3 A but C2/m or Fd-3m at 1e-1 A, and
StructureMatcher splits one minimum into several clusters. For every cluster
representative (of the :data:`DEFAULT_SNAP_TOP` lowest-energy clusters per composition, by
default) whose symmetry at :data:`SNAP_SYMPREC` (0.1 A) is higher than at 1e-3 A:

1. **symmetrise**: spglib's ``standardize_cell(to_primitive=True, no_idealize=False)``
   at :data:`SNAP_SYMPREC` gives the idealised primitive cell (lattice with the exact
   metric of the space group, atoms on their Wyckoff positions);
2. **re-relax** it under the run's own potential (``config.json``: ``potential``, whose
   files must still hash to ``potential_sha256``, and the ``relax`` settings) with
   :class:`rmsearch.relax.Relaxer`; forces of a symmetric structure are symmetric, so the
   relaxation stays in the symmetric subspace;
3. **keep** it when it converged and its energy per atom is not above the
   representative's by more than :data:`SNAP_ENERGY_TOL` (eV/atom); otherwise the
   representative stays as it is (a real symmetry-breaking distortion).

Then the representatives (snapped or not) are clustered again with the same rule
(:func:`rmsearch.analysis.dedupe.dedupe`), and clusters whose representatives became the
same structure are merged (members united; the lowest-energy cluster's representative
stays). Space groups of the snapped structures are reported at symprec 1e-3, 1e-2 and
1e-1 A.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import spglib
from ase import Atoms

from rmsearch.analysis.dedupe import DEFAULT_ENERGY_BIN, DEFAULT_VOLUME_BIN, Cluster, dedupe
from rmsearch.symmetry import REPORT_SYMPRECS, spacegroup, symmetry_dataset

log = logging.getLogger(__name__)

#: Loose symmetry tolerance (A) at which structures are symmetrised.
SNAP_SYMPREC = 0.1
#: A snapped structure is kept when its energy is at most this much (eV/atom) above the original's.
SNAP_ENERGY_TOL = 1e-4
#: Clusters snapped per composition by default (the lowest in energy).
DEFAULT_SNAP_TOP = 2000


@dataclass
class Snapped:
    """Outcome of snapping one structure.

    ``atoms``: the snapped, re-relaxed structure (None when not kept); ``energy_per_atom``
    (eV/atom) and ``spacegroups`` (symprec -> [number, symbol]) are the snapped structure's
    when kept, else the original's; ``status``: "kept", "symmetric" (already symmetric at
    1e-3 A: nothing to do), "no_symmetry" (nothing more at 0.1 A), "higher" (energy rose),
    "not_converged" / the relaxation's status.
    """

    status: str
    energy_per_atom: float
    spacegroups: dict[str, list[Any]] = field(default_factory=dict)
    atoms: Atoms | None = None
    delta_e: float = math.nan  # snapped minus original energy per atom (eV/atom), when relaxed


def _n_ops(atoms: Atoms, symprec: float) -> int:
    data = symmetry_dataset((np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers),
                            symprec)
    return 0 if data is None else len(data.rotations)


def symmetrise(atoms: Atoms, symprec: float = SNAP_SYMPREC) -> Atoms | None:
    """The idealised primitive cell of ``atoms`` at ``symprec`` (A), or None if spglib fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            out = spglib.standardize_cell((np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=True),
                                           atoms.numbers), to_primitive=True, no_idealize=False, symprec=symprec)
        except spglib.SpglibError:
            return None
    if out is None:
        return None
    lattice, frac, numbers = out
    return Atoms(numbers=numbers, scaled_positions=frac, cell=lattice, pbc=True)


def snap_structure(atoms: Atoms, energy_per_atom: float, relaxer, symprec: float = SNAP_SYMPREC,
                   energy_tol: float = SNAP_ENERGY_TOL) -> Snapped:
    """Snap one relaxed periodic structure (``energy_per_atom`` in eV/atom) with ``relaxer``
    (a :class:`rmsearch.relax.Relaxer` of the potential that relaxed it); see the module doc."""
    tight = REPORT_SYMPRECS[0]
    original = {str(p): list(spacegroup(atoms, p)) for p in REPORT_SYMPRECS}
    loose_ops = _n_ops(atoms, symprec)
    if loose_ops <= 1:
        return Snapped("no_symmetry", energy_per_atom, original)
    if _n_ops(atoms, tight) >= loose_ops:
        return Snapped("symmetric", energy_per_atom, original)
    sym = symmetrise(atoms, symprec)
    if sym is None:
        return Snapped("no_symmetry", energy_per_atom, original)
    out = relaxer.relax(sym)
    if not out.converged:
        return Snapped(out.status.split(":", 1)[0], energy_per_atom, original)
    e = float(out.energy_per_atom)
    if not math.isfinite(e) or e > energy_per_atom + energy_tol:
        return Snapped("higher", energy_per_atom, original, delta_e=e - energy_per_atom)
    snapped = out.atoms
    return Snapped("kept", e, {str(p): list(spacegroup(snapped, p)) for p in REPORT_SYMPRECS}, snapped,
                   delta_e=e - energy_per_atom)


# ------------------------------------------------------------------ the run's potential, per worker

_RELAXER = None


def load_relaxer(config: dict[str, Any]):
    """A Relaxer of the run's potential and relax settings (``config.json``).

    Raises:
        RMError: see :func:`check_potential`.
    """
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer
    from rmsearch.config import relax_settings_from_dict

    check_potential(config)
    return Relaxer(load_potential(config["potential"]), relax_settings_from_dict(config["relax"]))


def check_potential(config: dict[str, Any]) -> None:
    """Raise RMError unless ``config`` names a potential directory whose files still hash to
    ``potential_sha256`` and has relax settings."""
    from rmdata.errors import RMError
    from rmsearch.config import potential_fingerprint

    pot_dir = config.get("potential")
    if not pot_dir or "relax" not in config:
        raise RMError("config.json has no potential or relax settings; snapping needs the search's potential")
    if not Path(pot_dir).is_dir():
        raise RMError(f"{pot_dir}: the search's potential directory is gone; snapping needs it")
    sha = config.get("potential_sha256")
    if sha and potential_fingerprint(pot_dir) != sha:
        raise RMError(f"{pot_dir}: files changed since the search (sha256 differs); snapping needs the same potential")


def _init_worker(config: dict[str, Any]) -> None:
    global _RELAXER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _RELAXER = load_relaxer(config)


def _snap_one(args: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> Snapped:
    numbers, cell, positions, e = args
    return snap_structure(Atoms(numbers=numbers, cell=cell, positions=positions, pbc=True), e, _RELAXER)


@dataclass
class SnapResult:
    """Clusters after snapping and merging, with per-cluster snap outcomes and counts."""

    clusters: list[Cluster]
    snapped: dict[int, Snapped]  # representative run id -> outcome (every periodic cluster)
    n_before: int
    n_after: int
    status_counts: dict[str, int]
    wall_s: float
    top: int | None = None  # clusters per composition that were snapped (None: all)

    def summary(self) -> dict[str, Any]:
        """Counts for the report."""
        return {"n_clusters_before": self.n_before, "n_clusters_after": self.n_after,
                "status_counts": self.status_counts, "wall_s": self.wall_s,
                "symprec_A": SNAP_SYMPREC, "energy_tol_eV_atom": SNAP_ENERGY_TOL, "n_snapped": len(self.snapped),
                "top_per_composition": self.top}


def snap_clusters(clusters: list[Cluster], structure_of, config: dict[str, Any], *, workers: int = 1,
                  energy_bin: float = DEFAULT_ENERGY_BIN, volume_bin: float = DEFAULT_VOLUME_BIN,
                  top: int | None = DEFAULT_SNAP_TOP) -> SnapResult:
    """Snap periodic cluster representatives and merge clusters that became the same.

    ``structure_of(run_id)`` returns the representative's Atoms; ``config`` is the run's
    ``config.json`` (potential and relax settings). ``top``: only the ``top`` lowest-energy
    clusters of each composition are snapped and merged (None: all). ``workers``
    processes relax in parallel.
    """
    t0 = time.perf_counter()
    check_potential(config)  # here, not in the workers' initializer: one RMError, not a broken pool
    periodic = []
    rank: dict[str, int] = {}
    for c in sorted(clusters, key=lambda c: (c.energy_per_atom, c.representative)):
        if top is not None and rank.get(c.formula, 0) >= top:
            continue
        atoms = structure_of(c.representative)
        if atoms.pbc.all():
            rank[c.formula] = rank.get(c.formula, 0) + 1
            periodic.append((c, atoms))
    args = [(a.numbers, np.asarray(a.cell), a.positions, c.energy_per_atom) for c, a in periodic]
    if workers > 1 and len(args) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(config,)) as pool:
            outs = list(pool.map(_snap_one, args, chunksize=max(1, len(args) // (8 * workers))))
    else:
        _init_worker(config)
        try:
            outs = [_snap_one(a) for a in args]
        finally:
            _RELAXER.close()
    snapped = {c.representative: s for (c, _), s in zip(periodic, outs)}
    # cluster the representatives again, snapped ones as snapped, each standing for its cluster
    items = [(k, s.atoms if s.atoms is not None else a, s.energy_per_atom)
             for k, ((c, a), s) in enumerate(zip(periodic, outs))]
    regroup = dedupe(items, energy_bin=energy_bin, volume_bin=volume_bin, workers=workers)
    merged: list[Cluster] = []
    for group in regroup.clusters:
        parts = sorted((periodic[k][0] for k in group.members),
                       key=lambda c: (snapped[c.representative].energy_per_atom, c.representative))
        best = parts[0]
        merged.append(Cluster(formula=best.formula, natoms=best.natoms, representative=best.representative,
                              energy_per_atom=best.energy_per_atom, volume_per_atom=best.volume_per_atom,
                              members=sorted(m for c in parts for m in c.members)))
    merged += [c for c in clusters if c.representative not in snapped]  # not snapped (molecules, beyond top)
    merged.sort(key=lambda c: (snapped[c.representative].energy_per_atom if c.representative in snapped
                               else c.energy_per_atom, c.representative))
    counts: dict[str, int] = {}
    for s in outs:
        counts[s.status] = counts.get(s.status, 0) + 1
    res = SnapResult(clusters=merged, snapped=snapped, n_before=len(clusters), n_after=len(merged),
                     status_counts=dict(sorted(counts.items())), wall_s=time.perf_counter() - t0, top=top)
    log.info("snap: %d clusters -> %d (%s), %.1f s", res.n_before, res.n_after, res.status_counts, res.wall_s)
    return res
