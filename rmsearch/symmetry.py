"""Space-group symmetry of a relaxation: find it on the start, keep it, report it.

A relaxation with ``keep_symmetry`` (:class:`rmsearch.relax.RelaxSettings`) finds the
start's symmetry operations with spglib at a tight ``symprec`` (A), makes the start
exactly symmetric (:func:`find_symmetry`: the lattice metric and the fractional positions
replaced by their group averages, as ASE's ``refine_symmetry`` does), and then projects
every generalised force (atomic forces, the cell's stress force) and every step onto the
subspace the operations leave invariant (:class:`Symmetry`), as ASE's ``FixSymmetry``
constraint does (``ase/constraints.py``, ``ase/spacegroup/symmetrize.py``). The
projector is the group average (Reynolds operator) of the representation

- vectors per atom (forces, displacements, A or eV/A): ``v'[map_g(i)] = R_g v[i]``,
- rank-2 tensors (stress eV/A^3, the cell variable ``N log F``): ``T' = R_g T R_g^T``,

with ``R_g`` the Cartesian rotation of operation g in the start's (refined) cell and
``map_g(i)`` the atom that g sends atom i to. The representation is orthogonal, so the
average is the orthogonal projector onto the invariant subspace: a symmetric structure
moved by projected steps stays symmetric to round-off, and a cell deformed by an invariant
``log F`` keeps the group's metric. A start whose only operation is the identity (P1)
needs no projection; :class:`Symmetry` is then None and the relaxation is untouched.

:func:`spacegroup_report` gives what a run record stores: the final structure's space
group at 1e-3, 1e-2 and 1e-1 A and whether the start's operations (spglib at
:data:`SYMPREC`) were kept (:func:`keeps_operations`).

A space-group prior for drawn symmetric starts (:class:`SpacegroupPrior`): how often each
group occurs among known crystals of the same anonymous stoichiometry (pymatgen's
``anonymized_formula``: AB2 for Li2S and SiO2), smoothed by the group frequencies of all of
them; ``rmsearch launch --spacegroups mixed --spacegroup-weights FILE`` draws with it.

Wyckoff templates of known crystals (:func:`wyckoff_template`, :class:`WyckoffPrior`): the
Wyckoff sites each element occupies (pyxtal's standard setting), for starts in a given group
on the sites of a known structure type (``rmsearch launch --spacegroup N --wyckoff ...``).

Units: A, fractional coordinates, eV/A, eV/A^3.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import spglib
from ase import Atoms

from rmdata.errors import RMError
from rmdata.make import anonymous_formula
from rmsearch.starts import wyckoff_counts

#: Default symprec (A) at which the start's operations are found: tight, because a
#: Wyckoff start from pyxtal is exactly symmetric up to round-off.
SYMPREC = 1e-4
#: Tolerances (A) at which a run record reports the final space group.
REPORT_SYMPRECS = (1e-3, 1e-2, 1e-1)


@dataclass
class Symmetry:
    """The operations of a structure of ``n`` atoms as a projector.

    rotations: (k, 3, 3) Cartesian rotations (rows = Cartesian components, acting on column
    vectors). inverse_maps: (k, n) with ``inverse_maps[g, j]`` the atom that operation g
    sends onto atom j. number: the space group (international number); symbol: its
    Hermann-Mauguin symbol.
    """

    rotations: np.ndarray
    inverse_maps: np.ndarray
    number: int
    symbol: str

    @property
    def order(self) -> int:
        """Number of operations (including pure lattice translations of a non-primitive cell)."""
        return len(self.rotations)

    def project_vectors(self, v: np.ndarray) -> np.ndarray:
        """Group average of per-atom vectors ``v`` (n, 3): mean over g of ``R_g v[map_g^-1(j)]``."""
        k = np.arange(self.order)[:, None]
        moved = np.einsum("gab,gnb->gna", self.rotations, v[self.inverse_maps[k, np.arange(v.shape[0])]])
        return moved.mean(axis=0)

    def project_tensor(self, t: np.ndarray) -> np.ndarray:
        """Group average of a 3x3 tensor: mean over g of ``R_g t R_g^T``."""
        return np.einsum("gab,bc,gdc->ad", self.rotations, t, self.rotations) / self.order


def symmetry_dataset(cell: tuple, symprec: float):
    """spglib's symmetry dataset of (lattice, fractional positions, numbers) at ``symprec``
    (A), or None where spglib finds none; the one place the package calls spglib for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's OLD_ERROR_HANDLING notice
        try:
            return spglib.get_symmetry_dataset(cell, symprec=symprec)
        except spglib.SpglibError:
            return None


