"""Distillation: a cheap native student (UF3) learns, from a quadratic SNAP teacher fitted on
the same rmdata file, what the minima its own searches visit should cost.

Why. Response-matched labels describe the reference structures and small perturbations of
them. Fitted to those labels alone, a two- plus three-body UF3 potential (first-shell
three-body cutoff, ~0.05 ms per 8-atom force call) is free to put over-coordinated phases
below diamond: nothing in the labels prices a 5th-8th neighbour at bonding distance. A
quadratic SNAP fitted to the same labels does price them (its bispectrum sees four shells)
and finds diamond, but costs ~1-2 ms per call. The student keeps the UF3 cost and takes
the teacher's judgement on the configurations that matter for search: its own minima.
All information still comes from the rmdata file: the teacher is fitted on its training
split only, so the held-out frames stay held out for both.

Recipe (:class:`DistillSettings`, defaults in brackets):

1. teacher: the default ``fit-native --kind snap`` fit, kept in ``POTDIR/teacher``;
2. teacher frames: the minima of ``teacher_starts`` [60] random starts (``rmsearch.starts``)
   relaxed with the teacher: the searches of the training compositions, taken in turn
   (:func:`training_specs`: each reduced formula of a training crystal with ``natoms``
   [2-8] atoms, at least one formula unit; each formula of a training molecule);
3. ``rounds`` [3] times: fit the student; relax ``starts_per_round`` [60] fresh random
   starts with it; add every minimum and ``copies`` [2] rattled (``rattle``, A) and strained
   (``strain``) copies of it to the teacher frames;
4. the final fit.

A fit uses the rmdata training frames' forces and stresses (as without a teacher) plus the
teacher frames' forces, stresses and energies, and the energies per atom of every frame
relative to the first rmdata training frame of the same reduced composition (per-atom
energies of one stoichiometry share their elements' chemical potentials, which UF3 has no
term for), weighted by ``energy_weight`` against a force row. The teacher is the default
quadratic SNAP with the student's two-body cutoff and ZBL settings. Teacher labels are SNAP
without its ZBL core (the student overlays the same core); frames with two atoms closer than
``min_distance`` (A, the core's range) are left out.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from rmdata.errors import RMError
from rmsearch.engine import LammpsEngine, Potential
from rmsearch.fitting import FitProblem, design_matrix, fit_potential, native_potential, ridge_solve, setting
from rmsearch.potentials import load_potential
from rmsearch.relax import Relaxer, RelaxSettings
from rmsearch.snap import SnapSettings
from rmsearch.uf3 import UF3Settings, energy_row

log = logging.getLogger(__name__)


@dataclass
class DistillSettings:
    """Options of :func:`distill` (see the module docstring; help and units in each field's
    metadata, the ``fit-native`` options among them): counts of random starts, the copies
    per student minimum with their rattle and strain, the cell sizes of the starts, the
    energy-row weight, the closest pair kept, and the seed of starts and copies (``--seed``)."""

    rounds: int = setting(3, "Teacher rounds: UF3 search, teacher labels, refit", bounds=(0, 100))
    teacher_starts: int = setting(60, "Random starts relaxed with the teacher, and with the UF3 in each round",
                                  option="--distil-starts", bounds=(1, 100000))
    starts_per_round: int = setting(60, "Random starts relaxed with the UF3 in each round",
                                    follows="teacher_starts")
    copies: int = setting(2, "Rattled and strained copies per student minimum", option=False)
    rattle: float = setting(0.05, "Gaussian sigma of the copies' atom displacements", unit="A", option=False)
    strain: float = setting(0.03, "Gaussian sigma of the copies' deformation gradient", option=False)
    natoms: str = setting("2-8", "Atoms per cell of those starts (N or MIN-MAX)", option="--distil-natoms")
    energy_weight: float = setting(100.0, "Weight of a teacher energy-per-atom row (eV) against a force row (eV/A)",
                                   bounds=(0, None))
    min_distance: float = setting(1.2, "Closest pair of atoms in a teacher frame", unit="A", option=False)
    seed: int = setting(0, "Seed of the starts and copies", option=False)

    def __post_init__(self) -> None:
        for name in ("rounds", "teacher_starts", "starts_per_round", "copies"):
            if getattr(self, name) < 0:
                raise RMError(f"distillation setting {name}={getattr(self, name)!r}: must be >= 0")
        if not self.energy_weight >= 0:
            raise RMError(f"--energy-weight {self.energy_weight}: must be >= 0")


class _Teacher:
    """The teacher: its potential directory (with core, for searches) and its labels (SNAP
    without its core, in LAMMPS)."""

    def __init__(self, teacher_dir: Path, settings: SnapSettings, elements: list[str]):
        self.potential = load_potential(teacher_dir)
        bare = native_potential(teacher_dir, replace(settings, zbl_outer=0.0), elements, self.potential.volumes)
        self.engine = LammpsEngine(bare, core_repulsion=None)

    def label(self, atoms: Atoms) -> Atoms:
        """A copy of ``atoms`` with the teacher's REF_forces (eV/A), REF_stress (eV/A^3, a
        crystal's) and ``teacher_energy`` (eV)."""
        crystal = bool(atoms.pbc.all())
        e, f, s = self.engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, crystal)
        out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=crystal)
        out.arrays["REF_forces"] = f
        if crystal:
            out.info["REF_stress"] = np.asarray(s).ravel()
        out.info["teacher_energy"] = float(e)
        return out

    def close(self) -> None:
        self.engine.close()


