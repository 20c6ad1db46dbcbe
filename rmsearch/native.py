"""LAMMPS-native potentials fitted on rmdata files (forces and stresses only): SNAP and UF3.

Both are linear in their coefficients, so one fit serves both: a design matrix of force
rows and ``-V sigma / N`` stress rows (:class:`DesignMatrix`), ridge least squares, a
held-out error report, and a self-check of the LAMMPS pair style against the fit's own
predictions. The descriptors differ: SNAP rows come from LAMMPS ``compute snap``
(below), UF3 rows from numpy (:mod:`rmsearch.uf3`). ``KINDS`` lists them. UF3 is the
default: ~20-40x cheaper per force call than SNAP, and taught by a quadratic SNAP fitted
on the same file (:mod:`rmsearch.distill`) it finds diamond, which UF3 fitted on the
labels alone does not (README, "Native potentials").

SNAP.

Descriptors come from LAMMPS ``compute snap`` (rows: summed bispectrum, 3N force rows in
tag order, 6 virial rows xx yy zz yz xz xy; the last column holds the reference pair
style's contribution), the coefficients from ridge-regularised least squares on the force
and stress labels alone: no energy rows, ``beta0 = 0``. The result is a potential
directory (``potential.json`` + ``<el>.snapcoeff`` + ``<el>.snapparam``) that
``rmsearch.relax`` loads as ``pair_style snap`` (overlaid on ``zbl`` when the fit used a
core), so a search runs with no Python in the force computation.

Conventions. Forces are ``A_f @ beta`` directly. The virial rows give ``W = -V sigma``
(sigma in ASE's sign, positive = tensile), so stress labels enter as ``-V sigma``; both
are divided by the number of atoms so that one stress row weighs like one force row at
``stress_weight = 1`` per atom. Cells are rotated into LAMMPS' lower-triangular frame
(:func:`rmsearch.relax.lammps_cell`) and the labels with them.

Recipe, and why. Defaults of :class:`SnapSettings`: quadratic SNAP, 2J = 6 (30 linear +
465 quadratic coefficients), cutoff 3.5 A, ridge alpha = 1 on unit-norm columns, and a ZBL
wall switched off between 0.8 and 1.2 A that is overlaid but *not* fitted; data: the
diamond preset with strains -0.2..0.1 in steps of 0.05 and ``--copies 3``. Measured on
random carbon starts relaxed by :class:`rmsearch.relax.Relaxer` (default g-term overlay):

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
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

from rmdata.errors import RMError
from rmdata.utils import pin_threads, provenance, write_json_atomic
from rmsearch.distill import DistillSettings

if TYPE_CHECKING:
    from rmsearch.potentials import Potential

log = logging.getLogger(__name__)

#: The data recipe of the native potentials (README "Native potentials"): the diamond preset
#: with these linear strains (compressive down to -20 %) and this many noise draws per
#: (strain, level), i.e. ``make_dataset(..., strains=NATIVE_STRAINS, copies=NATIVE_COPIES)``.
NATIVE_STRAINS = (-0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1)
NATIVE_COPIES = 3
#: The kind ``fit-native`` fits unless told otherwise.
DEFAULT_KIND = "uf3"
#: LAMMPS metal-units pressure (bar) per eV/A^3.
BAR_PER_EV_A3 = 1.6021765e6


@dataclass
class FitSettings:
    """Options shared by every native fit.

    alpha: ridge strength relative to unit-norm columns (dimensionless). stress_weight:
    weight of a stress row (of ``-V sigma / N``, eV) against a force row (eV/A). zbl_inner,
    zbl_outer (A): a ZBL core, switched off between inner and outer, overlaid in LAMMPS
    (``zbl_outer = 0``: no core); fit_core: subtract the core from the labels before the
    fit (else the model is fitted to the labels alone and the core only adds a wall below
    zbl_outer). holdout: fraction of frames kept out of the fit for the error report.
    seed: the holdout draw.
    """

    #: The ``--kind`` name of the fit, and the relaxation method its potential directory
    #: recommends (None: the relaxer's default).
    kind: ClassVar[str] = ""
    optimizer: ClassVar[str | None] = None
    #: Whether the fit learns from a SNAP teacher by default (:mod:`rmsearch.distill`).
    distils: ClassVar[bool] = False

    alpha: float = 1.0
    stress_weight: float = 1.0
    zbl_inner: float = 0.8
    zbl_outer: float = 1.2
    fit_core: bool = False
    holdout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise RMError(f"--alpha {self.alpha}: must be >= 0")
        if not self.stress_weight >= 0:
            raise RMError(f"--stress-weight {self.stress_weight}: must be >= 0")
        if not 0.0 <= self.holdout < 1.0:
            raise RMError(f"--holdout {self.holdout}: must be in [0, 1)")
        if self.zbl_outer and not 0 < self.zbl_inner < self.zbl_outer:
            raise RMError(f"--zbl {self.zbl_inner},{self.zbl_outer}: need 0 < inner < outer (A)")

    @property
    def core(self) -> bool:
        return self.zbl_outer > 0


@dataclass
class UF3Settings(FitSettings):
    """A UF3 fit (:mod:`rmsearch.uf3`): two-body cutoff rc2 (A) with n2 knot intervals,
    three-body cutoff rc3 (A) with n3 intervals on r_ij, r_ik and n3jk on r_jk. The
    defaults keep the three-body term to the first shell of carbon (2.2 A), which makes a
    force call on 8 atoms ~14 us in LAMMPS (2.4 A: 21 us; 3.0 A: 0.5 ms); the two-body term
    reaches 3.5 A, the third diamond shell, which tells cubic from hexagonal diamond. The
    fit learns from a SNAP teacher by default (``distils``); the ZBL core of
    :class:`FitSettings` stays on (without it random starts collapse to 0.7 A bonds). Its
    potential directories recommend ``lammps-cg``: the force call is so cheap that the
    Python relaxer's per-step work would dominate."""

    kind: ClassVar[str] = "uf3"
    optimizer: ClassVar[str | None] = "lammps-cg"
    distils: ClassVar[bool] = True

    alpha: float = 1e-6
    rc2: float = 3.5
    n2: int = 14
    rc3: float = 2.2
    n3: int = 6
    n3jk: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.basis  # validates the knots

    @property
    def basis(self):
        from rmsearch.uf3 import UF3Basis

        return UF3Basis(rc2=self.rc2, n2=self.n2, rc3=self.rc3, n3=self.n3, n3jk=self.n3jk)

    @property
    def cutoff(self) -> float:
        return self.rc2

    def pair_style(self, element: str) -> tuple[str, str]:
        """(LAMMPS pair style, its ``pair_coeff`` arguments after ``* *``; {potdir} placeholder)."""
        return "uf3 3", f"{{potdir}}/{element}.uf3 {element}"

    def descriptors(self, elements: list[str]) -> UF3Descriptors:
        return UF3Descriptors(self, elements)

    def write_model(self, directory: Path, element: str, beta: np.ndarray) -> None:
        """Write the fitted coefficients ``beta`` as ``<element>.uf3``."""
        from rmsearch.uf3 import write_potential

        write_potential(directory / f"{element}.uf3", element, beta, self.basis)