def _dataset(cell: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float):
    data = symmetry_dataset((cell, frac, numbers), symprec)
    if data is None:
        raise RMError(f"spglib found no symmetry at symprec {symprec} A ({spglib.get_error_message()})")
    return data


def _maps(frac: np.ndarray, numbers: np.ndarray, cell: np.ndarray, rot: np.ndarray, trans: np.ndarray,
          tol: float) -> tuple[np.ndarray, np.ndarray]:
    """``(images, maps)``: fractional images ``R f_i + t`` (k, n, 3) and ``maps[g, i]``, the
    atom of the same species nearest to image i of operation g (A distances in ``cell``)."""
    images = np.einsum("gab,nb->gna", rot, frac) + trans[:, None, :]
    d = images[:, :, None, :] - frac[None, None, :, :]
    d -= np.round(d)
    dist = np.linalg.norm(d @ cell, axis=-1)  # (k, n, n)
    dist[:, numbers[:, None] != numbers[None, :]] = np.inf
    maps = dist.argmin(axis=2)
    worst = np.take_along_axis(dist, maps[..., None], axis=2).max()
    if not worst <= tol:
        raise RMError(f"symmetry operations do not map the atoms onto each other (off by {worst:.3g} A)")
    for g in range(len(rot)):
        if len(set(maps[g].tolist())) != len(frac):
            raise RMError("a symmetry operation maps two atoms onto one; use a smaller symprec")
    return images, maps


def find_symmetry(cell: np.ndarray, positions: np.ndarray, numbers: np.ndarray,
                  symprec: float = SYMPREC) -> tuple[Symmetry | None, np.ndarray, np.ndarray]:
    """The operations of a periodic structure and the structure made exactly symmetric.

    ``cell`` rows are lattice vectors (A), ``positions`` Cartesian (A, unwrapped is fine).
    Returns ``(symmetry, cell_sym, positions_sym)``: the metric ``G = cell cell^T`` replaced
    by its group average ``mean R^T G R`` through the symmetric stretch that is nearest the
    identity (so the cell keeps its orientation), and each fractional position by the mean
    of its images (kept next to the original, so positions move by at most ``symprec``).
    ``symmetry`` is None when the identity is the only operation (nothing is changed then).
    """
    cell = np.asarray(cell, dtype=float)
    numbers = np.asarray(numbers)
    frac = np.linalg.solve(cell.T, np.asarray(positions, dtype=float).T).T
    data = _dataset(cell, frac, numbers, symprec)
    rot = np.asarray(data.rotations, dtype=float)
    trans = np.asarray(data.translations, dtype=float)
    if len(rot) == 1:
        return None, cell, np.asarray(positions, dtype=float)
    # the cell: the group average of the metric, reached by a symmetric stretch D (cell' = cell D)
    metric = cell @ cell.T
    metric_sym = np.einsum("gba,bc,gcd->ad", rot, metric, rot) / len(rot)
    a = np.linalg.solve(cell, np.linalg.solve(cell, metric_sym).T)  # cell^-1 G' cell^-T
    lam, vec = np.linalg.eigh(0.5 * (a + a.T))
    cell_sym = cell @ ((vec * np.sqrt(lam)) @ vec.T)
    # the positions: the mean of each atom's images, unwrapped next to it
    images, maps = _maps(frac, numbers, cell, rot, trans, 3 * symprec)
    inverse = np.argsort(maps, axis=1)
    k = np.arange(len(rot))[:, None]
    onto = images[k, inverse]  # (k, n, 3): the image that lands on atom j
    onto -= np.round(onto - frac[None])
    frac_sym = onto.mean(axis=0)
    positions_sym = frac_sym @ cell_sym
    cart = np.einsum("ab,gbc,cd->gad", cell_sym.T, rot, np.linalg.inv(cell_sym.T))
    sym = Symmetry(rotations=cart, inverse_maps=inverse, number=int(data.number),
                   symbol=str(data.international))
    return sym, cell_sym, positions_sym


