"""A cheap structural fingerprint that proposes candidate pairs for StructureMatcher.

The fingerprint of a periodic structure is its radial distribution per element pair,
in *scaled* distance ``x = d / L`` with ``L = (V/N)^(1/3)`` (the matcher compares
structures scaled to the same volume, so the fingerprint must not see the volume):

    f_ab(x_k) = (1/N) * sum over pairs (i in a, j in b, i != j or another image, d_ij < cutoff)
                of exp(-(x_k - d_ij/L)^2 / (2 sigma^2)) * taper(d_ij/L)

sampled on a grid ``x_k`` of spacing :data:`FP_GRID_STEP` from 0 to :data:`FP_CUTOFF`
(in units of L), multiplied by ``sqrt(FP_GRID_STEP)`` so that the Euclidean distance of
two fingerprints approximates the L2 distance of the two functions. It is invariant to
translation, rotation, atom order and supercells (counts per atom), computed once per
structure from its Niggli cell (numpy, ~0.3 ms for 12 atoms).

Two structures are *candidates* when their fingerprint distance is at most
:data:`FP_RADIUS` (0.3). The radius is a rule, not a theorem: it asks "the same minimum?",
which is narrower than StructureMatcher's tolerances (``stol`` 0.5 = atoms anywhere within
about half an interatomic distance, ``ltol`` 0.3 = 30 % strain; those admit pairs whose
radial distributions differ as much as distinct polymorphs'). Measured on the first 3,000
results of a native carbon search (2-12 atoms), for every pair sent to the matcher with the
radius at 0.6: pairs it calls equal are bimodal, 75 % within 0.05 (repeat hits of one
minimum, energies within 0.1 meV/atom) and the rest spread over 0.3-0.6 with energies 4-20
meV/atom apart (distinct minima the loose matcher joins); 98 % of the pairs it calls
different lie beyond 0.3. At 0.3 the dedupe sends 154 pairs to the matcher instead of 1,713,
finds 2,054 clusters instead of 1,893, and its largest candidate group holds 152 structures
instead of 2,302 (so the groups run in parallel). Repeat hits as relaxations leave them
(rattled 0.003 L, strained 0.5 %: tests/test_analysis_fingerprint.py) lie within it; diamond
and lonsdaleite are 2.3 apart. ``--fp-radius 0.6`` follows the matcher's own reach (copies
rattled by 0.015 L or strained by 2 % lie within ~0.5), ``--fp-radius 0`` is the plain rule
(every pair in neighbouring energy/volume bins). The agreement of the rules is measured by
benchmarks/bench_analyze.py (BENCHMARKS.md).

:func:`candidate_components` splits one composition group into groups that can never
share a candidate pair (for parallel clustering within a composition): leaders at
``radius / 8`` within one energy/volume bin collapse repeat hits, a
``scipy.spatial.cKDTree`` over leaders finds pairs within ``radius + 2 radius / 8`` in
neighbouring bins, and the connected components are the groups.
"""

from __future__ import annotations

import numpy as np

#: Cutoff of the radial distribution, in units of L = (V/N)^(1/3).
FP_CUTOFF = 2.2
#: Gaussian broadening, in units of L (0.1 L = 0.18 A in diamond).
FP_SIGMA = 0.1
#: Grid spacing of the sampled distribution, in units of L.
FP_GRID_STEP = 0.05
#: Largest fingerprint distance of a candidate pair (per atom counts x sqrt(L units)); see the module doc.
FP_RADIUS = 0.3

_GRID = np.arange(0.0, FP_CUTOFF + 1e-9, FP_GRID_STEP)
_REACH = FP_CUTOFF + 3.0 * FP_SIGMA  # distances beyond this contribute nothing on the grid


def fingerprint_settings() -> dict[str, float]:
    """The fingerprint's parameters (units of L = (V/N)^(1/3)) for the report."""
    return {"cutoff_L": FP_CUTOFF, "sigma_L": FP_SIGMA, "grid_step_L": FP_GRID_STEP}


