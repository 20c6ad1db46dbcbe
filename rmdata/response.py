"""Response labels: the forces and stress of a harmonic well centred on a reference structure.

This module is the one place where the label formulas of Response Matching live
(B. Cheng, JCTC 2024; DESIGN §2). For a noisy frame with positions ``r`` in cell ``L``
whose reference has positions ``r0`` with fractional coordinates ``s0`` in cell ``L0``:

- Harmonic forces ``F_i = -k * dr_i`` (eV/A) with ``dr_i = r_i - s0_i L`` under the
  minimum-image convention (the reference carried into the noisy cell).
- Rigid-motion-free labels (default): an MLIP cannot produce a net force or torque, so
  ``dr`` is measured from the reference image nearest to the frame: the mean
  displacement is subtracted and, for molecules, ``r0`` is first rotated onto ``r``
  (Kabsch). ``raw=True`` keeps ``-k * dr`` exactly as the reference code does.
- Short-range repulsion between atoms of the noisy frame,
  ``g(r) = m (1 - r^2/rc^2)^n`` for ``r < rc`` (eV), force ``-grad g`` summed over pairs.
- Stress (crystals): Green-Lagrange strain of the cell change, ``M = L0^-1 L`` (rows are
  lattice vectors), ``eps = (M M^T - I)/2``, and ``sigma = C : eps`` with an isotropic
  stiffness (Young's modulus ``E`` in eV/A^3, Poisson ratio ``nu``). ASE sign convention:
  positive = tensile, so an expanded cell gets positive stress and a model trained on it
  pulls the cell back.
- A pseudo energy ``0.5 k sum |dr|^2 + sum g + V0/2 eps:C:eps`` (eV) whose negative
  position gradient is exactly the force label; written as ``REF_pseudo_energy``, never
  as a training energy.

Array shapes use a leading frame axis: positions ``(n_frames, n_atoms, 3)``, cells
``(n_frames, 3, 3)``. Pair forces are accumulated with ``np.add.at`` semantics (via
``np.bincount``) so repeated pair indices are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matscipy.neighbours import neighbour_list

# ---------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class LabelParams:
    """Parameters of the response labels.

    Attributes:
        k: harmonic spring constant (eV/A^2).
        rc: repulsion cutoff (A); 0 switches the repulsion off.
        rep_m: repulsion strength m (eV).
        rep_n: repulsion exponent n.
        youngs: Young's modulus E of the isotropic stiffness (eV/A^3).
        poisson: Poisson ratio nu.
        raw: keep the rigid-motion part of the labels (reference-code behaviour).
    """

    k: float = 1.0
    rc: float = 0.75
    rep_m: float = 1.0
    rep_n: int = 2
    youngs: float = 1.0
    poisson: float = 0.3
    raw: bool = False

    @property
    def lame(self) -> tuple[float, float]:
        """Lame constants (lambda, mu) in eV/A^3."""
        e, nu = self.youngs, self.poisson
        return e * nu / ((1 + nu) * (1 - 2 * nu)), e / (2 * (1 + nu))


# ---------------------------------------------------------------------------------------
# harmonic part


def minimum_image(dr: np.ndarray, cells: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Shortest periodic images of displacement vectors.

    Args:
        dr: displacements, shape ``(n_frames, n_atoms, 3)`` (A).
        cells: cells, shape ``(n_frames, 3, 3)``, rows are lattice vectors (A).
        pbc: periodic directions, shape ``(3,)``.

    Returns:
        The displacements replaced by their shortest image, same shape.

    Fractional coordinates are rounded first; a vector still longer than half the
    smallest lattice-plane spacing is compared with its 26 neighbouring images, which
    makes the result exact for displacements shorter than the smallest plane spacing,
    even in strongly skewed cells.
    """
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        return dr
    frac = dr @ np.linalg.inv(cells)
    frac[..., pbc] -= np.round(frac[..., pbc])
    rounded = frac @ cells
    # The rounded image is the shortest unless the vector is longer than half the
    # smallest lattice-plane spacing; only then compare the 27 neighbouring images.
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cells), axis=1)  # (n_frames, 3) plane spacings
    half = 0.5 * np.where(pbc, heights, np.inf).min(axis=1)
    check = np.einsum("fnc,fnc->fn", rounded, rounded) >= half[:, None] ** 2
    if not check.any():
        return rounded
    shifts = np.array(np.meshgrid(*[[-1, 0, 1] if p else [0] for p in pbc], indexing="ij"))
    shifts = shifts.reshape(3, -1).T  # (n_shift, 3)
    f_idx, n_idx = np.nonzero(check)
    cand = (frac[f_idx, n_idx][:, None, :] + shifts[None]) @ cells[f_idx]  # (n_check, n_shift, 3)
    best = np.argmin(np.einsum("ksd,ksd->ks", cand, cand), axis=1)
    rounded[f_idx, n_idx] = cand[np.arange(len(f_idx)), best]
    return rounded


