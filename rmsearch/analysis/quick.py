"""The quick exact-duplicate test of the dedupe (:func:`quick_same`): pairs of periodic
structures that are obviously the same, accepted without StructureMatcher.

Two structures are quick-same when their Niggli cells are equal within :data:`QUICK_LTOL` in
length and :data:`QUICK_ANGLE_TOL` in angle up to a proper change of basis and, after one
translation, every atom lies within ``QUICK_DTOL (V/N)^(1/3)`` of an atom of the same element
in the other (a bijection). Such pairs are far inside StructureMatcher's tolerances (``stol``
0.5, ``ltol`` 0.3, ``angle_tol`` 10), so the matcher would accept them too: the test only
saves its calls. :func:`quick_form` makes the Niggli form once per structure (of its cell as
found, or of spglib's primitive cell, so that a minimum found in cells of different sizes is
caught as well).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUICK_LTOL = 0.02  # relative Niggli cell length tolerance of the quick test
QUICK_ANGLE_TOL = 1.0  # degrees
QUICK_DTOL = 0.1  # atom displacement tolerance of the quick test, in units of (V/N)^(1/3)
QUICK_SYMPREC = 0.05  # A: spglib tolerance of the quick test's primitive cell (inside QUICK_DTOL: >= 0.1 A)


@dataclass
class QuickForm:
    """Niggli-reduced description of a structure for :func:`quick_same`.

    ``params``: a, b, c (A), alpha, beta, gamma (degrees); ``frac``: (n_atoms, 3) fractional
    coordinates in the Niggli cell ``cell`` (3, 3); ``length``: (V/N)^(1/3) in A.
    """

    params: np.ndarray
    cell: np.ndarray
    frac: np.ndarray
    numbers: np.ndarray
    length: float


def quick_form(numbers: np.ndarray, cell: np.ndarray, positions: np.ndarray, primitive: bool = False) -> QuickForm:
    """The :class:`QuickForm` of a periodic structure: its Niggli cell (spglib's reduction, in the
    structure's own orientation; ASE's where spglib gives none).

    ``cell`` (3, 3) rows are lattice vectors (A); ``positions`` (n_atoms, 3) Cartesian (A).
    ``primitive``: reduce the primitive cell (:func:`primitive_cell`) instead, so that the
    quick test can accept a minimum found in cells of different sizes (diamond in a 2- and an
    8-atom cell); it costs a symmetry search (~1-3 ms), so the dedupe makes it only for
    structures that have candidates.
    """
    from ase.geometry import cell_to_cellpar

    if primitive:
        numbers, cell, positions = primitive_cell(numbers, cell, positions)
    ncell = niggli_cell(cell)
    frac = np.linalg.solve(ncell.T, np.asarray(positions, float).T).T % 1.0
    return QuickForm(params=cell_to_cellpar(ncell), cell=ncell, frac=frac, numbers=np.asarray(numbers),
                     length=(abs(np.linalg.det(ncell)) / len(numbers)) ** (1.0 / 3.0))


def niggli_cell(cell: np.ndarray) -> np.ndarray:
    """The Niggli-reduced basis (3, 3 rows, A) of a lattice, in the lattice's own orientation:
    spglib's reduction, ASE's where spglib gives none."""
    import spglib

    cell = np.asarray(cell, dtype=float)
    reduced = spglib.niggli_reduce(cell)
    if reduced is None:
        from ase.build.tools import niggli_reduce_cell

        reduced = niggli_reduce_cell(cell)[1].T @ cell  # ASE returns C with G_niggli = C^T G C
    return np.asarray(reduced, dtype=float)


def primitive_cell(numbers: np.ndarray, cell: np.ndarray, positions: np.ndarray,
                   symprec: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, cell, Cartesian positions) of the primitive cell spglib finds at ``symprec`` (A;
    0: :data:`QUICK_SYMPREC`), atoms where they are (no idealisation); the input where it finds none."""
    import spglib

    cell = np.asarray(cell, dtype=float)
    frac = np.linalg.solve(cell.T, np.asarray(positions, dtype=float).T).T
    try:
        out = spglib.standardize_cell((cell, frac, np.asarray(numbers)), to_primitive=True, no_idealize=True,
                                      symprec=symprec or QUICK_SYMPREC)
    except Exception:  # spglib raises on degenerate input in some versions
        out = None
    if out is None or len(out[2]) > len(numbers):
        return np.asarray(numbers), cell, np.asarray(positions, dtype=float)
    lat, fr, nums = (np.asarray(x) for x in out)
    return nums, lat, fr @ lat