def spacegroup(atoms: Atoms, symprec: float) -> tuple[int, str]:
    """(international number, Hermann-Mauguin symbol) of the space group of a periodic
    structure at ``symprec`` (A); (0, "") if it is not periodic or spglib finds none."""
    if not atoms.pbc.all():
        return 0, ""
    data = symmetry_dataset((np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers),
                            symprec)
    if data is None:
        return 0, ""
    return int(data.number), str(data.international)


def spacegroup_number(atoms: Atoms, symprec: float) -> int | None:
    """International number of the space group of ``atoms`` at ``symprec`` (A); None if spglib fails."""
    return spacegroup(atoms, symprec)[0] or None


class SpacegroupPrior:
    """Space-group weights for starts of a composition, from known crystals.

    ``weights(formula)``: ``w(g) = n_same(g) + smoothing * n_all(g) / n_all``, with
    ``n_same(g)`` the crystals of ``formula``'s anonymous stoichiometry in group g and
    ``n_all(g)`` all crystals in g (spglib at ``symprec`` A): ``smoothing`` pseudo-crystals
    spread as the overall frequencies keep every group seen somewhere possible.
    """

    def __init__(self, structures: Iterable[Atoms], symprec: float = 0.1, smoothing: float = 1.0):
        if not (np.isfinite(symprec) and symprec > 0 and np.isfinite(smoothing) and smoothing >= 0):
            raise RMError(f"SpacegroupPrior: symprec={symprec} must be > 0 and smoothing={smoothing} >= 0")
        self.symprec, self.smoothing = symprec, smoothing
        self.groups: list[tuple[str, int]] = []
        for atoms in structures:
            sg = spacegroup_number(atoms, symprec)
            if sg is not None:
                self.groups.append((anonymous_formula(atoms), sg))
        self.every = Counter(sg for _, sg in self.groups)

    def weights(self, formula: str) -> dict[int, float]:
        """Group number -> weight for starts of ``formula`` (empty when no crystal was read)."""
        target = anonymous_formula(formula)
        same = Counter(sg for anon, sg in self.groups if anon == target)
        total = len(self.groups)
        out = {sg: same[sg] + self.smoothing * n / total for sg, n in self.every.items()}
        return {sg: round(w, 6) for sg, w in sorted(out.items()) if w > 0}


def wyckoff_template(atoms: Atoms, symprec: float = 0.1) -> tuple[int, dict[str, tuple[str, ...]]] | None:
    """``(space group, element -> Wyckoff sites)`` of a crystal at ``symprec`` (A), in pyxtal's
    standard setting (the sites of the conventional cell, e.g. ``(225, {"Cl": ("4b",), "Na":
    ("4a",)})`` for rocksalt): the ``--wyckoff`` template of its structure type. None where
    pyxtal cannot read the crystal."""
    import warnings

    from pymatgen.io.ase import AseAtomsAdaptor
    from pyxtal import pyxtal

    crystal = pyxtal()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystal.from_seed(AseAtomsAdaptor.get_structure(atoms), tol=symprec)
    except Exception:  # noqa: BLE001 - pyxtal signals an unreadable crystal with assorted types
        return None
    sites: dict[str, list[str]] = {}
    for site in crystal.atom_sites:
        sites.setdefault(str(site.specie), []).append(site.wp.get_label())
    return int(crystal.group.number), {el: tuple(sorted(v)) for el, v in sorted(sites.items())}


