"""Noisy frames around a reference structure: cell strain + cell noise, then position noise.

DESIGN §2. For every strain ``s`` (crystals only), noise level ``l`` and copy:

- cell: ``L = L0 (1 + s) + (U(3,3) - 0.5) * a * cell_noise`` with ``a`` the mean lattice
  vector length of ``L0`` (A). The frame with ``s = 0`` and ``l = 0`` (first copy) is the
  reference itself, without cell noise: the training set always contains the exact
  minimum with zero labels.
- positions: the reference's fractional coordinates carried into ``L``, plus
  ``d = l * step_size * (U(n_atoms, 3) - 0.5)`` (A) per Cartesian component; the result is
  wrapped into the cell.

Molecules get position noise only. All randomness comes from the ``rng`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class NoiseParams:
    """Perturbation parameters.

    Attributes:
        levels: position-noise levels; level 0 is the unperturbed frame.
        step_size: position noise per level (A); max displacement per component is
            ``max(levels) * step_size / 2``.
        strains: isotropic cell strains (dimensionless); ignored for molecules; none (the
            molecule preset applied to a crystal) gives the unstrained cell only.
        cell_noise: amplitude of the random cell noise in units of the cell length.
        copies: independent noise draws per (strain, level).
    """

    levels: tuple[float, ...] = (0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 32)
    step_size: float = 0.05
    strains: tuple[float, ...] = tuple(np.round(np.linspace(-0.1, 0.1, 11), 10))
    cell_noise: float = 0.1
    copies: int = 1


@dataclass
class Frames:
    """Noisy frames of one reference structure (arrays with a leading frame axis).

    Attributes:
        positions: ``(n_frames, n_atoms, 3)`` (A), wrapped into the cell for crystals.
        cells: ``(n_frames, 3, 3)`` (A); identity matrices for molecules.
        noise_level: ``(n_frames,)`` level of each frame.
        strain: ``(n_frames,)`` isotropic strain of each frame (0 for molecules).
        ref_scaled: ``(n_atoms, 3)`` fractional coordinates of the reference (Cartesian
            for molecules).
        ref_cell: ``(3, 3)`` reference cell (identity for molecules).
        pbc: ``(3,)``.
    """

    positions: np.ndarray
    cells: np.ndarray
    noise_level: np.ndarray
    strain: np.ndarray
    ref_scaled: np.ndarray
    ref_cell: np.ndarray
    pbc: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


def perturb(reference: Atoms, params: NoiseParams, rng: np.random.Generator) -> Frames:
    """Generate the noisy frames of one reference structure.

    Args:
        reference: a crystal (all three directions periodic) or a molecule (no
            periodic direction).
        params: noise parameters.
        rng: random generator; the same generator state gives the same frames.
    """
    periodic = bool(reference.pbc.any())
    n_atoms = len(reference)
    levels = np.asarray(params.levels, dtype=float)
    strains = np.asarray(params.strains if periodic and params.strains else (0.0,), dtype=float)
    grid_s, grid_l, _ = np.meshgrid(strains, levels, np.arange(params.copies), indexing="ij")
    strain, level = grid_s.ravel(), grid_l.ravel()
    n_frames = len(level)

    if periodic:
        ref_cell = np.array(reference.cell, dtype=float)
        ref_scaled = reference.get_scaled_positions(wrap=False)
        a = np.linalg.norm(ref_cell, axis=1).mean()
        cells = ref_cell[None] * (1.0 + strain[:, None, None])
        cells = cells + (rng.random((n_frames, 3, 3)) - 0.5) * a * params.cell_noise
        exact = np.flatnonzero((strain == 0) & (level == 0))[:1]
        cells[exact] = ref_cell
    else:
        ref_cell = np.eye(3)
        ref_scaled = reference.positions.copy()
        cells = np.broadcast_to(np.eye(3), (n_frames, 3, 3)).copy()

    noise = level[:, None, None] * params.step_size * (rng.random((n_frames, n_atoms, 3)) - 0.5)
    positions = ref_scaled @ cells + noise
    if periodic:
        positions = ((positions @ np.linalg.inv(cells)) % 1.0) @ cells
    return Frames(positions=positions, cells=cells, noise_level=level, strain=strain,
                  ref_scaled=ref_scaled, ref_cell=ref_cell, pbc=np.array(reference.pbc, dtype=bool))