def _taper(x: np.ndarray) -> np.ndarray:
    """1 below FP_CUTOFF - 3 sigma, a cosine down to 0 at FP_CUTOFF + 3 sigma (smooth at the cutoff)."""
    lo = FP_CUTOFF - 3.0 * FP_SIGMA
    t = np.clip((x - lo) / (_REACH - lo), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def pair_channels(elements: np.ndarray) -> list[tuple[int, int]]:
    """Element pairs (Z_a <= Z_b) of a composition, in fingerprint order."""
    z = sorted(int(e) for e in np.unique(elements))
    return [(a, b) for i, a in enumerate(z) for b in z[i:]]


def fingerprint(numbers: np.ndarray, cell: np.ndarray, frac: np.ndarray,
                channels: list[tuple[int, int]] | None = None) -> np.ndarray:
    """The fingerprint (see module doc) of a periodic structure.

    ``cell`` (3, 3) rows are lattice vectors (A), best Niggli-reduced (fewer images);
    ``frac`` (n_atoms, 3) fractional coordinates in it. ``channels``: element pairs to
    include (default: those of the structure); the same list must be used for all
    structures that are compared. Returns a 1-D float array of len(channels) * len(grid).
    """
    numbers = np.asarray(numbers)
    n = len(numbers)
    channels = channels if channels is not None else pair_channels(numbers)
    cell = np.asarray(cell, dtype=float)
    length = (abs(np.linalg.det(cell)) / n) ** (1.0 / 3.0)
    cell_x = cell / length  # scaled: V/N = 1
    recip = np.linalg.inv(cell_x).T  # rows: reciprocal vectors without 2 pi; 1/|b_i| = layer spacing
    reach = np.ceil(_REACH * np.linalg.norm(recip, axis=1)).astype(int)
    shifts = np.stack(np.meshgrid(*(np.arange(-m, m + 1) for m in reach), indexing="ij"), -1).reshape(-1, 3)
    frac = np.asarray(frac, dtype=float) % 1.0
    dfrac = frac[None, :, :] - frac[:, None, :]  # (i, j, 3): j - i
    vec = (dfrac[:, :, None, :] + shifts[None, None, :, :]) @ cell_x  # (i, j, image, 3)
    dist = np.linalg.norm(vec, axis=-1)
    i, j, _ = np.nonzero((dist < _REACH) & (dist > 1e-8))
    x = dist[(dist < _REACH) & (dist > 1e-8)]
    zi, zj = numbers[i], numbers[j]
    za, zb = np.minimum(zi, zj), np.maximum(zi, zj)
    weight = _taper(x) / n
    gauss = np.exp(-0.5 * ((_GRID[None, :] - x[:, None]) / FP_SIGMA) ** 2) * weight[:, None]  # (pairs, grid)
    out = np.zeros((len(channels), len(_GRID)))
    for c, (a, b) in enumerate(channels):
        sel = (za == a) & (zb == b)
        if sel.any():
            out[c] = gauss[sel].sum(axis=0)
    return (out * np.sqrt(FP_GRID_STEP)).ravel()


def fingerprint_of(numbers: np.ndarray, cell: np.ndarray, positions: np.ndarray,
                   channels: list[tuple[int, int]] | None = None) -> np.ndarray:
    """:func:`fingerprint` of a structure given by Cartesian ``positions`` (A) in any cell."""
    from rmsearch.analysis.quick import niggli_cell

    ncell = niggli_cell(cell)
    frac = np.linalg.solve(ncell.T, np.asarray(positions, dtype=float).T).T
    return fingerprint(numbers, ncell, frac, channels)


def candidate_components(fps: np.ndarray, bins: np.ndarray, radius: float) -> np.ndarray:
    """Labels 0..k-1 of groups such that two structures that can be candidates share a group.

    ``fps`` (n, dim) fingerprints, ``bins`` (n, 2) integer energy and volume bins; a pair
    can be a candidate when its fingerprint distance is at most ``radius`` and its bins
    differ by at most 1 each. Repeat hits are collapsed first (leaders within one bin at
    ``radius / 8``: every structure lies that close to its leader), then a cKDTree over the
    leaders finds pairs within ``radius + 2 radius / 8`` in neighbouring bins; groups are
    the connected components, numbered in order of their first structure.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(fps)
    if n == 0:
        return np.zeros(0, dtype=int)
    eps = radius / 8.0
    bins = np.asarray(bins, dtype=np.int64)
    leader_of = np.full(n, -1)
    leaders: list[int] = []
    _, bin_id = np.unique(bins, axis=0, return_inverse=True)
    for members in np.split(np.argsort(bin_id.ravel(), kind="stable"),
                            np.cumsum(np.bincount(bin_id.ravel()))[:-1]):
        tree = cKDTree(fps[members])
        for pos, i in enumerate(members):
            if leader_of[i] >= 0:
                continue
            ball = members[np.asarray(tree.query_ball_point(fps[i], eps), dtype=int)]
            ball = ball[leader_of[ball] < 0]
            leader_of[ball] = len(leaders)
            leader_of[i] = len(leaders)
            leaders.append(i)
    lead = np.asarray(leaders)
    pairs = cKDTree(fps[lead]).query_pairs(radius + 2.0 * eps, output_type="ndarray")
    if len(pairs):
        near = (np.abs(bins[lead[pairs[:, 0]]] - bins[lead[pairs[:, 1]]]) <= 1).all(axis=1)
        pairs = pairs[near]
    m = len(lead)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    _, first, labels = np.unique(comp[leader_of], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # number groups by their first structure
    return order[labels]
