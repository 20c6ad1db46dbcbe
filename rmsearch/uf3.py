"""UF3 (ultra-fast force field) features and potential files: a two- plus three-body cubic
B-spline potential that LAMMPS evaluates natively (``pair_style uf3 3``, package ML-UF3).

Model (Xie et al., npj Comput. Mater. 9, 87, 2023), as LAMMPS implements it (shown for one
element; several elements give each element pair its own V2 and each centre element with
each unordered pair of neighbour elements its own V3, :class:`UF3Layout`):

    E = sum_i sum_{j != i} V2(r_ij)  +  sum_i sum_{j < k} V3(r_ij, r_ik, r_jk)
    V2(r) = sum_n c_n B_n(r),   V3 = sum_{l,m,n} c_lmn B_l(r_ij) B_m(r_ik) B_n(r_jk)

The two-body sum runs over *ordered* pairs (each pair twice, as LAMMPS does), the
three-body sum over centres i and unordered pairs of neighbours j, k with r_ij, r_ik
below the three-body cutoff rc3 (r_jk is not cut: it spans [0, 2 rc3]). B_n are cubic
B-splines on clamped, uniform knots from 0 to the cutoff; the last three two-body
coefficients and the last three (ij and ik) three-body coefficients are fixed at zero,
so energy, force and curvature go to zero at the cutoffs. ``c_lmn`` is symmetric in
(l, m) (LAMMPS reads only its upper triangle), so the fit uses one column per l <= m.

The model is linear in the coefficients: :func:`energy_row` returns the energy features
(ncol,) of a structure, :func:`feature_rows` the force block (3N, ncol) and the virial
block (3, 3, ncol) (``W = -V sigma``, eV;
sigma in ASE's sign) from an ASE neighbour list, vectorised over pairs and triplets
(sparse incidence matrices scatter them onto atoms). :func:`write_potential` writes the
single-file format of LAMMPS' ML-UF3 package (2B and 3B blocks, ``nk`` knots; one 3B block
per centre I and neighbours J <= K, which LAMMPS transposes for I K J).
:class:`UF3Settings` and :class:`UF3Descriptors` plug it into the native fit
(:mod:`rmsearch.fitting`, ``rmsearch fit-native --kind uf3``).

Why UF3 as the fast native path: with the three-body term cut at the first carbon shell
(2.2 A) one force call on 8 carbon atoms costs ~14 microseconds against ~1.5 ms for the
quadratic SNAP (2J = 6), and the fit takes seconds. Its limit, measured on the diamond
preset: fitted on response-matched labels alone, a two- plus three-body sum does not
learn to penalise over-coordination the way SNAP's quadratic bispectrum terms do, so
denser phases end below diamond; :mod:`rmsearch.distill` fixes that with a SNAP teacher
(README, "Native potentials").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list
from scipy import sparse
from scipy.interpolate import BSpline

from rmdata.errors import RMError
from rmsearch.engine import LammpsEngine, Potential
from rmsearch.fitting import Descriptors, FitSettings, setting, with_default, zbl_pair

#: Coefficients fixed at zero at the outer end of a cutoff (value, slope and curvature vanish).
TRAILING_ZEROS = 3


@dataclass
class UF3Basis:
    """Knots of one UF3 potential: two-body cutoff ``rc2`` (A) with ``n2`` uniform intervals,
    three-body cutoff ``rc3`` (A) with ``n3`` intervals on r_ij, r_ik and ``n3jk`` on r_jk
    (which spans 0 to 2 rc3)."""

    rc2: float = 4.0
    n2: int = 16
    rc3: float = 3.0
    n3: int = 6
    n3jk: int = 6

    def __post_init__(self) -> None:
        if not (self.rc2 > 0 and self.rc3 > 0):
            raise RMError(f"UF3 cutoffs rc2={self.rc2!r}, rc3={self.rc3!r}: must be > 0 (A)")
        if self.rc3 > self.rc2:
            raise RMError(f"UF3 cutoffs: rc3={self.rc3!r} must not exceed rc2={self.rc2!r} "
                          "(LAMMPS only forms triplets within the two-body cutoff)")
        for name in ("n2", "n3", "n3jk"):
            if getattr(self, name) < 1:
                raise RMError(f"UF3 setting {name}={getattr(self, name)!r}: must be >= 1 interval")

    @staticmethod
    def knots(cutoff: float, intervals: int) -> np.ndarray:
        """Clamped uniform cubic knots on [0, cutoff] (A): ends repeated four times."""
        inner = np.linspace(0.0, cutoff, intervals + 1)
        return np.concatenate([[0.0] * 3, inner, [cutoff] * 3])

    @property
    def t2(self) -> np.ndarray:
        return self.knots(self.rc2, self.n2)

    @property
    def t3(self) -> np.ndarray:
        return self.knots(self.rc3, self.n3)

    @property
    def t3jk(self) -> np.ndarray:
        return self.knots(2.0 * self.rc3, self.n3jk)

    @property
    def nb2(self) -> int:
        """Number of two-body basis functions (coefficients in the file)."""
        return self.n2 + 3

    @property
    def nb3(self) -> int:
        return self.n3 + 3

    @property
    def nb3jk(self) -> int:
        return self.n3jk + 3

    @property
    def free2(self) -> int:
        """Fitted two-body coefficients (the trailing ones are zero)."""
        return max(self.nb2 - TRAILING_ZEROS, 0)

    @property
    def free3(self) -> int:
        return max(self.nb3 - TRAILING_ZEROS, 0)

    @property
    def pairs_lm(self) -> tuple[np.ndarray, np.ndarray]:
        """(l, m) index pairs with l <= m < free3: the symmetric three-body columns."""
        return np.triu_indices(self.free3)

    @property
    def n_columns(self) -> int:
        return self.free2 + len(self.pairs_lm[0]) * self.nb3jk


def _basis(t: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and first derivatives (per A) of all cubic B-splines on knots ``t`` at ``r``:
    two arrays of shape (len(r), len(t) - 4)."""
    nb = len(t) - 4
    spline = BSpline(t, np.eye(nb), 3, extrapolate=False)
    r = np.clip(r, t[0], t[-1])
    b = np.nan_to_num(spline(r))
    db = np.nan_to_num(spline.derivative()(r))
    return b, db


