"""SNAP fitted on rmdata files (forces and stresses only): settings, descriptors and files.

Descriptors come from LAMMPS ``compute snap`` (rows: summed bispectrum, 3N force rows in
tag order, 6 virial rows xx yy zz yz xz xy; the last column holds the reference pair
style's contribution), the coefficients from ridge-regularised least squares on the force
and stress labels alone (:mod:`rmsearch.fitting`): no energy rows, ``beta0 = 0``. The
result is a potential directory (``potential.json`` + ``<el>.snapcoeff`` +
``<el>.snapparam``) that ``rmsearch.relax`` loads as ``pair_style snap`` (overlaid on
``zbl`` when the fit used a core), so a search runs with no Python in the force
computation. Cells are rotated into LAMMPS' lower-triangular frame
(:func:`rmsearch.engine.lammps_cell`) and the labels with them. A quadratic SNAP is also
the teacher of the default UF3 fit (:mod:`rmsearch.distill`).

Recipe, and why. Defaults of :class:`SnapSettings`: quadratic SNAP, 2J = 6 (30 linear +
465 quadratic coefficients), cutoff 3.5 A, ridge alpha = 1 on unit-norm columns, and a ZBL
wall switched off between 0.8 and 1.2 A that is overlaid but *not* fitted; data: the
diamond preset with strains -0.2..0.1 in steps of 0.05 and ``--copies 3``
(:data:`rmsearch.native.NATIVE_STRAINS`). Measured on random carbon starts relaxed by
:class:`rmsearch.relax.Relaxer` (default g-term overlay):

- linear 2J=6, rcut 4.5 A, preset data: 0 of 20 C8 starts valid (16 collapsed until the
  neighbour list overflowed, 4 converged with atoms < 1.06 A apart);
- quadratic, rcut 4.5 A, ridge 1e-6, with or without a ZBL 0.6-1.0 A core: 0 of 20 valid
  (NaN, overflow, merged atoms): the nearly collinear quadratic columns give huge
  coefficients that pull atoms through any wall;
- quadratic, ridge 1, ZBL 0.8-1.2 A, rcut 4.5 A, 3 copies: 7 of 12 C8 valid, the lowest a
  dense P2/m phase at 3.6 A^3/atom, diamond third; with rcut 3.5 A diamond appears but
  dense hexagonal phases (3.5-3.9 A^3/atom) are lower;
- the same with compressive strains to -20 % (the default recipe): 40 of 40 C2-C12 runs
  converged and valid, cubic diamond lowest (4-5 hits, 5.67 A^3/atom; FIRE and FIRE 2.0),
  the next structure +31-35 meV/atom; 12 of 12 C8, diamond 32 meV/atom below the next. With one copy
  instead of three, hexagonal diamond ends 1 meV/atom below cubic.

Subtracting the ZBL core from the labels (``fit_core``) is offered but worse: the labels
have no wall, so SNAP learns to cancel it.

Several elements: the classic multi-element SNAP. ``compute snap`` with several atom types
gives one block of K descriptors per type (the centre's element), so the fit has one linear
or quadratic coefficient block per element (written as the ``<el>`` blocks of one
``<stem>.snapcoeff``, :func:`write_snap_files`), and the neighbour's element enters through
its radius and density weight: radii ``0.5 sqrt(r_cov / max r_cov)`` (:func:`element_radii`;
``rcut`` stays the largest pair cutoff, one element keeps 0.5, so carbon fits are
unchanged to the byte) and weights evenly spaced in [0.5, 1] by atomic number
(:func:`element_weights`). Why this and not the ``chem`` keyword: it keeps K (30 / 495 at
2J = 6) coefficients per element where ``chem`` needs K n_elements^3 descriptors (1,920
per atom for 4 elements at 2J = 6), so memory and fit time grow linearly with the
elements; labels of a known two-element SNAP are fitted back to 1e-10. Measured here (2
cores): 6 offline alkanes (C, H; 60 frames, noise levels 0-4, rcut 4 A, 990 coefficients)
fit in 1.9 s with a held-out force RMSE of 0.042 eV/A, and rattled references relax back;
one rocksalt NaCl cell (231 frames, rcut 5 A) fits in 11 s (held-out force RMSE 0.61 eV/A
without the core) and holds rocksalt (strained +-5 % relaxes to a = 5.616 A against 5.64),
but a 60-run NaCl search does not find rocksalt lowest (README, "Native potentials"). A
molecule frame (``pbc`` all False) is evaluated in a periodic vacuum box with no image
within the cutoff (:func:`rmsearch.fitting.vacuum_box`) and gives force rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

from rmdata.errors import RMError
from rmsearch.engine import BAR_PER_EV_A3, from_voigt, mass_lines, new_lammps, to_lammps_frame, type_ids
from rmsearch.fitting import Descriptors, FitSettings, overlay, setting, vacuum_box, zbl_styles


@dataclass
class SnapSettings(FitSettings):
    """Hyper-parameters of a SNAP fit (the shared ones in :class:`~rmsearch.fitting.FitSettings`).

    twojmax: 2J, the bispectrum band limit (6: 30 components, 8: 55). rcut: cutoff (A)
    of the element pair with the largest covalent radii (``rcutfac = rcut``; other pairs
    shorter, :func:`element_radii`; one element: all pairs). rfac0, rmin0: SNAP
    radial mapping. quadratic: add the ``B_i B_j`` terms (``quadraticflag 1``).
    """

    kind: ClassVar[str] = "snap"
    fewer_coefficients: ClassVar[str] = "'--linear', a smaller '--twojmax'"

    twojmax: int = setting(6, "SNAP band limit 2J (6: 30 descriptors, 8: 55)", bounds=(0, 12))
    rcut: float = setting(3.5, "SNAP descriptor cutoff (of the pair of largest covalent radii; smaller "
                                "atoms' pairs scale down by sqrt(r_cov / max r_cov))", unit="A", bounds=(0, 10, True))
    rfac0: float = setting(0.99363, "SNAP radial mapping parameter rfac0", option=False)
    rmin0: float = setting(0.0, "SNAP radial mapping parameter rmin0", unit="A", option=False)
    quadratic: bool = setting(True, "Quadratic SNAP (B_i B_j terms) or linear", option="--quadratic/--linear")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.twojmax < 0 or self.twojmax % 1:
            raise RMError(f"--twojmax {self.twojmax}: must be an integer >= 0")
        if not self.rcut > 0:
            raise RMError(f"--rcut {self.rcut}: must be > 0 (A)")

    @property
    def cutoff(self) -> float:
        return self.rcut

    def pair_style(self, elements: list[str]) -> tuple[str, str]:
        """(LAMMPS pair style, its ``pair_coeff`` arguments after ``* *``; {potdir} placeholder)."""
        stem = model_stem(elements)
        return "snap", f"{{potdir}}/{stem}.snapcoeff {{potdir}}/{stem}.snapparam {' '.join(elements)}"

    def descriptors(self, elements: list[str]) -> SnapDescriptors:
        return SnapDescriptors(self, elements)

    def write_model(self, directory: Path, elements: list[str], beta: np.ndarray) -> None:
        """Write the fitted coefficients ``beta`` as ``<stem>.snapcoeff`` and ``.snapparam``."""
        write_snap_files(directory, elements, beta, self)

    def n_per_element(self) -> int:
        """Coefficients of one element's block (beta0 not counted): K bispectrum components,
        plus K (K + 1) / 2 products when quadratic (2J = 6: 30 or 495)."""
        k = n_bispectrum(self.twojmax)
        return k + (k * (k + 1) // 2 if self.quadratic else 0)

    def n_columns(self, elements: list[str]) -> int:
        """Fitted coefficients: one block per element (:meth:`n_per_element`)."""
        return len(elements) * self.n_per_element()

    def param_lines(self) -> list[str]:
        """The ``.snapparam`` keywords (shared by compute snap and pair_style snap)."""
        return [f"rcutfac {self.rcut!r}", f"twojmax {int(self.twojmax)}", f"rfac0 {self.rfac0!r}",
                f"rmin0 {self.rmin0!r}", "bzeroflag 1", f"quadraticflag {int(self.quadratic)}",
                "switchflag 1"]


def n_bispectrum(twojmax: int) -> int:
    """Bispectrum components K of band limit 2J (LAMMPS' count: j1 >= j2, j >= j1)."""
    k = 0
    for j1 in range(twojmax + 1):
        for j2 in range(j1 + 1):
            k += sum(1 for j in range(j1 - j2, min(twojmax, j1 + j2) + 1, 2) if j >= j1)
    return k


def element_radii(elements: list[str]) -> list[float]:
    """SNAP radii R_e of ``elements`` (``rcutfac (R_a + R_b)`` is the a-b cutoff):
    ``0.5 sqrt(r_cov(e) / max r_cov)``, so the largest pair cutoff is ``rcut``, one element
    keeps 0.5, and small atoms get shorter cutoffs that still reach their second neighbours
    (square root: H-H reaches 0.54 rcut among C, H, N, O, S, Cl; Cl-Cl 0.78 rcut beside Na)."""
    r = np.array([covalent_radii[atomic_numbers[e]] for e in elements])
    return [float(x) for x in 0.5 * np.sqrt(r / r.max())]


def element_weights(elements: list[str]) -> list[float]:
    """SNAP density weights w_e of ``elements``: distinct, evenly spaced from 0.5 (lightest)
    to 1.0 (heaviest), so that the bispectrum tells neighbour elements apart; one element 1.0."""
    if len(elements) == 1:
        return [1.0]
    rank = np.argsort(np.argsort([atomic_numbers[e] for e in elements]))
    return [float(x) for x in 0.5 + 0.5 * rank / (len(elements) - 1)]


def model_stem(elements: list[str]) -> str:
    """File stem of the model files: the elements joined by '-' (``C``, ``Cl-Na``)."""
    return "-".join(elements)


class SnapDescriptors(Descriptors):
    """Per-frame SNAP descriptor rows from one reused LAMMPS instance (see
    :class:`~rmsearch.fitting.Descriptors` for the rows)."""

    def __init__(self, settings: SnapSettings, elements: list[str]):
        self.settings = settings
        self.elements = list(elements)
        self._type_of = type_ids(self.elements)
        self.lmp = new_lammps()

    def close(self) -> None:
        self.lmp.close()

    def _commands(self, cell_l: np.ndarray) -> tuple[list[str], list[str]]:
        s = self.settings
        ne = len(self.elements)
        # compute snap needs a pair cutoff >= its own: a zero style, overlaid on the core
        style, coeffs = overlay(zbl_styles(s, self.elements) + [(f"zero {s.rcut!r}", ["* *"])])
        keywords = (f"rmin0 {s.rmin0!r} bzeroflag 1 quadraticflag {int(s.quadratic)} switchflag 1")
        radii = " ".join(repr(r) for r in element_radii(self.elements))
        weights = " ".join(repr(w) for w in element_weights(self.elements))
        b = cell_l.tolist()
        return ["clear", "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0",
                "boundary p p p",
                (f"region box prism 0 {b[0][0]!r} 0 {b[1][1]!r} 0 {b[2][2]!r} {b[1][0]!r} {b[2][0]!r} "
                 f"{b[2][1]!r} units box"),
                f"create_box {ne} box", *mass_lines(self.elements),
                f"pair_style {style}", *[f"pair_coeff {c}" for c in coeffs],
                "neighbor 1.0 bin", "thermo_style custom step pe"], \
            [f"compute rm_snap all snap {s.rcut!r} {s.rfac0!r} {int(s.twojmax)} {radii} {weights} "
             + keywords]

    def rows(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(force block (3N, ncol), virial block (3, 3, ncol), core forces (N, 3), core virial
        (3, 3)); a molecule is evaluated in a vacuum box (:func:`~rmsearch.fitting.vacuum_box`)."""
        if atoms.pbc.all():
            if atoms.cell.volume <= 0:
                raise RMError("a periodic frame without a cell: fit-native needs crystal cells")
            cell_l, q, pos_l = to_lammps_frame(atoms.positions, atoms.cell)
        else:
            cell_l, pos_l = vacuum_box(atoms.positions, self.settings.rcut)
            q = np.eye(3)
        n = len(atoms)
        try:
            types = [self._type_of[int(z)] for z in atoms.numbers]
        except KeyError as exc:
            raise RMError(f"element Z={exc.args[0]} not among the fitted elements {self.elements}") from None
        lmp = self.lmp
        setup, compute = self._commands(cell_l)
        lmp.commands_list(setup)
        lmp.create_atoms(n, list(range(1, n + 1)), types, pos_l.ravel().tolist())
        if lmp.get_natoms() != n:
            raise RuntimeError(f"LAMMPS created {lmp.get_natoms()} of {n} atoms")
        # compute snap sizes its array by the atom count when defined: after create_atoms
        lmp.commands_list(compute)
        lmp.command("run 0 post no")
        arr = np.array(lmp.numpy.extract_compute("rm_snap", 0, 2), dtype=float, copy=True)
        if arr.shape[0] != 1 + 3 * n + 6:
            raise RuntimeError(f"compute snap returned {arr.shape[0]} rows for {n} atoms")
        f_rows = arr[1:1 + 3 * n, :-1].reshape(n, 3, -1)
        ref_f = arr[1:1 + 3 * n, -1].reshape(n, 3)
        v6 = arr[1 + 3 * n:, :-1]
        ref_v6 = arr[1 + 3 * n:, -1]
        # rotate back to the structure's frame: vectors with q.T, tensors q W q.T
        f_rows = np.einsum("nkc,jk->njc", f_rows, q)
        ref_f = ref_f @ q.T
        vir = from_voigt(v6)
        # the reference column's virial rows are the pair style's pressure tensor (bar)
        ref_vir = q @ from_voigt(ref_v6) @ q.T * abs(np.linalg.det(cell_l)) / BAR_PER_EV_A3
        vir = np.einsum("ik,klc,jl->ijc", q, vir, q)
        return f_rows.reshape(3 * n, -1), vir, ref_f, ref_vir


def write_snap_files(directory: Path, elements: list[str], beta: np.ndarray,
                     settings: SnapSettings) -> tuple[str, str]:
    """Write ``<stem>.snapcoeff`` (per element: its radius and weight, beta0 = 0, then its block
    of ``beta``, in the order of ``elements``) and ``<stem>.snapparam`` (:func:`model_stem`)."""
    stem = model_stem(elements)
    coeff = directory / f"{stem}.snapcoeff"
    param = directory / f"{stem}.snapparam"
    blocks = np.asarray(beta, dtype=float).reshape(len(elements), -1)
    lines = ["# SNAP coefficients fitted by rmsearch fit-native (forces and stresses only; beta0 = 0)",
             "", f"{len(elements)} {blocks.shape[1] + 1}"]
    for el, radius, weight, block in zip(elements, element_radii(elements), element_weights(elements), blocks):
        lines += [f"{el} {radius!r} {weight!r}", repr(0.0)]
        lines += [repr(float(b)) for b in block]
    coeff.write_text("\n".join(lines) + "\n")
    param.write_text("# SNAP parameters (rmsearch fit-native)\n" + "\n".join(settings.param_lines()) + "\n")
    return coeff.name, param.name