@dataclass
class SnapSettings(FitSettings):
    """Hyper-parameters of a SNAP fit (the shared ones in :class:`FitSettings`).

    twojmax: 2J, the bispectrum band limit (6: 30 components, 8: 55). rcut: cutoff (A)
    for all element pairs (element radii 0.5, ``rcutfac = rcut``). rfac0, rmin0: SNAP
    radial mapping. quadratic: add the ``B_i B_j`` terms (``quadraticflag 1``).
    """

    kind: ClassVar[str] = "snap"

    twojmax: int = 6
    rcut: float = 3.5
    rfac0: float = 0.99363
    rmin0: float = 0.0
    quadratic: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.twojmax < 0 or self.twojmax % 1:
            raise RMError(f"--twojmax {self.twojmax}: must be an integer >= 0")
        if not self.rcut > 0:
            raise RMError(f"--rcut {self.rcut}: must be > 0 (A)")

    @property
    def cutoff(self) -> float:
        return self.rcut

    def pair_style(self, element: str) -> tuple[str, str]:
        """(LAMMPS pair style, its ``pair_coeff`` arguments after ``* *``; {potdir} placeholder)."""
        return "snap", f"{{potdir}}/{element}.snapcoeff {{potdir}}/{element}.snapparam {element}"

    def descriptors(self, elements: list[str]) -> SnapDescriptors:
        return SnapDescriptors(self, elements)

    def write_model(self, directory: Path, element: str, beta: np.ndarray) -> None:
        """Write the fitted coefficients ``beta`` as ``<element>.snapcoeff`` and ``.snapparam``."""
        write_snap_files(directory, element, beta, self)

    def param_lines(self) -> list[str]:
        """The ``.snapparam`` keywords (shared by compute snap and pair_style snap)."""
        return [f"rcutfac {self.rcut!r}", f"twojmax {int(self.twojmax)}", f"rfac0 {self.rfac0!r}",
                f"rmin0 {self.rmin0!r}", "bzeroflag 1", f"quadraticflag {int(self.quadratic)}",
                "switchflag 1"]