def kabsch_rotation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rotations ``R`` (proper, det +1) minimising ``sum |p_i R - q_i|^2`` for centred p, q.

    Args:
        p, q: centred coordinates, shape ``(n_frames, n_atoms, 3)``.

    Returns:
        ``R`` of shape ``(n_frames, 3, 3)`` acting on row vectors (``p @ R``).
    """
    h = np.einsum("fni,fnj->fij", p, q)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", u, vt)))
    u[:, :, 2] *= d[:, None]
    return np.einsum("fij,fjk->fik", u, vt)


def rigid_free(disp: np.ndarray, positions: np.ndarray, ref_positions: np.ndarray,
               pbc: np.ndarray) -> np.ndarray:
    """Displacements measured from the reference image nearest to each frame.

    Args:
        disp: minimum-image displacements ``r - r0``, ``(n_frames, n_atoms, 3)`` (A).
        positions: noisy positions, ``(n_frames, n_atoms, 3)`` (A).
        ref_positions: reference positions in each frame's cell, same shape (A).
        pbc: ``(3,)`` periodic directions.

    Returns:
        ``(n_frames, n_atoms, 3)`` with zero mean; for non-periodic systems the reference
        is first rotated onto the frame (Kabsch), so ``-k dr`` carries no net force and
        no net torque, and ``0.5 k sum |dr|^2`` is minimal over rigid motions (its
        gradient is therefore ``k dr`` exactly).
    """
    dr = disp - disp.mean(axis=1, keepdims=True)
    if np.asarray(pbc).any() or positions.shape[1] < 2:
        return dr
    r_c = positions - positions.mean(axis=1, keepdims=True)
    r0_c = ref_positions - ref_positions.mean(axis=1, keepdims=True)
    rot = kabsch_rotation(r0_c, r_c)
    return r_c - np.einsum("fnc,fcd->fnd", r0_c, rot)


# ---------------------------------------------------------------------------------------
# repulsion


def repulsion(ref_positions: np.ndarray, ref_cell: np.ndarray, pbc: np.ndarray, cells: np.ndarray,
              disp: np.ndarray, params: LabelParams) -> tuple[np.ndarray, np.ndarray]:
    """Short-range repulsion forces (eV/A) and energies (eV) of all frames of one structure.

    ``g(r) = m (1 - r^2/rc^2)^n`` for ``r < rc``, summed over all pairs of a frame
    (periodic images included); the force on atom i is ``-dE/dr_i``.

    Frame f has positions ``r0 M_f + disp_f`` (modulo its lattice) with
    ``M_f = L0^-1 L_f``, so every pair vector of the frame is ``D0 M_f + disp_j - disp_i``
    for a pair vector ``D0`` of the reference. A pair can come closer than ``rc`` only if
    ``|D0| < (rc + 2 max|disp_f|) / s_min(M_f)`` (``s_min`` the smallest singular value),
    so one neighbour list of the reference at that reach finds every close pair of every
    frame exactly, and the rest is vectorised over frames.

    Args:
        ref_positions: reference positions, ``(n_atoms, 3)`` (A).
        ref_cell: ``(3, 3)`` reference cell (A) (identity for molecules).
        pbc: ``(3,)``.
        cells: ``(n_frames, 3, 3)`` frame cells (A) (identities for molecules).
        disp: minimum-image displacements of the frames from the reference carried into
            their cells, ``(n_frames, n_atoms, 3)`` (A).

    Returns:
        forces ``(n_frames, n_atoms, 3)`` and energies ``(n_frames,)``.
    """
    n_frames, n_atoms = disp.shape[:2]
    forces = np.zeros((n_frames, n_atoms, 3))
    energy = np.zeros(n_frames)
    if params.rc <= 0 or n_atoms == 0:
        return forces, energy
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.any():
        deform = np.einsum("ij,fjk->fik", np.linalg.inv(ref_cell), cells)
        s_min = np.linalg.svd(deform, compute_uv=False)[:, -1]
        cell = ref_cell
    else:
        deform = np.broadcast_to(np.eye(3), (n_frames, 3, 3))
        s_min = np.ones(n_frames)
    max_disp = np.sqrt(np.einsum("fnc,fnc->fn", disp, disp).max(axis=1))
    reach = float(np.max((params.rc + 2.0 * max_disp) / s_min))
    if not pbc.any():  # matscipy needs a cell; an inert box for the non-periodic case
        cell = np.diag(np.ptp(ref_positions, axis=0) + 2.0 * reach + 1.0)
    i, j, d0 = neighbour_list("ijD", positions=ref_positions, cell=np.asarray(cell, float),
                              pbc=pbc, cutoff=reach)
    if len(i) == 0:
        return forces, energy
    d = d0 @ deform + disp[:, j] - disp[:, i]  # (n_frames, n_pairs, 3)
    r2 = np.einsum("fpc,fpc->fp", d, d)
    f_idx, p_idx = np.nonzero(r2 < params.rc**2)
    if len(f_idx) == 0:
        return forces, energy
    x = 1.0 - r2[f_idx, p_idx] / params.rc**2
    # full neighbour list: every pair appears as (i, j) and (j, i), hence the 1/2
    energy += 0.5 * params.rep_m * np.bincount(f_idx, weights=x**params.rep_n, minlength=n_frames)
    # F_i = -dg/dr_i = -(2 m n x^(n-1) / rc^2) * (r_j - r_i)
    coef = -2.0 * params.rep_m * params.rep_n * x ** (params.rep_n - 1) / params.rc**2
    f_pair = coef[:, None] * d[f_idx, p_idx]
    flat = f_idx * n_atoms + i[p_idx]
    for c in range(3):  # bincount accumulates repeated indices (np.add.at semantics)
        forces[..., c] = np.bincount(flat, weights=f_pair[:, c], minlength=n_frames * n_atoms
                                     ).reshape(n_frames, n_atoms)
    return forces, energy


# ---------------------------------------------------------------------------------------
# stress


def green_lagrange(ref_cell: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Green-Lagrange strain ``(M M^T - I)/2`` with ``M = L0^-1 L`` (rows are lattice vectors).

    Args:
        ref_cell: ``(3, 3)`` reference cell (A).
        cells: ``(n_frames, 3, 3)`` deformed cells (A).

    Returns:
        ``(n_frames, 3, 3)`` dimensionless strain.
    """
    m = np.einsum("ij,fjk->fik", np.linalg.inv(ref_cell), cells)
    return 0.5 * (np.einsum("fij,fkj->fik", m, m) - np.eye(3))