def _student(directory: Path, settings: UF3Settings, elements: list[str], beta: np.ndarray,
             volumes: dict[str, float]) -> Potential:
    """A loadable in-memory potential of the student coefficients ``beta`` (files in ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings.write_model(directory, elements, beta)
    return native_potential(directory, settings, elements, volumes)


class _Rows:
    """The growing least-squares system of the student: rmdata force/stress rows, teacher
    frame force/stress rows, and energy-per-atom rows relative to a reference frame."""

    def __init__(self, settings: UF3Settings, elements: list[str], opts: DistillSettings,
                 refs: Sequence[Atoms]):
        self.settings, self.elements, self.opts = settings, elements, opts
        self.layout = settings.layout(elements)
        self.a: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        # per reduced composition: the first frame's energy row and teacher energy, per atom
        self.refs: dict[str, tuple[np.ndarray, float]] = {}
        for atoms in refs:
            self.refs.setdefault(stoichiometry(atoms), (energy_row(atoms, self.layout) / len(atoms),
                                                        atoms.info["teacher_energy"] / len(atoms)))

    def add_design(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a.append(a)
        self.b.append(b)

    def relative_energies(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Energy-per-atom feature rows and teacher targets (eV/atom) of ``frames``, both
        relative to the reference frame of their reduced composition (unweighted; frames of a
        composition without one are left out)."""
        rows, target = [], []
        for a in frames:
            ref = self.refs.get(stoichiometry(a))
            if ref is not None:
                rows.append(energy_row(a, self.layout) / len(a) - ref[0])
                target.append(a.info["teacher_energy"] / len(a) - ref[1])
        return np.array(rows).reshape(len(rows), self.layout.n_columns), np.array(target)

    def add_energies(self, frames: Sequence[Atoms]) -> None:
        """Energy rows of ``frames``, weighted by ``energy_weight``."""
        rows, target = self.relative_energies(frames)
        self.add_design(self.opts.energy_weight * rows, self.opts.energy_weight * target)

    def add_frames(self, frames: Sequence[Atoms]) -> None:
        """Force, stress and energy rows of teacher-labelled frames."""
        if not frames:
            return
        dm = design_matrix(frames, self.settings, self.elements)
        self.add_design(dm.a, dm.label)
        self.add_energies(frames)

    def solve(self) -> np.ndarray:
        return ridge_solve(np.vstack(self.a), np.concatenate(self.b), self.settings.alpha,
                           self.settings.norm_floor or 0.0)

    def energy_gap(self, beta: np.ndarray, frames: Sequence[Atoms]) -> float:
        """RMS difference (eV/atom) between student and teacher relative energies on ``frames``."""
        rows, target = self.relative_energies(frames)
        if not len(target):
            return math.nan
        return float(np.sqrt(np.mean((rows @ beta - target) ** 2)))


def stoichiometry(atoms: Atoms) -> str:
    """The reduced formula of ``atoms`` ("NaCl", "CH3"): what per-atom energies compare within."""
    return atoms.get_chemical_formula(mode="hill", empirical=True)


def training_specs(frames: Sequence[Atoms], natoms: str, volumes: dict[str, float]) -> list[Any]:
    """The searches of the training compositions (:class:`rmsearch.starts.StartSpec`, in
    first-seen order): a crystal's reduced formula with ``natoms`` atoms (raised to one
    formula unit where that is larger), a molecule's formula as a molecule."""
    from rmsearch.starts import make_spec, parse_natoms

    lo, hi = parse_natoms(natoms)
    specs: dict[tuple[str, str], Any] = {}
    for atoms in frames:
        if atoms.pbc.any():
            formula = stoichiometry(atoms)
            size = len(Atoms(formula))
            key = ("composition", formula)
            if key not in specs:
                specs[key] = make_spec(composition=formula, natoms=(max(lo, size), max(hi, size)), volumes=volumes)
        else:
            formula = atoms.get_chemical_formula(mode="hill")
            key = ("molecule", formula)
            if key not in specs:
                specs[key] = make_spec(molecule=formula, volumes=volumes)
    return list(specs.values())