#: The 26 nonzero integer vectors with entries -1, 0, 1: rows of candidate changes of basis.
_ROWS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                  if (i, j, k) != (0, 0, 0)], dtype=float)


_DET = np.round(np.einsum("ia,jb,kc,abc->ijk", _ROWS, _ROWS, _ROWS,
                          np.array([[[np.linalg.det(np.eye(3)[[a, b, c]]) for c in range(3)]
                                     for b in range(3)] for a in range(3)])))  # det of rows i, j, k


def _matching_bases(a_cell: np.ndarray, b_cell: np.ndarray) -> np.ndarray:
    """Changes of basis U (rows from :data:`_ROWS`, det +-1) with ``U b_cell`` metrically equal to ``a_cell``.

    Lengths must agree within QUICK_LTOL and angles within QUICK_ANGLE_TOL degrees; only
    proper ones (same handedness as ``a_cell``) are returned, shape (n_bases, 3, 3).
    """
    vecs = _ROWS @ b_cell  # (26, 3) lattice vectors of b
    lens = np.linalg.norm(vecs, axis=1)
    la = np.linalg.norm(a_cell, axis=1)
    choices = [np.flatnonzero(np.abs(lens / la[i] - 1.0) <= QUICK_LTOL) for i in range(3)]
    if any(len(c) == 0 for c in choices):
        return np.empty((0, 3, 3))
    cos_b = (vecs @ vecs.T) / np.outer(lens, lens)
    cos_a = (a_cell @ a_cell.T) / np.outer(la, la)
    sin_tol = np.sin(np.radians(QUICK_ANGLE_TOL))
    i, j, k = (g.ravel() for g in np.meshgrid(*choices, indexing="ij"))
    sign = np.sign(np.linalg.det(b_cell)) * np.sign(np.linalg.det(a_cell))
    ok = ((np.abs(cos_b[i, j] - cos_a[0, 1]) <= sin_tol) & (np.abs(cos_b[i, k] - cos_a[0, 2]) <= sin_tol)
          & (np.abs(cos_b[j, k] - cos_a[1, 2]) <= sin_tol) & (_DET[i, j, k] == sign))
    return np.stack([_ROWS[i[ok]], _ROWS[j[ok]], _ROWS[k[ok]]], axis=1)


def quick_same(a: QuickForm, b: QuickForm) -> bool:
    """True if ``b`` is obviously ``a`` moved, rotated, permuted and slightly perturbed.

    Tries every change of basis ``U`` (entries -1, 0, 1) of b's Niggli cell whose metric
    ``U G_b U^T`` equals a's within the quick tolerances and keeps the handedness (a
    rotation, never a mirror), then one translation per anchor atom. Never True for
    structures StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10) tells apart; False only
    means "not obvious".
    """
    n = len(a.numbers)
    if n != len(b.numbers) or not np.array_equal(np.sort(a.numbers), np.sort(b.numbers)):
        return False
    if (np.abs(np.sort(a.params[:3]) / np.sort(b.params[:3]) - 1.0) > 3 * QUICK_LTOL).any():
        return False  # Niggli lengths are the three shortest: cheap early exit
    bases = _matching_bases(a.cell, b.cell)
    if not len(bases):
        return False
    elems, counts = np.unique(a.numbers, return_counts=True)
    anchor_el = elems[np.argmin(counts)]
    i0 = int(np.flatnonzero(a.numbers == anchor_el)[0])
    same = a.numbers[:, None] == b.numbers[None, :]  # (n_a, n_b)
    dtol = QUICK_DTOL * a.length
    anchors = np.flatnonzero(b.numbers == anchor_el)
    for u in bases:
        fb = b.frac @ np.linalg.inv(u)  # b's fractional coordinates in the basis U b.cell
        for j in anchors:
            diff = a.frac[:, None, :] - (fb[None, :, :] + (a.frac[i0] - fb[j]))
            diff -= np.round(diff)
            dist = np.linalg.norm(diff @ a.cell, axis=-1)  # (n_a, n_b), A
            dist[~same] = np.inf
            nearest = dist.argmin(axis=1)
            if (dist.min(axis=1) < dtol).all() and len(np.unique(nearest)) == n:
                return True
    return False
