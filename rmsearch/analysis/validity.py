"""Validity of a final structure, checked before anything is ranked.

A potential trained on response labels can have spurious minima with atoms far too close
(0.5 A apart) or a cell blown up to vacuum. Such structures are *invalid*: counted and
shown apart in the report, never ranked.

Rules (both documented defaults, change them per call):

- **too close**: two atoms (periodic images included) closer than ``frac`` times the sum
  of their covalent radii (``ase.data.covalent_radii``, A). Default ``frac = 0.7``:
  a C-C pair below 1.06 A, a Li-S pair below 1.63 A is invalid.
- **exploded**: periodic structures whose volume per atom exceeds ``max_volume_factor``
  (default 20) times the mean covalent-sphere volume ``4/3 pi r_cov^3`` of its atoms;
  for carbon 37 A^3/atom (graphite has 8.8), for Li-S about 140 A^3/atom. Non-finite
  positions or cell are invalid too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

DEFAULT_FRAC = 0.7
DEFAULT_MAX_VOLUME_FACTOR = 20.0

#: Largest (atoms^2 x periodic images) for the dense numpy pair search of :func:`close_pairs`;
#: beyond it ASE's linear-scaling neighbour list takes over.
DENSE_PAIR_LIMIT = 2_000_000


def close_pairs(atoms: Atoms, cutoffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, d)`` with ``d < cutoffs[i] + cutoffs[j]`` (A), periodic images included, as
    ``ase.neighborlist.neighbor_list("ijd", atoms, cutoffs, self_interaction=False)`` lists them.

    Small cells (a search's 2-50 atoms) take a dense numpy search over every image within
    reach: ~0.1 ms instead of ASE's ~9 ms, whose set-up dominates for a few atoms; large ones
    go to ASE. Pairs come sorted by ``i``, then ``j``.
    """
    cutoffs = np.asarray(cutoffs, dtype=float)
    n = len(atoms)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    pos = atoms.get_positions()
    reach = 2.0 * float(cutoffs.max()) if n else 0.0
    cell = np.asarray(atoms.cell, dtype=float)
    shifts = np.zeros((1, 3))
    if pbc.all():
        from rmsearch.analysis.quick import niggli_cell

        cell = niggli_cell(cell)  # the same lattice, fewest images within reach
        # images needed along axis k: |frac diff + shift| < reach |b_k|, with frac diff in (-1, 1)
        recip = np.linalg.inv(cell).T  # rows b_k, a_i . b_k = delta_ik; 1/|b_k| = layer spacing
        nmax = np.ceil(reach * np.linalg.norm(recip, axis=1)).astype(int) + 1
        big = n * n * int(np.prod(2 * nmax + 1)) > DENSE_PAIR_LIMIT
        if not big:
            pos = ((pos @ recip.T) % 1.0) @ cell
            shifts = np.stack(np.meshgrid(*(np.arange(-m, m + 1) for m in nmax), indexing="ij"),
                              -1).reshape(-1, 3).astype(float)
    else:
        big = pbc.any() or n * n > DENSE_PAIR_LIMIT  # partly periodic cells are rare: ASE handles them
    if big:
        return neighbor_list("ijd", atoms, cutoffs.tolist(), self_interaction=False)
    vec = pos[None, :, None, :] - pos[:, None, None, :] + (shifts @ cell)[None, None, :, :]  # (i, j, image, 3)
    dist = np.sqrt(np.einsum("ijsk,ijsk->ijs", vec, vec))
    within = dist < (cutoffs[:, None] + cutoffs[None, :])[:, :, None]
    within[np.arange(n), np.arange(n), len(shifts) // 2] = False  # no self pair at zero shift (the middle one)
    i, j, s = np.nonzero(within)
    return i, j, dist[i, j, s]


@dataclass(frozen=True)
class Validity:
    """Outcome of :func:`check_validity`; ``reason`` is empty for valid structures."""

    valid: bool
    reason: str = ""
    min_ratio: float = math.inf  # smallest d_ij / (r_i + r_j) among close pairs


def check_validity(atoms: Atoms, *, frac: float = DEFAULT_FRAC,
                   max_volume_factor: float = DEFAULT_MAX_VOLUME_FACTOR) -> Validity:
    """Check one structure against the too-close and exploded-volume rules (see module doc)."""
    if not (0.0 < frac < 2.0):
        raise ValueError(f"frac={frac} must be in (0, 2): a fraction of the covalent radii sum")
    pos = atoms.get_positions()
    cell = np.asarray(atoms.cell)
    if not (np.isfinite(pos).all() and np.isfinite(cell).all()):
        return Validity(False, "non-finite positions or cell")
    radii = covalent_radii[atoms.numbers]
    if atoms.pbc.any():
        vol = abs(atoms.get_volume()) if atoms.pbc.all() else math.nan
        if atoms.pbc.all():
            limit = max_volume_factor * float(np.mean(4.0 / 3.0 * math.pi * radii**3))
            if vol < 1e-6:
                return Validity(False, "degenerate cell (zero volume)")
            if vol / len(atoms) > limit:
                return Validity(False, f"exploded volume {vol / len(atoms):.1f} A^3/atom > {limit:.1f}")
    # pairs closer than frac * (r_i + r_j): a per-atom cutoff of frac * r_i does exactly that
    i, j, d = close_pairs(atoms, frac * radii)
    if len(d):
        ratio = d / (radii[i] + radii[j])
        k = int(np.argmin(ratio))
        sym = atoms.get_chemical_symbols()
        return Validity(False, f"atoms {i[k]} ({sym[i[k]]}) and {j[k]} ({sym[j[k]]}) {d[k]:.2f} A apart "
                               f"< {frac} x covalent radii sum", float(ratio[k]))
    return Validity(True)


def min_distance(atoms: Atoms, cutoff: float = 3.0) -> float:
    """Smallest interatomic distance (A) including periodic images; ``inf`` if none below ``cutoff``."""
    d = close_pairs(atoms, np.full(len(atoms), cutoff / 2.0))[2]
    return float(d.min()) if len(d) else math.inf


def split_valid(records: Iterable[Any], *, frac: float = DEFAULT_FRAC,
                max_volume_factor: float = DEFAULT_MAX_VOLUME_FACTOR) -> tuple[list[int], list[dict[str, Any]]]:
    """Split converged run records into valid run ids and invalid entries.

    ``records``: :class:`rmsearch.records.RunRecord` (anything with ``run_id``, ``formula``
    and ``to_atoms()``), checked one ``Atoms`` at a time with :func:`check_validity`.
    Returns ``(valid_ids, invalid)``, ``invalid`` as ``{"run_id", "formula", "reason"}``
    dicts (the report's ``invalid`` list), both in the order of ``records``.
    """
    valid_ids, invalid = [], []
    for rec in records:
        check = check_validity(rec.to_atoms(), frac=frac, max_volume_factor=max_volume_factor)
        if check.valid:
            valid_ids.append(rec.run_id)
        else:
            invalid.append({"run_id": rec.run_id, "formula": rec.formula, "reason": check.reason})
    return valid_ids, invalid