class WyckoffPrior:
    """Wyckoff templates for starts of a composition in a space group, from known crystals.

    ``templates(counts, sg)``: one template per known crystal in group ``sg`` (pyxtal at
    ``symprec`` A) whose conventional cell has the same multiset of atom counts as ``counts``
    (element -> atoms of the conventional cell), its sites given to the asked elements in
    the same order of (count, Pauling electronegativity): the structure types of that
    stoichiometry and group, as often as they occur (a start draws one uniformly), so the
    draw is the known crystals' distribution of Wyckoff sets.
    """

    def __init__(self, structures: Iterable[Atoms], symprec: float = 0.1):
        if not (np.isfinite(symprec) and symprec > 0):
            raise RMError(f"WyckoffPrior: symprec={symprec} must be > 0")
        self.symprec = symprec
        self.entries: dict[tuple[int, tuple[int, ...]], list[list[tuple[str, ...]]]] = {}
        for atoms in structures:
            found = wyckoff_template(atoms, symprec)
            if found is None:
                continue
            sg, template = found
            counts = wyckoff_counts(sg, template)
            order = _element_order(counts)
            key = (sg, tuple(counts[el] for el in order))
            self.entries.setdefault(key, []).append([template[el] for el in order])

    def templates(self, counts: dict[str, int], sg: int) -> list[dict[str, tuple[str, ...]]]:
        """The templates for ``counts`` (conventional cell) in ``sg``; empty when none is known."""
        order = _element_order(counts)
        found = self.entries.get((int(sg), tuple(counts[el] for el in order)), [])
        return [dict(sorted(zip(order, sites))) for sites in found]


def _element_order(counts: dict[str, int]) -> list[str]:
    """Elements by (atom count, Pauling electronegativity; elements without one last), then symbol."""
    import warnings

    from pymatgen.core import Element

    def x(el: str) -> float:
        with warnings.catch_warnings():  # pymatgen warns of noble gases without an electronegativity
            warnings.simplefilter("ignore")
            value = Element(el).X
        return value if np.isfinite(value) else np.inf

    return sorted(counts, key=lambda el: (counts[el], x(el), el))


def keeps_operations(start: Atoms, final: Atoms, symprec: float = SYMPREC, tol: float = 1e-3) -> bool:
    """Whether every operation spglib finds on ``start`` (at ``symprec`` A) is an operation
    of ``final`` to within ``tol`` A: it maps each atom onto one of its species and leaves the
    metric invariant. ``final`` must be ``start`` relaxed (same atoms, same order, its cell the
    start's lattice vectors deformed, as the relaxer leaves them); fractional operations stay
    operations under a deformation the group leaves invariant."""
    if len(start) != len(final) or not np.array_equal(start.numbers, final.numbers):
        return False
    data = symmetry_dataset((np.array(start.cell), start.get_scaled_positions(wrap=True), start.numbers),
                            symprec)
    if data is None:
        return False
    rot = np.asarray(data.rotations, dtype=float)
    cell = np.array(final.cell)
    metric = cell @ cell.T
    moved = np.einsum("gba,bc,gcd->gad", rot, metric, rot)
    if np.abs(moved - metric).max() > 2 * tol * np.sqrt(np.diag(metric)).max():
        return False
    try:
        _maps(final.get_scaled_positions(wrap=True), final.numbers, cell, rot,
              np.asarray(data.translations, dtype=float), tol)
    except RMError:
        return False
    return True


def spacegroup_report(start: Atoms, final: Atoms, symprec: float = SYMPREC) -> dict:
    """What a run record of a space-group start stores in ``extra``:
    ``spacegroup_start_found`` (spglib on the start at ``symprec`` A),
    ``spacegroup_final`` ({"0.001": number, "0.01": ..., "0.1": ...}: the final structure at
    1e-3, 1e-2, 1e-1 A) and ``spacegroup_kept`` (every operation of the start is one of the
    final structure at 1e-3 A, :func:`keeps_operations`; a run that kept them and gained
    more, e.g. a smaller primitive cell, shows a supergroup in ``spacegroup_final``)."""
    found = spacegroup_number(start, symprec)
    final_groups = {repr(p): spacegroup_number(final, p) for p in REPORT_SYMPRECS}
    return {"spacegroup_start_found": found, "spacegroup_final": final_groups,
            "spacegroup_kept": found is not None and keeps_operations(start, final, symprec, REPORT_SYMPRECS[0])}