def elastic_stress(strain: np.ndarray, params: LabelParams) -> np.ndarray:
    """Isotropic linear-elastic stress ``sigma = lambda tr(eps) I + 2 mu eps`` (eV/A^3).

    Positive = tensile (ASE convention). Shape ``(n_frames, 3, 3)``.
    """
    lam, mu = params.lame
    tr = np.trace(strain, axis1=1, axis2=2)
    return lam * tr[:, None, None] * np.eye(3) + 2.0 * mu * strain


# ---------------------------------------------------------------------------------------
# all labels of a batch of frames of one reference structure


@dataclass
class Labels:
    """Labels of ``n_frames`` frames of one reference structure.

    Attributes:
        forces: ``(n_frames, n_atoms, 3)`` (eV/A).
        stress: ``(n_frames, 3, 3)`` (eV/A^3), or None for non-periodic systems.
        pseudo_energy: ``(n_frames,)`` (eV).
    """

    forces: np.ndarray
    stress: np.ndarray | None
    pseudo_energy: np.ndarray


def compute_labels(positions: np.ndarray, cells: np.ndarray, pbc: np.ndarray,
                   ref_scaled: np.ndarray, ref_cell: np.ndarray, params: LabelParams) -> Labels:
    """Response labels of a batch of noisy frames of one reference structure.

    Args:
        positions: noisy positions, ``(n_frames, n_atoms, 3)`` (A).
        cells: noisy cells, ``(n_frames, 3, 3)`` (A).
        pbc: ``(3,)``; all False for a molecule (no stress).
        ref_scaled: fractional coordinates of the reference, ``(n_atoms, 3)``; for
            non-periodic systems pass Cartesian positions and an identity ``ref_cell``
            (then ``cells`` must be identities too).
        ref_cell: ``(3, 3)`` reference cell (A).
        params: label parameters.
    """
    pbc = np.asarray(pbc, dtype=bool)
    ref_positions = ref_scaled @ cells
    disp = minimum_image(positions - ref_positions, cells, pbc)
    dr = disp if params.raw else rigid_free(disp, positions, ref_positions, pbc)
    forces = -params.k * dr
    energy = 0.5 * params.k * np.einsum("fnc,fnc->f", dr, dr)
    f_rep, e_rep = repulsion(ref_scaled @ ref_cell, ref_cell, pbc, cells, disp, params)
    forces += f_rep
    energy += e_rep
    stress = None
    if pbc.any():
        strain = green_lagrange(ref_cell, cells)
        stress = elastic_stress(strain, params)
        volume0 = abs(np.linalg.det(ref_cell))
        energy = energy + 0.5 * volume0 * np.einsum("fij,fij->f", stress, strain)
    return Labels(forces=forces, stress=stress, pseudo_energy=energy)