def _scatter(n_atoms: int, rows: list[tuple[np.ndarray, float]], values: np.ndarray) -> np.ndarray:
    """Sum ``sign * values[t]`` into atom ``atoms[t]`` for each (atoms, sign) in ``rows``:
    ``values`` (T, k) -> (n_atoms, k), through one sparse incidence matrix."""
    t = values.shape[0]
    idx = np.concatenate([a for a, _ in rows])
    col = np.tile(np.arange(t), len(rows))
    val = np.concatenate([np.full(t, s) for _, s in rows])
    inc = sparse.csr_matrix((val, (idx, col)), shape=(n_atoms, t))
    return np.asarray(inc @ values)


def _triplets(ii: np.ndarray, dist: np.ndarray, rc3: float) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour-list entries (p, q) of every three-body triplet: same centre ``ii``, both
    within ``rc3`` (A), each unordered pair of neighbours once (p before q)."""
    inner = np.flatnonzero(dist <= rc3)
    centre = ii[inner]
    order = np.argsort(centre, kind="stable")
    inner, centre = inner[order], centre[order]
    ends = np.searchsorted(centre, centre, side="right")
    partners = ends - np.arange(len(inner)) - 1  # entries after p in the same centre
    total = int(partners.sum())
    p = np.repeat(np.arange(len(inner)), partners)
    q = p + 1 + (np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners))
    return inner[p], inner[q]


def _sym_lm(a: np.ndarray, b: np.ndarray, basis: UF3Basis) -> np.ndarray:
    """a_l b_m + a_m b_l for l < m, a_l b_l on the diagonal: (T, n_lm), the symmetric
    three-body columns of per-triplet r_ij and r_ik basis values ``a``, ``b``."""
    lidx, midx = basis.pairs_lm
    out = a[:, lidx] * b[:, midx] + a[:, midx] * b[:, lidx]
    out[:, lidx == midx] *= 0.5
    return out


def _lm(a: np.ndarray, b: np.ndarray, basis: UF3Basis, symmetric: bool) -> np.ndarray:
    """The (l, m) columns of a three-body block: :func:`_sym_lm` when both neighbours are of
    one element, else every a_l b_m (T, free3^2; l for r_ij, m for r_ik)."""
    if symmetric:
        return _sym_lm(a, b, basis)
    return (a[:, :, None] * b[:, None, :]).reshape(len(a), -1)


@dataclass(frozen=True)
class UF3Layout:
    """The coefficient blocks of a UF3 potential over ``elements`` (sorted, as the
    potential's atom types), all sharing the knots of ``basis``.

    Two-body: one block of ``free2`` columns per unordered element pair (A, B), A <= B.
    Three-body: one block per centre element I and unordered neighbour pair J <= K; with
    J == K it is symmetric in (l, m) (``n_lm * nb3jk`` columns), else full (``free3^2 *
    nb3jk``; l for the J neighbour). Columns: all pair blocks, then all triple blocks, in
    this order; one element is the single-element layout. The count grows as n_el^2 free2 / 2
    + n_el^3 free3^2 nb3jk / 2: keep ``n3`` small for many elements (``fit-native --help``).
    """

    basis: UF3Basis
    elements: tuple[str, ...]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.elements)
        return [(a, b) for a in range(n) for b in range(a, n)]

    @property
    def triples(self) -> list[tuple[int, int, int]]:
        n = len(self.elements)
        return [(i, j, k) for i in range(n) for j in range(n) for k in range(j, n)]

    def triple_width(self, j: int, k: int) -> int:
        b = self.basis
        return (len(b.pairs_lm[0]) if j == k else b.free3 ** 2) * b.nb3jk

    @cached_property
    def offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Start column of each pair block, indexed [A, B] (both orders), and of each triple
        block, indexed [I, J, K] (both neighbour orders); computed once per layout (read-only)."""
        n = len(self.elements)
        pair = np.zeros((n, n), dtype=int)
        triple = np.zeros((n, n, n), dtype=int)
        col = 0
        for a, b in self.pairs:
            pair[a, b] = pair[b, a] = col
            col += self.basis.free2
        for i, j, k in self.triples:
            triple[i, j, k] = triple[i, k, j] = col
            col += self.triple_width(j, k)
        pair.flags.writeable = triple.flags.writeable = False
        return pair, triple

    @property
    def n_columns(self) -> int:
        return len(self.pairs) * self.basis.free2 + sum(self.triple_width(j, k) for _, j, k in self.triples)

    def species(self, atoms: Atoms) -> np.ndarray:
        """Index into ``elements`` of each atom; a one-line RMError for an element not there."""
        index = {e: k for k, e in enumerate(self.elements)}
        symbols = atoms.get_chemical_symbols()
        missing = sorted(set(symbols) - set(index))
        if missing:
            raise RMError(f"element(s) {','.join(missing)} not in the UF3 potential ({','.join(self.elements)})")
        return np.array([index[s] for s in symbols], dtype=int)


def _layout(model: UF3Layout | UF3Basis, atoms: Atoms) -> UF3Layout:
    """``model`` itself, or the one-element layout of a basis for ``atoms`` (one element)."""
    if isinstance(model, UF3Layout):
        return model
    elements = sorted(set(atoms.get_chemical_symbols()))
    if len(elements) != 1:
        raise RMError(f"elements {','.join(elements)}: pass a UF3Layout for several elements")
    return UF3Layout(model, tuple(elements))


class _Geometry:
    """Neighbour pairs (ordered, within rc2) and three-body triplets (within rc3, the J
    neighbour's element <= the K neighbour's) of one structure, with their blocks."""

    def __init__(self, atoms: Atoms, layout: UF3Layout):
        basis = layout.basis
        self.n = len(atoms)
        sp = layout.species(atoms)
        self.ii, self.jj, self.dist, self.vec = neighbor_list("ijdD", atoms, basis.rc2)
        if len(self.ii) and self.dist.min() <= 0.0:
            raise RMError("two atoms on top of each other: UF3 features need distinct positions")
        pair_off, triple_off = layout.offsets
        self.pair_col = pair_off[sp[self.ii], sp[self.jj]]
        ep, eq = _triplets(self.ii, self.dist, basis.rc3)
        swap = sp[self.jj[ep]] > sp[self.jj[eq]]
        self.ep, self.eq = np.where(swap, eq, ep), np.where(swap, ep, eq)
        cj, ck = sp[self.jj[self.ep]], sp[self.jj[self.eq]]
        self.triple_col = triple_off[sp[self.ii[self.ep]], cj, ck]
        self.triple_sym = cj == ck

    def pair_blocks(self):
        """(start column, entry mask) of each two-body block present."""
        for col in np.unique(self.pair_col):
            yield int(col), self.pair_col == col

    def triple_blocks(self):
        """(start column, symmetric, triplet mask) of each three-body block present."""
        for col in np.unique(self.triple_col):
            mask = self.triple_col == col
            yield int(col), bool(self.triple_sym[mask][0]), mask


def energy_row(atoms: Atoms, model: UF3Layout | UF3Basis) -> np.ndarray:
    """Energy features (ncol,) of one structure (periodic or a molecule): E (eV) = row @
    coef, in the column order of :func:`feature_rows` (sums of the basis functions over
    pairs and triplets)."""
    layout = _layout(model, atoms)
    basis = layout.basis
    g = _Geometry(atoms, layout)
    row = np.zeros(layout.n_columns)
    if len(g.ii):
        b2 = _basis(basis.t2, g.dist)[0][:, : basis.free2]
        for col, m in g.pair_blocks():
            row[col: col + basis.free2] = b2[m].sum(axis=0)
    for col, sym, m in g.triple_blocks():
        ep, eq = g.ep[m], g.eq[m]
        b_ij = _basis(basis.t3, g.dist[ep])[0][:, : basis.free3]
        b_ik = _basis(basis.t3, g.dist[eq])[0][:, : basis.free3]
        b_jk = _basis(basis.t3jk, np.linalg.norm(g.vec[eq] - g.vec[ep], axis=1))[0]
        block = np.einsum("tl,tn->ln", _lm(b_ij, b_ik, basis, sym), b_jk).ravel()
        row[col: col + block.size] = block
    return row


def feature_rows(atoms: Atoms, model: UF3Layout | UF3Basis) -> tuple[np.ndarray, np.ndarray]:
    """Force block (3N, ncol) and virial block (3, 3, ncol) of one structure (periodic or a
    molecule; a molecule's virial is not used).

    Forces (eV/A) = block @ coef; virial ``W = -V sigma`` (eV) = block @ coef, with the
    column order of :class:`UF3Layout`. Vectorised over the neighbour list, one pass per
    block present.
    """
    layout = _layout(model, atoms)
    basis = layout.basis
    g = _Geometry(atoms, layout)
    n, ncol = g.n, layout.n_columns
    forces = np.zeros((n, 3, ncol))
    virial = np.zeros((3, 3, ncol))
    if len(g.ii) == 0:
        return forces.reshape(3 * n, ncol), virial
    unit = g.vec / g.dist[:, None]
    # two-body: E = sum over ordered pairs of V2(r); dE/dr_j = V2'(r) u, dE/dr_i = -V2'(r) u
    db2 = _basis(basis.t2, g.dist)[1][:, : basis.free2]
    for col, m in g.pair_blocks():
        c2 = unit[m][:, :, None] * db2[m][:, None, :]  # (P, 3, free2)
        cols = slice(col, col + basis.free2)
        forces[:, :, cols] = _scatter(n, [(g.ii[m], 1.0), (g.jj[m], -1.0)],
                                      c2.reshape(int(m.sum()), -1)).reshape(n, 3, -1)
        virial[:, :, cols] = -np.einsum("pa,pb,pk->abk", g.vec[m], unit[m], db2[m])
    # three-body: centres i, unordered neighbour pairs within rc3
    for col, sym, m in g.triple_blocks():
        ep, eq = g.ep[m], g.eq[m]
        total = len(ep)
        ci, cj, ck = g.ii[ep], g.jj[ep], g.jj[eq]
        d_ij, d_ik = g.vec[ep], g.vec[eq]
        d_jk = d_ik - d_ij
        r_ij, r_ik = g.dist[ep], g.dist[eq]
        r_jk = np.linalg.norm(d_jk, axis=1)
        if r_jk.min() <= 0.0:
            raise RMError("two atoms on top of each other: UF3 features need distinct positions")
        b_ij, db_ij = (x[:, : basis.free3] for x in _basis(basis.t3, r_ij))
        b_ik, db_ik = (x[:, : basis.free3] for x in _basis(basis.t3, r_ik))
        b_jk, db_jk = _basis(basis.t3jk, r_jk)
        # dE/dr_ij, dE/dr_ik, dE/dr_jk per triplet and column (T, n_lm * nb3jk)
        g_ij = (_lm(db_ij, b_ik, basis, sym)[:, :, None] * b_jk[:, None, :]).reshape(total, -1)
        g_ik = (_lm(b_ij, db_ik, basis, sym)[:, :, None] * b_jk[:, None, :]).reshape(total, -1)
        g_jk = (_lm(b_ij, b_ik, basis, sym)[:, :, None] * db_jk[:, None, :]).reshape(total, -1)
        u_ij = d_ij / r_ij[:, None]
        u_ik = d_ik / r_ik[:, None]
        u_jk = d_jk / r_jk[:, None]
        cols = slice(col, col + g_ij.shape[1])
        for axis in range(3):
            # force = -dE/dr: on i +g_ij u_ij + g_ik u_ik, on j -g_ij u_ij + g_jk u_jk,
            # on k -g_ik u_ik - g_jk u_jk
            a = g_ij * u_ij[:, axis, None]
            b = g_ik * u_ik[:, axis, None]
            c = g_jk * u_jk[:, axis, None]
            forces[:, axis, cols] = (_scatter(n, [(ci, 1.0), (cj, -1.0)], a)
                                     + _scatter(n, [(ci, 1.0), (ck, -1.0)], b)
                                     + _scatter(n, [(cj, 1.0), (ck, -1.0)], c))
        virial[:, :, cols] = -(np.einsum("ta,tb,tk->abk", d_ij, u_ij, g_ij)
                               + np.einsum("ta,tb,tk->abk", d_ik, u_ik, g_ik)
                               + np.einsum("ta,tb,tk->abk", d_jk, u_jk, g_jk))
    return forces.reshape(3 * n, ncol), virial


def coefficients(coef: np.ndarray, basis: UF3Basis, symmetric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Full two-body (nb2,) and three-body (nb3, nb3, nb3jk) coefficient arrays (eV) of a
    one-element potential's columns ``coef`` (free2 two-body, then one three-body block),
    trailing coefficients zero; the three-body block is symmetric in (l, m) unless
    ``symmetric`` is False (a J != K block, free3^2 * nb3jk columns)."""
    width = (len(basis.pairs_lm[0]) if symmetric else basis.free3 ** 2) * basis.nb3jk
    if coef.shape != (basis.free2 + width,):
        raise ValueError(f"expected {basis.free2 + width} coefficients, got {coef.shape}")
    c2 = np.zeros(basis.nb2)
    c2[: basis.free2] = coef[: basis.free2]
    c3 = np.zeros((basis.nb3, basis.nb3, basis.nb3jk))
    if symmetric:
        lidx, midx = basis.pairs_lm
        block = coef[basis.free2:].reshape(len(lidx), basis.nb3jk)
        c3[lidx, midx] = block
        c3[midx, lidx] = block
    else:
        c3[: basis.free3, : basis.free3] = coef[basis.free2:].reshape(basis.free3, basis.free3, basis.nb3jk)
    return c2, c3


def _numbers(values: np.ndarray) -> str:
    return " ".join(repr(float(v)) for v in values)


def write_potential(path, elements: str | Sequence[str], coef: np.ndarray, basis: UF3Basis,
                    header: str = "") -> None:
    """Write a UF3 potential file for ``pair_style uf3 3`` (``pair_coeff * * FILE E1 E2 ...``):
    a 2B block per element pair A <= B and a 3B block per centre I and neighbour pair J <= K
    (LAMMPS fills I K J by transposing), in the column order of :class:`UF3Layout`."""
    elements = (elements,) if isinstance(elements, str) else tuple(elements)
    layout = UF3Layout(basis, elements)
    if coef.shape != (layout.n_columns,):
        raise ValueError(f"expected {layout.n_columns} coefficients, got {coef.shape}")
    pair_off, triple_off = layout.offsets
    t2, t3, tjk = basis.t2, basis.t3, basis.t3jk
    tag = f"#UF3 POT UNITS: metal DATE: - AUTHOR: rmsearch fit-native CITATION: Xie et al. 2023 {header}".rstrip()
    lines = []
    two = basis.free2
    for a, b in layout.pairs:
        c2 = np.zeros(basis.nb2)
        c2[:two] = coef[pair_off[a, b]: pair_off[a, b] + two]
        lines += [tag, f"2B {elements[a]} {elements[b]} 0 3 nk", f"{basis.rc2!r} {len(t2)}", _numbers(t2),
                  str(len(c2)), _numbers(c2), "#"]
    for i, j, k in layout.triples:
        col = triple_off[i, j, k]
        block = coef[col: col + layout.triple_width(j, k)]
        _, c3 = coefficients(np.concatenate([np.zeros(two), block]), basis, symmetric=j == k)
        lines += [tag, f"3B {elements[i]} {elements[j]} {elements[k]} 0 3 nk",
                  f"{2.0 * basis.rc3!r} {basis.rc3!r} {basis.rc3!r} {len(tjk)} {len(t3)} {len(t3)}",
                  _numbers(tjk), _numbers(t3), _numbers(t3),
                  f"{c3.shape[0]} {c3.shape[1]} {c3.shape[2]}"]
        lines += [_numbers(row) for row in c3.reshape(-1, c3.shape[2])]
        lines.append("#")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- the native fit

@dataclass
class UF3Settings(FitSettings):
    """A UF3 fit: two-body cutoff rc2 (A) with n2 knot intervals, three-body cutoff rc3 (A)
    with n3 intervals on r_ij, r_ik and n3jk on r_jk (the shared options in
    :class:`~rmsearch.fitting.FitSettings`). The defaults keep the three-body term to the
    first shell of carbon (2.2 A), which makes a force call on 8 atoms ~14 us in LAMMPS
    (2.4 A: 21 us; 3.0 A: 0.5 ms); the two-body term reaches 3.5 A, the third diamond
    shell, which tells cubic from hexagonal diamond. The fit learns from a SNAP teacher by
    default (``distills``); the ZBL core stays on (without it random starts collapse to
    0.7 A bonds). Its potential directories recommend ``lammps-cg``: the force call is so
    cheap that the Python relaxer's per-step work would dominate. Several elements: one
    block per element pair and per (centre, neighbour pair) triple, same knots
    (:class:`UF3Layout`); the coefficient count grows as the cube of the element count, so
    keep ``n3`` small there (molecules of 6 elements: rc2 4, rc3 2, n3 2)."""

    kind: ClassVar[str] = "uf3"
    optimizer: ClassVar[str | None] = "lammps-cg"
    distills: ClassVar[bool] = True
    fewer_coefficients: ClassVar[str] = "a smaller '--n3': three-body columns grow as n_elements^3 (n3 + 3)^3 / 2"

    alpha: float = with_default(FitSettings, "alpha", 1e-6)
    rc2: float = setting(3.5, "UF3 two-body cutoff", unit="A", bounds=(0, 10, True))
    n2: int = setting(14, "UF3 two-body knot intervals", bounds=(1, 1000))
    rc3: float = setting(2.2, "UF3 three-body cutoff on r_ij and r_ik (r_jk spans up to twice it)", unit="A",
                         bounds=(0, 10, True))
    n3: int = setting(6, "UF3 three-body knot intervals on r_ij, r_ik (and r_jk); each element triple (centre, "
                      "neighbour pair) adds ~n3^2 (n3 + 3) coefficients, n_el^2 (n_el + 1) / 2 triples: "
                      "use 2 for 4+ elements (6 elements, n3 2: 2,634 coefficients)", bounds=(1, 100))
    n3jk: int = setting(6, "UF3 three-body knot intervals on r_jk", follows="n3")

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.basis  # validates the knots

    @property
    def basis(self) -> UF3Basis:
        return UF3Basis(rc2=self.rc2, n2=self.n2, rc3=self.rc3, n3=self.n3, n3jk=self.n3jk)

    @property
    def cutoff(self) -> float:
        return self.rc2

    def default_norm_floor(self, elements: list[str]) -> float:
        """0.01 for several elements, 0 for one (the carbon recipe). Measured on 200 offline
        molecules (6 elements, rc2 4, rc3 2, n3 2, 2,634 coefficients, no core): without a
        floor one held-out noise-32 frame met a three-body column two frames had touched
        (coefficient 1.2e10) and the held-out force RMSE was 7,800 eV/A (alpha 1: 595, alpha
        10: 293); floors 1e-4 / 1e-2 / 1e-1 gave 0.55 / 0.298 / 0.298 eV/A (train 0.296)."""
        return 0.01 if len(elements) > 1 else 0.0

    def layout(self, elements: list[str]) -> UF3Layout:
        """The coefficient blocks of a fit over ``elements`` (:class:`UF3Layout`)."""
        return UF3Layout(self.basis, tuple(elements))

    def pair_style(self, elements: list[str]) -> tuple[str, str]:
        """(LAMMPS pair style, its ``pair_coeff`` arguments after ``* *``; {potdir} placeholder)."""
        return "uf3 3", f"{{potdir}}/{model_file(elements)} {' '.join(elements)}"

    def n_columns(self, elements: list[str]) -> int:
        """Fitted coefficients: ``n_el (n_el + 1) / 2`` two-body blocks of ``n2`` columns and
        ``n_el^2 (n_el + 1) / 2`` three-body blocks of ~``(n3 + 3)^2 (n3 + 3) / 2`` to
        ``n3^2 (n3 + 3)`` (:class:`UF3Layout`)."""
        return self.layout(elements).n_columns

    def descriptors(self, elements: list[str]) -> UF3Descriptors:
        return UF3Descriptors(self, elements)

    def write_model(self, directory: Path, elements: list[str], beta: np.ndarray) -> None:
        """Write the fitted coefficients ``beta`` as one UF3 file (:func:`model_file`)."""
        write_potential(directory / model_file(elements), elements, beta, self.basis)


def model_file(elements: Sequence[str]) -> str:
    """The UF3 file name of a fit over ``elements``: ``C.uf3``, ``ClNa.uf3``."""
    return "".join(elements) + ".uf3"


class UF3Descriptors(Descriptors):
    """Per-frame UF3 feature rows (:func:`feature_rows`, numpy; see
    :class:`~rmsearch.fitting.Descriptors`); the ZBL core's share comes from LAMMPS."""

    def __init__(self, settings: UF3Settings, elements: list[str]):
        self.settings = settings
        self.layout = settings.layout(elements)
        self.core = None
        if settings.core:
            style, coeffs = zbl_pair(settings, elements)
            self.core = LammpsEngine(Potential(directory=Path("."), backend="zbl", elements=list(elements),
                                               cutoff=settings.zbl_outer, volumes={}, pair_style=style,
                                               pair_coeff=coeffs))

    def close(self) -> None:
        if self.core is not None:
            self.core.close()

    def rows(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(force block (3N, ncol), virial block (3, 3, ncol), core forces (N, 3), core virial
        (3, 3)) of a crystal, or of a molecule (no periodic images; virial unused)."""
        crystal = bool(atoms.pbc.all())
        if crystal and atoms.cell.volume <= 0:
            raise RMError("a periodic frame without a cell volume: UF3 fits need a cell for crystals")
        a_f, w_c = feature_rows(atoms, self.layout)
        n = len(atoms)
        if self.core is None:
            return a_f, w_c, np.zeros((n, 3)), np.zeros((3, 3))
        _, f, stress = self.core.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, crystal)
        return a_f, w_c, f, (-abs(atoms.get_volume()) * stress if crystal else np.zeros((3, 3)))