def _minima(potential: Potential, specs: Sequence[Any], run_ids: range, seed: int, bar: Any) -> list[Atoms]:
    """Relaxed structures of the random starts ``run_ids`` (run r searches ``specs[r %
    len(specs)]``; finite energies only)."""
    from rmsearch.starts import make_start

    out = []
    with Relaxer(potential, RelaxSettings()) as relaxer:
        for run_id in run_ids:
            o = relaxer.relax(make_start(specs[run_id % len(specs)], run_id, seed))
            bar.update(1)
            if np.isfinite(o.energy_per_atom) and np.all(np.isfinite(o.atoms.positions)):
                out.append(o.atoms)
    return out


def _perturbed(minima: Sequence[Atoms], opts: DistillSettings, rng: np.random.Generator) -> list[Atoms]:
    """``opts.copies`` strained (crystals) and rattled copies of each structure, in order."""
    out = []
    for a in minima:
        for _ in range(opts.copies):
            b = a.copy()
            strain = np.eye(3) + opts.strain * rng.standard_normal((3, 3))
            if b.pbc.all():
                b.set_cell(b.cell @ strain, scale_atoms=True)
            b.positions += opts.rattle * rng.standard_normal(b.positions.shape)
            out.append(b)
    return out


def distill(problem: FitProblem, opts: DistillSettings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the UF3 student of ``problem.settings`` on the rmdata frames of ``problem``
    (training mask, design rows) and on teacher frames (module docstring); the teacher is
    fitted on ``problem.data`` into ``problem.workdir/teacher``. Returns the student's
    coefficients and a report. A learner of :func:`rmsearch.fitting.fit_potential`."""
    from tqdm import tqdm

    from rmsearch.analysis.validity import min_distance

    opts = opts or DistillSettings()
    data, frames, train, dm = problem.data, problem.frames, problem.train, problem.dm
    settings, elements, workdir = problem.settings, problem.elements, problem.workdir
    if settings.fit_core:
        raise RMError("--fit-core: not supported with a teacher (teacher labels have no core); "
                      "drop --fit-core or pass --no-teacher")
    if dm.normal is not None:
        raise RMError("a teacher needs every design row in memory, and this fit streams them; "
                      "pass --solver svd (with fewer frames) or --no-teacher")
    teacher_dir = workdir / "teacher"
    teacher_settings = SnapSettings(holdout=settings.holdout, seed=settings.seed, rcut=settings.rc2,
                                    zbl_inner=settings.zbl_inner, zbl_outer=settings.zbl_outer,
                                    zbl_contacts=settings.zbl_contacts, pair_lengths=settings.pair_lengths)
    teacher_report = fit_potential(data, teacher_dir, teacher_settings)
    teacher = _Teacher(teacher_dir, teacher_settings, elements)
    scratch = workdir / ".student"
    train_idx = np.flatnonzero(train)
    rmdata_frames = [teacher.label(frames[i]) for i in train_idx]
    rows = _Rows(settings, elements, opts, rmdata_frames)
    design = dm.subset(train)
    rows.add_design(dm.a[design], dm.label[design])
    rows.add_energies(rmdata_frames)

    def keep(atoms: Atoms) -> bool:
        return min_distance(atoms, opts.min_distance) >= opts.min_distance

    rng = np.random.default_rng([opts.seed, 1])
    specs = training_specs([frames[i] for i in train_idx], opts.natoms, teacher.potential.volumes)
    total = opts.teacher_starts + opts.rounds * opts.starts_per_round
    report: dict[str, Any] = {"settings": asdict(opts), "teacher": {
        "directory": "teacher", "settings": teacher_report["settings"],
        "holdout": teacher_report["holdout"], "holdout_snap_only": teacher_report["holdout_snap_only"]},
        "rounds": []}
    try:
        with tqdm(total=total, unit="relax", desc="distill", disable=None, dynamic_ncols=True) as bar:
            start = 0
            minima = _minima(teacher.potential, specs, range(start, start + opts.teacher_starts), opts.seed, bar)
            start += opts.teacher_starts
            new = [teacher.label(a) for a in minima if keep(a)]
            rows.add_frames(new)
            n_frames = len(new)
            for r in range(opts.rounds):
                beta = rows.solve()
                student = _student(scratch / f"round{r}", settings, elements, beta, teacher.potential.volumes)
                minima = _minima(student, specs, range(start, start + opts.starts_per_round), opts.seed, bar)
                start += opts.starts_per_round
                labelled = [teacher.label(a) for a in minima if keep(a)]
                gap = rows.energy_gap(beta, labelled)
                new = labelled + [teacher.label(b) for b in _perturbed(minima, opts, rng) if keep(b)]
                rows.add_frames(new)
                n_frames += len(new)
                report["rounds"].append({"round": r + 1, "student_minima": len(labelled),
                                         "energy_gap_eV_per_atom": round(gap, 5), "teacher_frames": n_frames})
                log.info("distill round %d: %d student minima, student-teacher energy gap %.4f eV/atom, "
                         "%d teacher frames", r + 1, len(labelled), gap, n_frames)
        beta = rows.solve()
    finally:
        teacher.close()
        shutil.rmtree(scratch, ignore_errors=True)
    report["teacher_frames"] = n_frames
    return beta, report