#: Settings class of each ``--kind``.
SETTINGS: dict[str, type[FitSettings]] = {"uf3": UF3Settings, "snap": SnapSettings}
KINDS = tuple(SETTINGS)


# ----------------------------------------------------------------------------- descriptors

class _Descriptors:
    """Context-manager protocol of the descriptor classes (``close`` frees LAMMPS)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _zbl_pair(settings: FitSettings, elements: list[str]) -> tuple[str, list[str]]:
    """(pair_style, pair_coeff lines) of the ZBL core, or of a ``zero`` style without one."""
    if not settings.core:
        return f"zero {settings.cutoff!r}", ["* *"]
    coeffs = []
    for i, a in enumerate(elements, 1):
        for j, b in enumerate(elements, 1):
            if j >= i:
                coeffs.append(f"{i} {j} {atomic_numbers[a]} {atomic_numbers[b]}")
    return f"zbl {settings.zbl_inner!r} {settings.zbl_outer!r}", coeffs


class SnapDescriptors(_Descriptors):
    """Per-frame SNAP descriptor rows from one reused LAMMPS instance.

    :meth:`rows` returns, for one structure, the force block ``(3 N, ncol)`` (forces =
    block @ beta, in the structure's own frame), the virial block ``(3, 3, ncol)`` (W =
    -V sigma, eV) and the reference core's forces (eV/A) and virial (eV).
    """

    def __init__(self, settings: SnapSettings, elements: list[str]):
        from rmsearch.engine import new_lammps

        self.settings = settings
        self.elements = list(elements)
        self._type_of = {atomic_numbers[e]: k + 1 for k, e in enumerate(self.elements)}
        self.lmp = new_lammps()

    def close(self) -> None:
        self.lmp.close()

    def _commands(self, atoms: Atoms, cell_l: np.ndarray) -> tuple[list[str], list[str]]:
        s = self.settings
        ne = len(self.elements)
        style, coeffs = _zbl_pair(s, self.elements)
        if s.core:  # compute snap needs a pair cutoff >= its own: overlay a zero style
            style = f"hybrid/overlay {style} zero {s.rcut!r}"
            coeffs = [" ".join(c.split(maxsplit=2)[:2] + ["zbl"] + c.split(maxsplit=2)[2:])
                      for c in coeffs] + ["* * zero"]
        keywords = (f"rmin0 {s.rmin0!r} bzeroflag 1 quadraticflag {int(s.quadratic)} switchflag 1")
        radii = " ".join(["0.5"] * ne)
        weights = " ".join(["1.0"] * ne)
        masses = [f"mass {k + 1} {atomic_masses[atomic_numbers[e]]:.6f}" for k, e in enumerate(self.elements)]
        b = cell_l.tolist()
        return ["clear", "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0",
                "boundary p p p",
                (f"region box prism 0 {b[0][0]!r} 0 {b[1][1]!r} 0 {b[2][2]!r} {b[1][0]!r} {b[2][0]!r} "
                 f"{b[2][1]!r} units box"),
                f"create_box {ne} box", *masses,
                f"pair_style {style}", *[f"pair_coeff {c}" for c in coeffs],
                "neighbor 1.0 bin", "thermo_style custom step pe"], \
            [f"compute rm_snap all snap {s.rcut!r} {s.rfac0!r} {int(s.twojmax)} {radii} {weights} "
             + keywords]

    def rows(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(force block (3N, ncol), virial block (3, 3, ncol), core forces (N, 3), core virial (3, 3))."""
        from rmsearch.engine import lammps_cell

        if not atoms.pbc.all() or atoms.cell.volume <= 0:
            raise RMError("SNAP fitting needs periodic frames with a cell (rmdata crystal presets)")
        cell = np.asarray(atoms.cell, dtype=float)
        if np.linalg.det(cell) < 0:
            cell = -cell
        cell_l, q = lammps_cell(cell)
        frac = np.linalg.solve(cell_l.T, (atoms.positions @ q).T).T
        pos_l = (frac % 1.0) @ cell_l
        n = len(atoms)
        try:
            types = [self._type_of[int(z)] for z in atoms.numbers]
        except KeyError as exc:
            raise RMError(f"element Z={exc.args[0]} not among the fitted elements {self.elements}") from None
        lmp = self.lmp
        setup, compute = self._commands(atoms, cell_l)
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
        vir = _sym(v6)
        # the reference column's virial rows are the pair style's pressure tensor (bar)
        ref_vir = q @ _sym(ref_v6[:, None])[..., 0] @ q.T * abs(np.linalg.det(cell_l)) / BAR_PER_EV_A3
        vir = np.einsum("ik,klc,jl->ijc", q, vir, q)
        return f_rows.reshape(3 * n, -1), vir, ref_f, ref_vir


