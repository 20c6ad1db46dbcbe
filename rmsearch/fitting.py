"""The shared core of the native fits (SNAP, :mod:`rmsearch.snap`; UF3, :mod:`rmsearch.uf3`).

Both potentials are linear in their coefficients, so one fit serves both: a design matrix
of force rows and ``-V sigma / N`` stress rows (:class:`DesignMatrix`), ridge least
squares (:func:`ridge_solve`), a held-out error report (:func:`errors`), and the potential
directory with a self-check of the LAMMPS pair style against the fit's own predictions
(:func:`fit_potential`). A settings class (:class:`FitSettings` and its subclasses) names
its descriptors, pair style and model files; how the coefficients are learnt is a
parameter of :func:`fit_potential` (the labels alone by default; :mod:`rmsearch.distill`
adds a SNAP teacher). :func:`rmsearch.native.fit_native` picks the kind and the learner.

Conventions. Forces are ``A_f @ beta`` directly. The virial rows give ``W = -V sigma``
(sigma in ASE's sign, positive = tensile), so stress labels enter as ``-V sigma``; both
are divided by the number of atoms so that one stress row weighs like one force row at
``stress_weight = 1`` per atom, in Voigt order (:func:`rmsearch.engine.to_voigt`).

Solvers (``--solver``). The in-memory fit holds every row and solves by SVD (any ridge, the
measured recipes). Once that would need :data:`STREAM_ABOVE` bytes (a fixed bound, so a
command gives the same potential on every machine), the rows are streamed instead: blocks
of :data:`STREAM_BLOCK` frames (frames of the same elements together, so a block touches
only its elements' columns) are turned into ``A^T A`` and ``A^T b`` on worker processes,
summed in a fixed order (independent of the worker count) and solved by Cholesky with the
same unit-norm ridge; only the rows of a sample of frames are kept, for the error report
and the self-check (:func:`report_frames`). Measured (benchmarks/bench_fit.py) on 700
offline molecules (3,500 frames, quadratic SNAP, 2,970 coefficients): SVD 122 s, normal
equations 38.5 s on one worker, 25.4 s on two, coefficients equal to 6e-13; all 4,488
offline molecules (22,440 frames, 0.88 M rows: 21 GB in memory) in ~100 s on 2 cores.

Settings are declared once: each field of a settings class is made with :func:`setting`,
whose metadata (help text, unit, command-line bounds) ``rmsearch fit-native`` turns into
its options (:mod:`rmsearch.cli_native`), with the field's default.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import Field, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

from rmdata.errors import RMError
from rmdata.utils import pin_threads, provenance, write_json_atomic
from rmsearch.engine import LammpsEngine, Potential, from_voigt, lammps_path, to_voigt
from rmsearch.potentials import FORMAT_VERSION, finish_potential_dir, fit_volumes, load_potential

log = logging.getLogger(__name__)

#: Largest |LAMMPS - fit| of forces (eV/A) and stress (eV/A^3) the self-check accepts.
VERIFY_TOL = 1e-6

#: The ``--solver`` choices (:func:`streams`).
SOLVERS = ("auto", "svd", "normal")
#: ``--solver auto`` streams the normal equations once an in-memory fit's peak passes this (bytes).
STREAM_ABOVE = 2 * 2**30
#: Frames per block of a streamed fit (the unit of work of one worker).
STREAM_BLOCK = 256
#: A streamed fit keeps the rows of at most this many held-out and this many training
#: frames (drawn with the seed) for its error report, and of the first frames for the self-check.
STREAM_REPORT_FRAMES = 500
SELF_CHECK_FRAMES = 3


def setting(default: Any, help: str, *, unit: str = "", option: str | bool = True,
            bounds: tuple = (), follows: str = "") -> Any:
    """A settings field with its command-line declaration in the metadata.

    ``help``: what it is; ``unit``: its unit, shown after the help ("A", "eV/A"; empty for
    counts and flags). ``option``: the option's declaration (True: ``--<name>``; a string
    such as ``"--quadratic/--linear"``; False: not an option of its own, though it takes the
    value of an option of the same name). ``bounds`` of a number on the command line:
    ``(min, max)`` of an int, ``(min, max[, min_open, max_open])`` of a float, None for
    no bound. ``follows``: the field takes the value of that option (its own is None).
    """
    return field(default=default, metadata={"help": help, "unit": unit, "option": option,
                                             "bounds": bounds, "follows": follows})


def with_default(cls: type, name: str, default: Any) -> Any:
    """The field ``name`` of the settings class ``cls`` with another ``default`` (for a
    subclass that keeps the declaration)."""
    base: Field = cls.__dataclass_fields__[name]
    return field(default=default, metadata=base.metadata)


@dataclass
class FitSettings:
    """Options shared by every native fit (help and units in each field's metadata).

    The ZBL core, switched off between ``zbl_inner`` and ``zbl_outer``, is overlaid in
    LAMMPS (``zbl_outer = 0``: no core); with ``fit_core`` it is subtracted from the labels
    before the fit, else the model is fitted to the labels alone and the core only adds a
    wall below zbl_outer.
    """

    #: The ``--kind`` name of the fit, and the relaxation method its potential directory
    #: recommends (None: the relaxer's default).
    kind: ClassVar[str] = ""
    optimizer: ClassVar[str | None] = None
    #: Whether the fit learns from a SNAP teacher by default (:mod:`rmsearch.distill`).
    distills: ClassVar[bool] = False
    #: The options that shrink this kind's coefficient count (named in the memory error).
    fewer_coefficients: ClassVar[str] = ""

    alpha: float = setting(1.0, "Ridge strength on unit-norm columns", unit="dimensionless", bounds=(0, None))
    norm_floor: float | None = setting(
        None, "Floor of the column norms the ridge scales by, relative to the largest: a column the training "
        "data barely touch (a B-spline at distances only one noisy frame reaches) then costs as much to use as "
        "one of this norm, instead of getting an unbounded coefficient [default: 0, and 0.01 for UF3 of "
        "several elements]", unit="dimensionless", bounds=(0, 1))
    stress_weight: float = setting(1.0, "Weight of a stress row (-V sigma / N, eV) against a force row (eV/A)",
                                   bounds=(0, None))
    zbl_inner: float = setting(0.8, "Radius where the ZBL core starts to switch off", unit="A", option=False)
    zbl_outer: float = setting(1.2, "Radius where the ZBL core is off (0: no core)", unit="A", option=False)
    zbl_contacts: bool = setting(
        False, "Scale each element pair's ZBL radii by the shortest distance of that pair in the training "
        "references (noise level 0, strain 0) instead of its covalent-radius sum, so that no pair can come "
        "much closer than the data ever shows it (like ions of a salt, O-O in molecules); pairs never "
        "within 6 A of each other there keep the covalent scale", option="--zbl-contacts/--zbl-covalent")
    #: Shortest distance (A) of each element pair ("A-B", alphabetical) in the training
    #: references, filled in by :func:`fit_potential` with ``zbl_contacts``.
    pair_lengths: dict | None = setting(None, "Shortest pair distances of the references", unit="A",
                                        option=False)
    fit_core: bool = setting(False, "Subtract the core from the labels before fitting")
    solver: str = setting(
        "auto", "Least-squares solver: 'svd' holds every design row in memory (any ridge); 'normal' streams the "
        "rows block by block into the normal equations (memory independent of the frame count, blocks shared "
        "among the --workers processes; for --alpha >= 1e-6); 'auto' is svd until an in-memory fit would "
        "need 2 GiB, then normal")
    holdout: float = setting(0.1, "Fraction of frames held out for the error report", bounds=(0, 1, False, True))
    seed: int = setting(0, "Seed of the holdout draw and of the teacher rounds' starts", bounds=(0, 2**32 - 1))

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise RMError(f"--alpha {self.alpha}: must be >= 0")
        if not self.stress_weight >= 0:
            raise RMError(f"--stress-weight {self.stress_weight}: must be >= 0")
        if self.norm_floor is not None and not 0.0 <= self.norm_floor <= 1.0:
            raise RMError(f"--norm-floor {self.norm_floor}: must be in [0, 1]")
        if self.solver not in SOLVERS:
            raise RMError(f"--solver {self.solver}: choose one of {', '.join(SOLVERS)}")
        if not 0.0 <= self.holdout < 1.0:
            raise RMError(f"--holdout {self.holdout}: must be in [0, 1)")
        if self.zbl_outer and not 0 < self.zbl_inner < self.zbl_outer:
            raise RMError(f"--zbl {self.zbl_inner},{self.zbl_outer}: need 0 < inner < outer (A)")

    @property
    def core(self) -> bool:
        return self.zbl_outer > 0

    @property
    def cutoff(self) -> float:
        """The potential's cutoff (A)."""
        raise NotImplementedError

    def pair_style(self, elements: list[str]) -> tuple[str, str]:
        """(LAMMPS pair style, its ``pair_coeff`` arguments after ``* *``; {potdir} placeholder)."""
        raise NotImplementedError

    def n_columns(self, elements: list[str]) -> int:
        """Fitted coefficients (design-matrix columns) for ``elements``."""
        raise NotImplementedError

    def descriptors(self, elements: list[str]) -> Descriptors:
        """The descriptor rows of this kind for ``elements``."""
        raise NotImplementedError

    def write_model(self, directory: Path, elements: list[str], beta: np.ndarray) -> None:
        """Write the fitted coefficients ``beta`` as the model files in ``directory``."""
        raise NotImplementedError

    def default_norm_floor(self, elements: list[str]) -> float:
        """``norm_floor`` when not given: 0 (measured recipes of SNAP and of one-element UF3)."""
        return 0.0


def periodic(atoms: Atoms, k: int) -> bool:
    """Whether frame ``k`` is a crystal (periodic in all three directions, with a cell) or a
    molecule (periodic in none); a mixed frame (a slab, a wire) is a one-line error."""
    if atoms.pbc.all():
        return True
    if not atoms.pbc.any():
        return False
    raise RMError(f"frame {k}: pbc {atoms.pbc.tolist()}; fit-native reads crystals (periodic in 3D) "
                  "and molecules (not periodic), not slabs or wires")


def vacuum_box(positions: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """A cubic periodic cell (3, 3) in A holding a molecule with no periodic image of any
    atom within ``cutoff`` (A) of another: edge = extent + 2 cutoff + 1 A, and the
    positions (N, 3) moved to its centre."""
    lo, hi = positions.min(0), positions.max(0)
    edge = float((hi - lo).max()) + 2.0 * cutoff + 1.0
    return edge * np.eye(3), positions - (lo + hi) / 2 + edge / 2


class Descriptors:
    """Per-frame descriptor rows of one kind; a context manager (``close`` frees LAMMPS).

    :meth:`rows` returns, for one structure, the force block ``(3 N, ncol)`` (forces =
    block @ beta, eV/A, in the structure's own frame), the virial block ``(3, 3, ncol)``
    (W = -V sigma, eV; unused for a molecule) and the ZBL core's forces (N, 3) eV/A and
    virial (3, 3) eV (zeros without a core). A periodic structure is a crystal; a
    non-periodic one (a molecule, ``pbc`` all False) is placed in a vacuum box
    (:func:`vacuum_box`).
    """

    def rows(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: The element whose covalent-radius sum the ``--zbl`` radii are given for (carbon: the
#: measured diamond recipe); other pairs scale them by their own sum (:func:`zbl_radii`).
ZBL_REFERENCE = "C"


def pair_key(a: str, b: str) -> str:
    """The key of the element pair a-b in :attr:`FitSettings.pair_lengths` ("Cl-Na")."""
    return "-".join(sorted((a, b)))


def pair_length(settings: FitSettings, a: str, b: str) -> float:
    """The length (A) that sets the ZBL radii of pair a-b: the covalent-radius sum, or with
    ``zbl_contacts`` the shortest a-b distance of the training references where there is one."""
    contacts = settings.pair_lengths or {}
    if settings.zbl_contacts and pair_key(a, b) in contacts:
        return float(contacts[pair_key(a, b)])
    return float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])


def zbl_radii(settings: FitSettings, a: str, b: str) -> tuple[float, float]:
    """ZBL switching radii (inner, outer) in A of the element pair ``a``-``b``: the settings'
    radii (given for a C-C pair) times ``pair_length(a, b) / (2 r_cov(C))``, so that each
    pair's core switches off at the same fraction of its bond length (~0.79 with the default
    0.8-1.2 A). The pair length is the covalent-radius sum (C-H 0.56-0.84, H-H 0.33-0.49,
    Na-Cl 1.41-2.12 A) or, with ``zbl_contacts``, the pair's shortest distance in the
    training references (:func:`reference_contacts`; rocksalt NaCl: Na-Cl 1.48-2.22,
    Na-Na and Cl-Cl 2.10-3.15 A)."""
    ref = 2 * covalent_radii[atomic_numbers[ZBL_REFERENCE]]
    scale = pair_length(settings, a, b) / ref
    return round(float(settings.zbl_inner * scale), 6), round(float(settings.zbl_outer * scale), 6)


#: How far (A) :func:`reference_contacts` looks for a pair's shortest distance.
CONTACT_RANGE = 6.0


def reference_contacts(frames: Sequence[Atoms], cutoff: float = CONTACT_RANGE) -> dict[str, float]:
    """Shortest distance (A) of each element pair within ``cutoff`` A over the reference
    frames of an rmdata file: those at noise level 0 and strain 0 (every frame of a file
    without that information), one per ``source_id``."""
    from ase.neighborlist import neighbor_list

    refs: dict[Any, Atoms] = {}
    for k, atoms in enumerate(frames):
        info = atoms.info
        if float(info.get("noise_level", 0)) == 0 and float(info.get("strain", 0) or 0) == 0:
            refs.setdefault(info.get("source_id", k), atoms)
    if not refs:
        refs = dict(enumerate(frames))
    from ase.data import chemical_symbols

    shortest = np.full((119, 119), np.inf)  # by atomic numbers, the lower one first
    for atoms in refs.values():
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        zi, zj = atoms.numbers[i], atoms.numbers[j]
        np.minimum.at(shortest, (np.minimum(zi, zj), np.maximum(zi, zj)), d)
    best = {pair_key(chemical_symbols[a], chemical_symbols[b]): round(float(shortest[a, b]), 6)
            for a, b in zip(*np.nonzero(np.isfinite(shortest)))}
    return dict(sorted(best.items()))


def zbl_styles(settings: FitSettings, elements: list[str]) -> list[tuple[str, list[str]]]:
    """The ZBL core as sub-styles: ``[("zbl INNER OUTER", ["I J Z_I Z_J", ...]), ...]``, one
    per distinct pair of switching radii (:func:`zbl_radii`), every type pair I <= J once;
    empty without a core."""
    if not settings.core:
        return []
    groups: dict[tuple[float, float], list[str]] = {}
    for i, a in enumerate(elements, 1):
        for j, b in enumerate(elements, 1):
            if j >= i:
                groups.setdefault(zbl_radii(settings, a, b), []).append(
                    f"{i} {j} {atomic_numbers[a]} {atomic_numbers[b]}")
    return [(f"zbl {inner!r} {outer!r}", coeffs) for (inner, outer), coeffs in groups.items()]


def overlay(parts: list[tuple[str, list[str]]]) -> tuple[str, list[str]]:
    """One pair style of sub-styles ``(style with its arguments, pair_coeff lines "I J args")``:
    the style itself when there is one, else ``hybrid/overlay`` with each line naming its
    sub-style (numbered, ``zbl 2``, where a style appears more than once)."""
    if len(parts) == 1:
        return parts[0]
    names = [style.split()[0] for style, _ in parts]
    seen: dict[str, int] = {}
    coeffs = []
    for (_, lines), name in zip(parts, names):
        seen[name] = seen.get(name, 0) + 1
        tag = f"{name} {seen[name]}" if names.count(name) > 1 else name
        for line in lines:
            i, j, *rest = line.split(maxsplit=2)
            coeffs.append(" ".join([i, j, tag, *rest]))
    return "hybrid/overlay " + " ".join(style for style, _ in parts), coeffs


def zbl_pair(settings: FitSettings, elements: list[str]) -> tuple[str, list[str]]:
    """(pair_style, pair_coeff lines) of the ZBL core, or of a ``zero`` style without one."""
    if not settings.core:
        return f"zero {settings.cutoff!r}", ["* *"]
    return overlay(zbl_styles(settings, elements))


def pair_definition(settings: FitSettings, elements: list[str]) -> tuple[str, list[str]]:
    """``pair_style`` and ``pair_coeff`` of the fitted potential ({potdir} placeholders)."""
    sub, args = settings.pair_style(elements)
    return overlay(zbl_styles(settings, elements) + [(sub, [f"* * {args}"])])


def native_potential(directory: Path, settings: FitSettings, elements: list[str],
                     volumes: dict[str, float]) -> Potential:
    """An in-memory :class:`~rmsearch.engine.Potential` of the model files that
    ``settings.write_model`` put in ``directory`` (no ``potential.json`` needed)."""
    style, coeff = pair_definition(settings, elements)
    potdir = lammps_path(directory)
    return Potential(directory=Path(directory), backend=settings.kind, elements=list(elements),
                     cutoff=settings.cutoff, volumes=volumes, pair_style=style.format(potdir=potdir),
                     pair_coeff=[c.format(potdir=potdir) for c in coeff],
                     meta={"optimizer": settings.optimizer} if settings.optimizer else {})


# ----------------------------------------------------------------------------- design matrix

@dataclass
class NormalEquations:
    """The training rows reduced to ``gram = A^T A`` (ncol, ncol) and ``rhs = A^T t`` (t: the
    labels, minus the core with ``fit_core``), over ``rows`` rows (a streamed fit)."""

    gram: np.ndarray
    rhs: np.ndarray
    rows: int


@dataclass
class DesignMatrix:
    """Least-squares rows of a set of frames.

    Per frame 3N force rows (eV/A) then, for a crystal, 6 stress rows ``-V sigma / N`` (eV,
    Voigt xx yy zz yz xz xy) scaled by sqrt(stress_weight); a molecule has no stress rows. ``a`` (rows, ncol): descriptor rows;
    ``label`` (rows,): the rmdata labels in row units; ``core`` (rows,): the ZBL core's
    share in row units (zeros without a core); ``frame`` (rows,) frame index; ``kind``
    (rows,) 0 force row, 1 stress row; ``volume`` (A^3; 0 for a molecule) and ``natoms``
    per frame.
    The full potential predicts ``a @ beta + core``.

    A streamed fit (:func:`streamed_design`) holds the rows of the frames of mask ``kept``
    only (error report, self-check) and the training rows as :class:`NormalEquations`
    (``normal``); otherwise every frame is kept and ``normal`` is None.
    """

    a: np.ndarray
    label: np.ndarray
    core: np.ndarray
    frame: np.ndarray
    kind: np.ndarray
    volume: np.ndarray
    natoms: np.ndarray
    kept: np.ndarray | None = None
    normal: NormalEquations | None = None

    def subset(self, frames: np.ndarray) -> np.ndarray:
        """Row mask of the frames where the boolean per-frame mask ``frames`` is True (kept rows)."""
        return frames[self.frame]

    def evaluated(self, frames: np.ndarray) -> np.ndarray:
        """The frames of mask ``frames`` whose rows are held (all of them unless streamed)."""
        return frames if self.kept is None else frames & self.kept


def n_rows(frames: Sequence[Atoms]) -> int:
    """Design-matrix rows of ``frames``: 3N per frame, plus 6 per crystal."""
    return sum(3 * len(a) + 6 * bool(a.pbc.all()) for a in frames)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable`` of /proc/meminfo;
    elsewhere the free physical pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


#: Copies of the design matrix a fit holds at its peak (the matrix, the training rows,
#: the column-scaled and ridge-augmented system, LAPACK's work copy).
DESIGN_COPIES = 4


def streams(frames: Sequence[Atoms], settings: FitSettings, elements: list[str]) -> bool:
    """Whether the fit uses streamed normal equations (``--solver``; auto: once an in-memory
    fit would need more than :data:`STREAM_ABOVE` bytes, whatever the machine's memory, so
    that the same command gives the same potential everywhere)."""
    if settings.solver != "auto":
        return settings.solver == "normal"
    return DESIGN_COPIES * 8 * n_rows(frames) * settings.n_columns(elements) > STREAM_ABOVE


def check_memory(frames: Sequence[Atoms], settings: FitSettings, elements: list[str],
                 kept: np.ndarray | None = None) -> int:
    """Bytes the fit needs at its peak (the design matrix; streamed, the gram matrix and the
    ``kept`` frames' rows); a one-line RMError with suggestions when that exceeds the
    available memory (:func:`available_memory`), before any work."""
    rows, cols = n_rows(frames), settings.n_columns(elements)
    if kept is None:
        need = DESIGN_COPIES * 8 * rows * cols
        what = f"{rows} rows x {cols} coefficients x {DESIGN_COPIES} copies"
    else:
        held = n_rows([a for a, k in zip(frames, kept) if k])
        need = 8 * cols * (held + 4 * cols)
        what = f"{held} kept rows and 4 gram matrices of {cols} coefficients"
    have = available_memory()
    if need > have:
        raise RMError(f"the fit needs ~{need / 2**30:.1f} GiB ({what}), {have / 2**30:.1f} GiB available; "
                      f"fit fewer frames ('rmdata make --limit N'), stream the rows (--solver normal), "
                      f"or fewer coefficients ({settings.fewer_coefficients})")
    return need


def _frame_rows(desc: Descriptors, atoms: Atoms, k: int, settings: FitSettings
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Rows of frame ``k``: (descriptor rows, labels, core share, row kinds, volume (0: molecule))."""
    forces, stress = labels(atoms, k)
    a_f, w_c, ref_f, ref_w = desc.rows(atoms)
    n = len(atoms)
    if stress is None:
        return a_f, forces.ravel(), ref_f.ravel(), np.zeros(3 * n, int), 0.0
    ws = math.sqrt(settings.stress_weight)
    vol = abs(atoms.get_volume())
    return (np.vstack([a_f, ws * to_voigt(w_c) / n]),
            np.concatenate([forces.ravel(), ws * to_voigt(-vol * stress) / n]),
            np.concatenate([ref_f.ravel(), ws * to_voigt(ref_w) / n]),
            np.r_[np.zeros(3 * n, int), np.ones(6, int)], vol)


def _assemble(parts: list[tuple[int, tuple]], frames: Sequence[Atoms], ncol: int, kept=None,
              normal=None) -> DesignMatrix:
    """A :class:`DesignMatrix` of the rows ``parts`` ((frame index, :func:`_frame_rows`), in order)."""
    volume = np.zeros(len(frames))
    for k, rows in parts:
        volume[k] = rows[4]
    cat = (lambda i, empty: np.concatenate([r[i] for _, r in parts]) if parts else empty)
    return DesignMatrix(np.vstack([r[0] for _, r in parts]) if parts else np.zeros((0, ncol)),
                        cat(1, np.zeros(0)), cat(2, np.zeros(0)),
                        np.concatenate([np.full(len(r[1]), k) for k, r in parts]) if parts else np.zeros(0, int),
                        cat(3, np.zeros(0, int)), volume, np.array([len(a) for a in frames]), kept, normal)


def design_matrix(frames: Sequence[Atoms], settings: FitSettings, elements: list[str]) -> DesignMatrix:
    """Descriptor rows, labels and core contributions of ``frames``, all in memory (see
    :class:`DesignMatrix`)."""
    check_memory(frames, settings, elements)
    with settings.descriptors(elements) as desc:
        parts = [(k, _frame_rows(desc, atoms, k, settings)) for k, atoms in enumerate(frames)]
    return _assemble(parts, frames, settings.n_columns(elements))


def report_frames(n: int, held: np.ndarray, seed: int) -> np.ndarray:
    """Mask of the frames a streamed fit keeps rows of: up to :data:`STREAM_REPORT_FRAMES`
    held-out and as many training frames (drawn with ``seed``), and the first
    :data:`SELF_CHECK_FRAMES`."""
    rng = np.random.default_rng([seed, 1])
    keep = np.zeros(n, dtype=bool)
    for pool in (np.flatnonzero(held), np.flatnonzero(~held)):
        keep[rng.choice(pool, size=min(len(pool), STREAM_REPORT_FRAMES), replace=False)] = True
    keep[:SELF_CHECK_FRAMES] = True
    return keep


_STREAM: dict[str, Any] = {}


def _stream_init(frames, settings, elements, train, kept) -> None:
    pin_threads(1)
    _STREAM.update(frames=frames, settings=settings, train=train, kept=kept, desc=settings.descriptors(elements))


def _stream_block(block: np.ndarray) -> tuple:
    """One block of a streamed fit: (columns any training row touches, their gram and rhs,
    training rows, kept frames' rows)."""
    st = _STREAM
    a_rows, t_rows, kept = [], [], []
    for k in block:
        rows = _frame_rows(st["desc"], st["frames"][k], int(k), st["settings"])
        if st["train"][k]:
            a_rows.append(rows[0])
            t_rows.append(fit_target(rows[1], rows[2], st["settings"]))
        if st["kept"][k]:
            kept.append((int(k), rows))
    if not a_rows:
        return np.zeros(0, int), np.zeros((0, 0)), np.zeros(0), 0, kept
    a = np.vstack(a_rows)
    cols = np.flatnonzero(np.any(a != 0, axis=0))  # e.g. the element blocks present
    sub = np.ascontiguousarray(a[:, cols])
    return cols, sub.T @ sub, sub.T @ np.concatenate(t_rows), len(a), kept


def streamed_design(frames: Sequence[Atoms], settings: FitSettings, elements: list[str], train: np.ndarray,
                    kept: np.ndarray, workers: int = 1) -> DesignMatrix:
    """The training rows of ``frames`` as normal equations, accumulated over blocks of
    :data:`STREAM_BLOCK` frames (frames of the same elements together, so a block's gram
    touches only the columns of its elements) on ``workers`` processes, and the rows of
    the ``kept`` frames. Blocks are summed in a fixed order: the result does not depend on
    ``workers``."""
    from contextlib import ExitStack

    from rmdata.utils import worker_pool

    check_memory(frames, settings, elements, kept)
    ncol = settings.n_columns(elements)
    order = sorted(range(len(frames)), key=lambda k: (tuple(sorted(set(frames[k].numbers.tolist()))), k))
    blocks = [np.array(order[i:i + STREAM_BLOCK]) for i in range(0, len(order), STREAM_BLOCK)]
    gram, rhs, rows, parts = np.zeros((ncol, ncol)), np.zeros(ncol), 0, []
    args = (frames, settings, elements, train, kept)
    with ExitStack() as stack:
        if workers > 1 and len(blocks) > 1:
            pool = stack.enter_context(worker_pool(min(workers, len(blocks)), _stream_init, args))
            results = pool.imap(_stream_block, blocks)
        else:  # in this process
            _stream_init(*args)
            stack.callback(lambda: _STREAM.pop("desc").close())
            results = map(_stream_block, blocks)
        for cols, g, r, n, part in results:
            gram[np.ix_(cols, cols)] += g
            rhs[cols] += r
            rows += n
            parts += part
    parts.sort(key=lambda p: p[0])
    return _assemble(parts, frames, ncol, kept, NormalEquations(gram, rhs, rows))


def labels(atoms: Atoms, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``REF_forces`` (N, 3) eV/A and ``REF_stress`` (3, 3) eV/A^3 of the rmdata frame number
    ``k`` (stress None for a molecule, :func:`periodic`)."""
    forces = atoms.arrays.get("REF_forces")
    if forces is None:
        raise RMError(f"frame {k}: REF_forces missing; fit-native reads rmdata files "
                      "('rmdata make --dataset diamond -o FILE.xyz')")
    if not periodic(atoms, k):
        return np.asarray(forces, dtype=float), None
    stress = atoms.info.get("REF_stress")
    if stress is None:
        raise RMError(f"frame {k}: a crystal without REF_stress; fit-native reads rmdata files "
                      "('rmdata make --dataset diamond -o FILE.xyz')")
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        stress = from_voigt(stress)
    return np.asarray(forces, dtype=float), stress.reshape(3, 3)


def _column_scale(norms: np.ndarray, floor: float) -> np.ndarray:
    """The column norms a ridge scales by: floored at ``floor`` times the largest, 1 for an
    all-zero column (which then gets a zero coefficient)."""
    zero = norms == 0
    norms = np.maximum(norms, floor * norms.max()) if norms.size else norms
    norms[zero] = 1.0
    return norms


def ridge_solve_normal(normal: NormalEquations, alpha: float, floor: float = 0.0) -> np.ndarray:
    """:func:`ridge_solve` from normal equations: ``(D^-1 G D^-1 + alpha) y = D^-1 A^T b``,
    ``x = D^-1 y``, by Cholesky (the ridge keeps it positive definite; without ridge, or
    if it fails, by least squares on the gram)."""
    from scipy.linalg import LinAlgError, lstsq, solve

    norms = _column_scale(np.sqrt(np.clip(np.diag(normal.gram), 0, None)), floor)
    g = normal.gram / np.outer(norms, norms)
    g[np.diag_indices_from(g)] += alpha
    r = normal.rhs / norms
    try:
        if alpha <= 0:
            raise LinAlgError("no ridge")
        y = solve(g, r, assume_a="pos")
    except LinAlgError:
        y, *_ = lstsq(g, r, lapack_driver="gelsd")
    return y / norms


def ridge_solve(a: np.ndarray, b: np.ndarray, alpha: float, floor: float = 0.0) -> np.ndarray:
    """``argmin |a x - b|^2 + lam |D x|^2`` with D the column norms and ``lam = alpha``.

    Columns are scaled to unit norm first (so alpha is dimensionless and the same for
    linear and quadratic terms), then solved by SVD (``scipy.linalg.lstsq`` on the
    augmented system), which stays accurate when the descriptors are nearly collinear.
    Norms below ``floor`` times the largest count as that (``FitSettings.norm_floor``);
    an all-zero column gets a zero coefficient.
    """
    from scipy.linalg import lstsq

    norms = _column_scale(np.linalg.norm(a, axis=0), floor)
    an = a / norms
    if alpha > 0:
        an = np.vstack([an, math.sqrt(alpha) * np.eye(a.shape[1])])
        b = np.concatenate([b, np.zeros(a.shape[1])])
    x, *_ = lstsq(an, b, lapack_driver="gelsd")
    return x / norms


def errors(dm: DesignMatrix, beta: np.ndarray, settings: FitSettings, frames: np.ndarray, *,
           core: bool = True) -> dict[str, float]:
    """RMSE against the labels on the frames of mask ``frames``: of the full potential
    (model + core), or of the model alone with ``core=False``.

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
            "n_frames": int(dm.evaluated(frames).sum())}


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out frames: ``round(fraction * n)`` frames drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    k = round(fraction * n)
    if k:
        mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def predict(dm: DesignMatrix, beta: np.ndarray, settings: FitSettings, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Forces (N, 3) eV/A and stress (3, 3) eV/A^3 of frame ``index`` from the fit (model +
    core); a molecule's stress is zero."""
    rows = dm.frame == index
    pred = dm.a[rows] @ beta + dm.core[rows]
    n = int(dm.natoms[index])
    if dm.volume[index] == 0:
        return pred.reshape(n, 3), np.zeros((3, 3))
    ws = math.sqrt(settings.stress_weight) or 1.0
    w = from_voigt(pred[3 * n:] * n / ws)
    return pred[: 3 * n].reshape(n, 3), -w / dm.volume[index]


def fit_target(label: np.ndarray, core: np.ndarray, settings: FitSettings) -> np.ndarray:
    """What the coefficients are fitted to: the labels, minus the core's share with ``fit_core``."""
    return label - core if settings.fit_core else label


def fit_beta(dm: DesignMatrix, settings: FitSettings, train: np.ndarray) -> np.ndarray:
    """Coefficients (SNAP: without beta0) fitted to the labels of the frames of mask ``train``
    (a streamed ``dm`` holds the normal equations of the training frames it was built with)."""
    if dm.normal is not None:  # streamed: the training rows are the normal equations
        return ridge_solve_normal(dm.normal, settings.alpha, settings.norm_floor or 0.0)
    rows = dm.subset(train)
    return ridge_solve(dm.a[rows], fit_target(dm.label[rows], dm.core[rows], settings), settings.alpha,
                       settings.norm_floor or 0.0)


# ----------------------------------------------------------------------------- potential directory

def read_frames(data: str | os.PathLike) -> list[Atoms]:
    """The frames of the rmdata file ``data`` (REF_forces required, and REF_stress of the
    crystals; molecules have none)."""
    import rmdata
    from rmdata.io import require_labels

    path = Path(data)
    if not path.is_file():
        raise RMError(f"{path}: training file not found; make one with 'rmdata make --dataset diamond -o {path}'")
    frames = rmdata.read(path)
    require_labels(frames, path)
    for k, atoms in enumerate(frames):
        labels(atoms, k)
    return frames


def verify_native(potential: Potential, frames: Sequence[Atoms],
                  predicted: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Largest |LAMMPS pair_style - fit prediction| of forces (eV/A) and stress (eV/A^3) on
    ``frames`` (molecules in LAMMPS' shrink-wrapped, non-periodic box)."""
    df = ds = 0.0
    engine = LammpsEngine(potential, core_repulsion=None)
    try:
        for atoms, (f_pred, s_pred) in zip(frames, predicted):
            _, f, s = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers,
                                     bool(atoms.pbc.all()))
            df = max(df, float(np.abs(f - f_pred).max()))
            ds = max(ds, float(np.abs(s - s_pred).max()))
    finally:
        engine.close()
    return {"forces_eV_per_A": df, "stress_eV_per_A3": ds, "n_frames": len(frames)}


def mace_errors(model: str | os.PathLike, frames: Sequence[Atoms]) -> dict[str, float]:
    """RMSE of a MACE model (forces eV/A per component, stress eV/A^3 per Voigt component) on ``frames``."""
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    df, ds = [], []
    for k, atoms in enumerate(frames):
        forces, stress = labels(atoms, k)
        at = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        at.calc = calc
        df.append((at.get_forces() - forces).ravel())
        if stress is not None:
            ds.append(to_voigt(at.get_stress(voigt=False) - stress))
    df, ds = np.concatenate(df), np.concatenate(ds or [np.zeros(0)])
    return {"force_rmse_eV_per_A": float(np.sqrt(np.mean(df**2))),
            "stress_rmse_eV_per_A3": float(np.sqrt(np.mean(ds**2))) if ds.size else math.nan,
            "n_frames": len(frames),
            "model": str(Path(model).resolve())}


@dataclass
class FitProblem:
    """What a learner (:func:`fit_potential`'s ``learn``) fits: the rmdata file ``data``,
    its ``frames`` and their design rows ``dm``, the training mask ``train`` (per frame),
    the ``settings`` and ``elements``, and ``workdir``, the potential directory being
    written (a learner may keep files there, e.g. ``teacher/``)."""

    data: str | os.PathLike
    frames: list[Atoms]
    train: np.ndarray
    dm: DesignMatrix
    settings: FitSettings
    elements: list[str]
    workdir: Path


#: A learner: coefficients, and a distillation report (None without a teacher; the keys
#: ``settings``, ``teacher`` (with ``settings``) and ``teacher_frames`` go into potential.json).
Learner = Callable[[FitProblem], tuple[np.ndarray, dict[str, Any] | None]]


def labels_alone(problem: FitProblem) -> tuple[np.ndarray, None]:
    """The default learner: ridge least squares on the training frames' labels."""
    return fit_beta(problem.dm, problem.settings, problem.train), None


def fit_potential(data: str | os.PathLike, out: str | os.PathLike, settings: FitSettings, *,
                  learn: Learner = labels_alone, mace_model: str | os.PathLike | None = None,
                  overwrite: bool = False, workers: int = 1) -> dict[str, Any]:
    """Fit ``settings`` (its kind) on the rmdata file ``data`` with ``learn`` and write the
    potential directory ``out``; returns the fit report (also ``out/fit.json``): settings,
    train and held-out RMSEs of forces (eV/A) and stress (eV/A^3), MACE's on the same
    held-out frames when ``mace_model`` is given, the distillation report of a taught fit,
    and the LAMMPS self-check. The directory is built beside ``out`` and renamed into place
    when complete. A streamed fit (:func:`streams`) computes its rows on ``workers``
    processes and reports errors on the frames it kept (:func:`report_frames`).
    """
    # one thread, as make_dataset and launch: faster for these small matrices, and the
    # teacher rounds would turn BLAS rounding differences into different teacher frames
    pin_threads(1)
    kind = settings.kind
    out = Path(out)
    if out.exists() and not overwrite:
        raise RMError(f"{out}: already exists; choose another -o or pass --overwrite")
    t0 = time.perf_counter()
    frames = read_frames(data)
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    if settings.zbl_contacts and settings.core and settings.pair_lengths is None:
        settings = replace(settings, pair_lengths=reference_contacts(frames))
    if settings.norm_floor is None:
        settings = replace(settings, norm_floor=settings.default_norm_floor(elements))
    held = holdout_mask(len(frames), settings.holdout, settings.seed)
    train = ~held
    if streams(frames, settings, elements):
        dm = streamed_design(frames, settings, elements, train, report_frames(len(frames), held, settings.seed),
                             workers)
    else:
        dm = design_matrix(frames, settings, elements)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        beta, distillation = learn(FitProblem(data, frames, train, dm, settings, elements, tmp))
        report: dict[str, Any] = {
            "kind": kind, "settings": asdict(settings), "elements": elements,
            "n_frames": len(frames), "n_coefficients": int(beta.size),
            "n_rows": dm.normal.rows if dm.normal is not None else int(dm.subset(train).sum()),
            "solver": "normal" if dm.normal is not None else "svd",
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
        pair_style, pair_coeff = pair_definition(settings, elements)
        settings.write_model(tmp, elements, beta)
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
            # the teacher's recipe is part of what made a taught potential (and of its config
            # hash); "distil" is the key potential directories have always carried
            "provenance": provenance({"data": str(data), "kind": kind, **asdict(settings),
                                      **({"teacher": {"distil": distillation["settings"],
                                                      "snap": distillation["teacher"]["settings"]}}
                                         if distillation else {})}, settings.seed),
        }
        write_json_atomic(tmp / "potential.json", meta)
        pot = load_potential(tmp)
        check = list(range(min(len(frames), SELF_CHECK_FRAMES)))
        report["verification"] = verify_native(pot, [frames[i] for i in check],
                                               [predict(dm, beta, settings, i) for i in check])
        if not (report["verification"]["forces_eV_per_A"] <= VERIFY_TOL
                and report["verification"]["stress_eV_per_A3"] <= VERIFY_TOL):
            raise RMError(f"{out}: self-check failed, the LAMMPS pair style ({kind}) differs from the fit by "
                          f"{report['verification']}; report this as a bug")
        meta["verification"] = report["verification"]
        write_json_atomic(tmp / "potential.json", meta)
        report["wall_s"] = round(time.perf_counter() - t0, 3)
        report["provenance"] = meta["provenance"]
        write_json_atomic(tmp / "fit.json", report)
        finish_potential_dir(tmp, out, pot, ["# LAMMPS commands that load this potential (rmsearch fit-native)"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fit-native: %s", {k: report[k] for k in ("train", "holdout")})
    return report