class UF3Descriptors(_Descriptors):
    """Per-frame UF3 feature rows (:func:`rmsearch.uf3.feature_rows`, numpy) with the same
    interface as :class:`SnapDescriptors`; the ZBL core's share comes from LAMMPS."""

    def __init__(self, settings: UF3Settings, elements: list[str]):
        from rmsearch.potentials import Potential
        from rmsearch.engine import LammpsEngine

        if len(elements) != 1:
            raise RMError(f"elements {elements}: fit-native fits one element at a time for now")
        self.settings = settings
        self.basis = settings.basis
        self.core = None
        if settings.core:
            style, coeffs = _zbl_pair(settings, elements)
            self.core = LammpsEngine(Potential(directory=Path("."), backend="zbl", elements=list(elements),
                                               cutoff=settings.zbl_outer, volumes={}, pair_style=style,
                                               pair_coeff=coeffs))

    def close(self) -> None:
        if self.core is not None:
            self.core.close()

    def rows(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(force block (3N, ncol), virial block (3, 3, ncol), core forces (N, 3), core virial (3, 3))."""
        from rmsearch.uf3 import feature_rows

        if not atoms.pbc.all() or atoms.cell.volume <= 0:
            raise RMError("UF3 fitting needs periodic frames with a cell (rmdata crystal presets)")
        a_f, w_c = feature_rows(atoms, self.basis)
        n = len(atoms)
        if self.core is None:
            return a_f, w_c, np.zeros((n, 3)), np.zeros((3, 3))
        _, f, stress = self.core.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
        return a_f, w_c, f, -abs(atoms.get_volume()) * stress


def _sym(v6: np.ndarray) -> np.ndarray:
    """(6, c) Voigt rows xx yy zz yz xz xy -> (3, 3, c) symmetric tensors."""
    xx, yy, zz, yz, xz, xy = v6
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


# ----------------------------------------------------------------------------- potential files

def write_snap_files(directory: Path, element: str, beta: np.ndarray, settings: SnapSettings) -> tuple[str, str]:
    """Write ``<element>.snapcoeff`` (beta0 = 0 then ``beta``) and ``<element>.snapparam``."""
    coeff = directory / f"{element}.snapcoeff"
    param = directory / f"{element}.snapparam"
    lines = ["# SNAP coefficients fitted by rmsearch fit-native (forces and stresses only; beta0 = 0)",
             "", f"1 {len(beta) + 1}", f"{element} 0.5 1.0", repr(0.0)]
    lines += [repr(float(b)) for b in beta]
    coeff.write_text("\n".join(lines) + "\n")
    param.write_text("# SNAP parameters (rmsearch fit-native)\n" + "\n".join(settings.param_lines()) + "\n")
    return coeff.name, param.name


def pair_definition(settings: FitSettings, elements: list[str]) -> tuple[str, list[str]]:
    """``pair_style`` and ``pair_coeff`` of the fitted potential ({potdir} placeholders)."""
    if len(elements) != 1:
        raise RMError(f"elements {elements}: fit-native fits one element at a time for now")
    sub, args = settings.pair_style(elements[0])
    if not settings.core:
        return sub, [f"* * {args}"]
    style, coeffs = _zbl_pair(settings, elements)
    types = [c.split(maxsplit=2) for c in coeffs]
    return (f"hybrid/overlay {style} {sub}",
            [f"{i} {j} zbl {rest}" for i, j, rest in types] + [f"* * {sub.split()[0]} {args}"])


def native_potential(directory: Path, settings: FitSettings, elements: list[str],
                     volumes: dict[str, float]) -> Potential:
    """An in-memory :class:`~rmsearch.potentials.Potential` of the model files that
    ``settings.write_model`` put in ``directory`` (no ``potential.json`` needed)."""
    from rmsearch.potentials import Potential

    style, coeff = pair_definition(settings, elements)
    from rmsearch.engine import lammps_path

    potdir = lammps_path(directory)
    return Potential(directory=Path(directory), backend=settings.kind, elements=list(elements),
                     cutoff=settings.cutoff, volumes=volumes, pair_style=style.format(potdir=potdir),
                     pair_coeff=[c.format(potdir=potdir) for c in coeff],
                     meta={"optimizer": settings.optimizer} if settings.optimizer else {})


# ----------------------------------------------------------------------------- fit

@dataclass
class DesignMatrix:
    """Least-squares rows of a set of frames.

    Per frame 3N force rows (eV/A) then 6 stress rows ``-V sigma / N`` (eV, Voigt xx yy zz
    yz xz xy) scaled by sqrt(stress_weight). ``a`` (rows, ncol): SNAP descriptor rows;
    ``label`` (rows,): the rmdata labels in row units; ``core`` (rows,): the ZBL core's
    share in row units (zeros without a core); ``frame`` (rows,) frame index; ``kind``
    (rows,) 0 force row, 1 stress row; ``volume`` (A^3) and ``natoms`` per frame.
    The full potential predicts ``a @ beta + core``.
    """

    a: np.ndarray
    label: np.ndarray
    core: np.ndarray
    frame: np.ndarray
    kind: np.ndarray
    volume: np.ndarray
    natoms: np.ndarray

    def subset(self, frames: np.ndarray) -> np.ndarray:
        """Row mask of the frames where the boolean per-frame mask ``frames`` is True."""
        return frames[self.frame]


_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def design_matrix(frames: Sequence[Atoms], settings: FitSettings, elements: list[str]) -> DesignMatrix:
    """Descriptor rows, labels and core contributions of ``frames`` (see :class:`DesignMatrix`)."""
    a_rows, lab_rows, core_rows, frame_idx, kinds, vols, nat = [], [], [], [], [], [], []
    ws = math.sqrt(settings.stress_weight)
    iv = np.array([i for i, _ in _VOIGT])
    jv = np.array([j for _, j in _VOIGT])
    with settings.descriptors(elements) as desc:
        for k, atoms in enumerate(frames):
            forces, stress = _labels(atoms, k)
            a_f, w_c, ref_f, ref_w = desc.rows(atoms)
            n = len(atoms)
            vol = abs(atoms.get_volume())
            a_rows += [a_f, ws * w_c[iv, jv] / n]
            lab_rows += [forces.ravel(), ws * (-vol * stress)[iv, jv] / n]
            core_rows += [ref_f.ravel(), ws * ref_w[iv, jv] / n]
            frame_idx.append(np.full(3 * n + 6, k))
            kinds.append(np.r_[np.zeros(3 * n, int), np.ones(6, int)])
            vols.append(vol)
            nat.append(n)
    return DesignMatrix(np.vstack(a_rows), np.concatenate(lab_rows), np.concatenate(core_rows),
                        np.concatenate(frame_idx), np.concatenate(kinds), np.array(vols), np.array(nat))


def _labels(atoms: Atoms, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``REF_forces`` (N, 3) eV/A and ``REF_stress`` (3, 3) eV/A^3 of one rmdata frame."""
    forces = atoms.arrays.get("REF_forces")
    stress = atoms.info.get("REF_stress")
    if forces is None or stress is None:
        raise RMError(f"frame {k}: REF_forces/REF_stress missing; fit-native reads rmdata crystal files "
                      "('rmdata make --dataset diamond -o FILE.xyz')")
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        from ase.stress import voigt_6_to_full_3x3_stress

        stress = voigt_6_to_full_3x3_stress(stress)
    return np.asarray(forces, dtype=float), stress.reshape(3, 3)


def ridge_solve(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """``argmin |a x - b|^2 + lam |D x|^2`` with D the column norms and ``lam = alpha``.

    Columns are scaled to unit norm first (so alpha is dimensionless and the same for
    linear and quadratic terms), then solved by SVD (``scipy.linalg.lstsq`` on the
    augmented system), which stays accurate when the descriptors are nearly collinear.
    """
    from scipy.linalg import lstsq

    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    an = a / norms
    if alpha > 0:
        an = np.vstack([an, math.sqrt(alpha) * np.eye(a.shape[1])])
        b = np.concatenate([b, np.zeros(a.shape[1])])
    x, *_ = lstsq(an, b, lapack_driver="gelsd")
    return x / norms


def errors(dm: DesignMatrix, beta: np.ndarray, settings: FitSettings, frames: np.ndarray, *,
           core: bool = True) -> dict[str, float]:
    """RMSE against the labels on the frames of mask ``frames``: of the full potential
    (SNAP + core), or of the SNAP part alone with ``core=False``.

    Forces in eV/A per Cartesian component, stress in eV/A^3 per Voigt component.
    """
    rows = dm.subset(frames)
    resid = dm.a[rows] @ beta + (dm.core[rows] if core else 0.0) - dm.label[rows]
    kind = dm.kind[rows]
    f = resid[kind == 0]
    ws = math.sqrt(settings.stress_weight) or 1.0
    fr = dm.frame[rows][kind == 1]
    s = resid[kind == 1] * dm.natoms[fr] / ws / dm.volume[fr]
    return {"force_rmse_eV_per_A": float(np.sqrt(np.mean(f**2))) if f.size else math.nan,
            "stress_rmse_eV_per_A3": float(np.sqrt(np.mean(s**2))) if s.size else math.nan,
            "n_frames": int(frames.sum())}


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out frames: ``round(fraction * n)`` frames drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    k = round(fraction * n)
    if k:
        mask[rng.choice(n, size=k, replace=False)] = True
    return mask


# ----------------------------------------------------------------------------- potential directory

def _read_frames(data: str | os.PathLike) -> list[Atoms]:
    import rmdata

    path = Path(data)
    if not path.is_file():
        raise RMError(f"{path}: training file not found; make one with 'rmdata make --dataset diamond -o {path}'")
    from rmdata.io import require_labels

    frames = rmdata.read(path)
    require_labels(frames, path, stress=True)
    return frames


def verify_native(potential, frames: Sequence[Atoms], predicted: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Largest |LAMMPS pair_style - fit prediction| of forces (eV/A) and stress (eV/A^3) on ``frames``."""
    from rmsearch.engine import LammpsEngine

    df = ds = 0.0
    engine = LammpsEngine(potential, core_repulsion=None)
    try:
        for atoms, (f_pred, s_pred) in zip(frames, predicted):
            _, f, s = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
            df = max(df, float(np.abs(f - f_pred).max()))
            ds = max(ds, float(np.abs(s - s_pred).max()))
    finally:
        engine.close()
    return {"forces_eV_per_A": df, "stress_eV_per_A3": ds, "n_frames": len(frames)}


def predict(dm: DesignMatrix, beta: np.ndarray, settings: FitSettings, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Forces (N, 3) eV/A and stress (3, 3) eV/A^3 of frame ``index`` from the fit (SNAP + core)."""
    rows = dm.frame == index
    pred = dm.a[rows] @ beta + dm.core[rows]
    n = int(dm.natoms[index])
    ws = math.sqrt(settings.stress_weight) or 1.0
    w6 = pred[3 * n:] * n / ws
    w = np.zeros((3, 3))
    for k, (i, j) in enumerate(_VOIGT):
        w[i, j] = w[j, i] = w6[k]
    return pred[: 3 * n].reshape(n, 3), -w / dm.volume[index]


def fit_beta(dm: DesignMatrix, settings: FitSettings, train: np.ndarray) -> np.ndarray:
    """SNAP coefficients (without beta0) fitted on the frames of mask ``train``."""
    rows = dm.subset(train)
    target = dm.label[rows] - (dm.core[rows] if settings.fit_core else 0.0)
    return ridge_solve(dm.a[rows], target, settings.alpha)


def fit_native(data: str | os.PathLike, out: str | os.PathLike, *, kind: str | None = None,
               settings: FitSettings | None = None, mace_model: str | os.PathLike | None = None,
               overwrite: bool = False, teacher: bool | DistillSettings = True) -> dict[str, Any]:
    """Fit a native potential (``kind`` uf3 or snap) on an rmdata file and write the potential directory ``out``.

    A UF3 fit learns from a quadratic SNAP teacher fitted on the same file
    (:mod:`rmsearch.distill`; ``teacher``: True for the default recipe, a
    :class:`DistillSettings`, or False for the rmdata labels alone); SNAP fits ignore it.
    Returns the fit report (also stored as ``fit.json`` in ``out``): settings, train and
    held-out RMSEs of forces (eV/A) and stress (eV/A^3) on the rmdata frames, MACE's on the
    same held-out frames when ``mace_model`` is given, the distillation rounds, and the
    LAMMPS self-check.
    """
    from rmsearch.potentials import FORMAT_VERSION, fit_volumes, load_potential

    # one thread, as make_dataset and launch: faster for these small matrices, and the
    # teacher rounds would turn BLAS rounding differences into different teacher frames
    pin_threads(1)
    if kind is None:
        kind = settings.kind if settings is not None else DEFAULT_KIND
    if kind not in KINDS:
        raise RMError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
    expected = SETTINGS[kind]
    settings = settings or expected()
    if type(settings) is not expected:
        raise RMError(f"--kind {kind}: settings are {type(settings).__name__}, expected {expected.__name__}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise RMError(f"{out}: already exists; choose another -o or pass --overwrite")
    t0 = time.perf_counter()
    frames = _read_frames(data)
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    dm = design_matrix(frames, settings, elements)
    held = holdout_mask(len(frames), settings.holdout, settings.seed)
    train = ~held
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    distillation = None
    try:
        if teacher is not False and settings.distils:
            from rmsearch.distill import distil

            beta, distillation = distil(data, frames, train, dm, settings, elements, tmp,
                                        teacher if isinstance(teacher, DistillSettings) else None)
        else:
            beta = fit_beta(dm, settings, train)
        report: dict[str, Any] = {
            "kind": kind, "settings": asdict(settings), "elements": elements,
            "n_frames": len(frames), "n_coefficients": int(beta.size),
            "n_rows": int(dm.subset(train).sum()),
            "train": errors(dm, beta, settings, train),
            "holdout": errors(dm, beta, settings, held) if held.any() else None,
            "holdout_snap_only": (errors(dm, beta, settings, held, core=False)
                                  if held.any() and settings.core else None),
            "holdout_frames": np.flatnonzero(held).tolist(),
            **({"distillation": distillation} if distillation else {}),
        }
        if mace_model is not None and held.any():
            report["mace_holdout"] = mace_errors(mace_model, [frames[i] for i in np.flatnonzero(held)])
        volumes, vsource = fit_volumes(frames, elements)
        pair_style, pair_coeff = pair_definition(settings, elements)  # one element for now
        settings.write_model(tmp, elements[0], beta)
        meta = {
            "format": FORMAT_VERSION, "backend": kind, "model": None, "elements": elements,
            "cutoff": settings.cutoff, "pair_style": pair_style, "pair_coeff": pair_coeff,
            "callback": None, "volumes": volumes, "volumes_source": vsource,
            **({"optimizer": settings.optimizer} if settings.optimizer else {}),
            "training": str(Path(data).resolve()),
            "fit": {k: report[k] for k in ("train", "holdout", "holdout_snap_only", "n_coefficients")}
                   | ({"teacher": "teacher", "teacher_frames": distillation["teacher_frames"]}
                      if distillation else {})
                   | ({"mace_holdout": report["mace_holdout"]} if "mace_holdout" in report else {}),
            # the teacher's recipe is part of what made a taught potential (and of its config hash)
            "provenance": provenance({"data": str(data), "kind": kind, **asdict(settings),
                                      **({"teacher": {"distil": distillation["settings"],
                                                      "snap": distillation["teacher"]["settings"]}}
                                         if distillation else {})}, settings.seed),
        }
        write_json_atomic(tmp / "potential.json", meta)
        pot = load_potential(tmp)
        check = [i for i in range(len(frames))][: 3]
        report["verification"] = verify_native(pot, [frames[i] for i in check],
                                               [predict(dm, beta, settings, i) for i in check])
        if not (report["verification"]["forces_eV_per_A"] <= 1e-6
                and report["verification"]["stress_eV_per_A3"] <= 1e-6):
            raise RMError(f"{out}: self-check failed, pair_style snap differs from the fit by "
                          f"{report['verification']}; report this as a bug")
        meta["verification"] = report["verification"]
        write_json_atomic(tmp / "potential.json", meta)
        report["wall_s"] = round(time.perf_counter() - t0, 3)
        report["provenance"] = meta["provenance"]
        write_json_atomic(tmp / "fit.json", report)
        from rmsearch.potentials import finish_potential_dir

        finish_potential_dir(tmp, out, pot, ["# LAMMPS commands that load this potential (rmsearch fit-native)"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fit-native: %s", {k: report[k] for k in ("train", "holdout")})
    return report


def mace_errors(model: str | os.PathLike, frames: Sequence[Atoms]) -> dict[str, float]:
    """RMSE of a MACE model (forces eV/A per component, stress eV/A^3 per Voigt component) on ``frames``."""
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    df, ds = [], []
    for k, atoms in enumerate(frames):
        forces, stress = _labels(atoms, k)
        at = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        at.calc = calc
        df.append((at.get_forces() - forces).ravel())
        s = at.get_stress(voigt=False) - stress
        ds.append(np.array([s[i, j] for i, j in _VOIGT]))
    df, ds = np.concatenate(df), np.concatenate(ds)
    return {"force_rmse_eV_per_A": float(np.sqrt(np.mean(df**2))),
            "stress_rmse_eV_per_A3": float(np.sqrt(np.mean(ds**2))), "n_frames": len(frames),
            "model": str(Path(model).resolve())}
