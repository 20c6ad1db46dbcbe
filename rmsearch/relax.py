"""Relaxation of one structure at a time: LAMMPS as the force engine, FIRE on Frechet cell variables.

Protocol, and why
-----------------
Positions and cell are relaxed *together from the first step* on the variables of ASE's
``FrechetCellFilter``: atoms in the undeformed frame ``x = F^-1 r`` and the cell as the
matrix logarithm of the deformation gradient, ``X = N log F`` (N = number of atoms, the
cell "mass" scale), with ``cell = cell0 F^T``. The generalised forces are ``f F`` for the
atoms and, for the cell, the exact gradient in log F (adjoint Frechet derivative of expm
applied to ``W F^-1``, ``W = -V (sigma + p I)``), replaced by ``W`` itself when the two
point the same way, as ASE does; both divided by N. Python drives the steps with
vectorised numpy; LAMMPS supplies energy, forces and virial with a ``run 0`` per step,
from the potential's pair style (a native potential: no Python in the force computation)
or from the MACE model through ``fix external pf/callback``.

The step rule (:mod:`rmsearch.optimizers`) is by default FIRE 2.0 (Guenole et al., Comput.
Mater. Sci. 175, 109584, 2020) until max |F| < 2 eV/A, then L-BFGS: FIRE copes with the
wild first steps from a random start, L-BFGS converges inside the basin in far fewer force
calls than FIRE's slow tail. On 50 random C8 starts with the MACE test model it needs 43
force calls per relaxation where ASE FIRE + FrechetCellFilter needs 103, and its mean
final energy is 4 meV/atom *below* ASE's (BENCHMARKS.md). ``optimizer="fire"`` with ASE's
parameters follows ASE FIRE + FrechetCellFilter step for step (same force calls, same
minima), which is how the variables and forces were validated.

Why not the staged LAMMPS protocol of DESIGN section 4 (FIRE at fixed cell, then
``fix box/relax`` + CG rounds; ``min_style fire`` cannot be combined with box/relax in
the pip wheel): measured on 50 random carbon starts it ended 41 meV/atom above ASE FIRE +
FrechetCellFilter on average and used 2.6x the force calls, because the fixed-cell stage
chooses the basin before the cell can move. ``benchmarks/bench_relax.py`` measures speed
and final energies against ASE and torch-sim on the same starts. For potentials whose
force call costs microseconds (UF3), ``optimizer="lammps-cg"`` runs the minimisation
inside LAMMPS instead (:mod:`rmsearch.lammps_min`), with the same stop rule and statuses.

Layout: the settings, the stop-and-status rule (stop on max |F_i| < ``fmax`` eV/A and
max |sigma + p| < ``smax_gpa`` GPa; ``max_steps`` force calls is ``not_converged``; the
failure statuses) and the outcome are :mod:`rmsearch.protocol`'s; the force engine is
:class:`rmsearch.engine.LammpsEngine`. Here: the Python driver :func:`relax_in_python`
(the step machine :class:`Minimisation`, which the batched relaxer drives too) and
:class:`Relaxer`, which picks the driver (this one or :func:`rmsearch.lammps_min.relax_in_lammps`,
both ``(engine, atoms, settings) -> RelaxOutcome``) and runs the second stages.

Core repulsion (on by default): the rmdata term ``g(r) = m (1 - r^2/rc^2)^2`` (m = 1 eV,
rc = 0.75 A, all element pairs) tabulated for ``pair_style table`` and overlaid on the
potential (``pair_style hybrid/overlay``; see :func:`rmsearch.engine.write_core_table`).
The model was trained with the same term in its labels but is unreliable where training
data are sparse; the overlay keeps random starts from collapsing and is exactly zero
beyond rc, so it never shifts minima with normal bonds.

Units: A, eV, eV/A, stress in eV/A^3 (ASE sign, positive = tensile), pressures in GPa.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.units import GPa

from rmsearch.engine import LammpsEngine, Potential
from rmsearch.lammps_min import relax_in_lammps
from rmsearch.optimizers import make_step_rule
from rmsearch.protocol import (
    RelaxOutcome,
    RelaxSettings,
    RunState,
    failures_as_status,
    first_stage_settings,
    merge_stages,
    resolve_optimizer,
    second_stage,
    start_variables,
    volume_status,
)
from rmsearch.symmetry import Symmetry, find_symmetry

#: The Python step rule that stands in for "lammps-cg" where LAMMPS' CG cannot run (a
#: relaxation that keeps the start's symmetry).
LAMMPS_CG_STAND_IN = "fire2-lbfgs"


# ----------------------------------------------------------------------------- the Python driver

def _sym_expm(log_f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``expm`` of a symmetric 3x3 matrix through its eigen-decomposition.

    Returns ``(F, lam, vec)``. The cell variable stays symmetric because every update is
    a combination of symmetric virials, so this replaces scipy's general ``expm``.
    """
    lam, vec = np.linalg.eigh(0.5 * (log_f + log_f.T))
    return (vec * np.exp(lam)) @ vec.T, lam, vec


def _cell_force(virial: np.ndarray, fgrad: np.ndarray, lam: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """-dE/d(log F) (eV) for the virial ``W = -V (sigma + p)`` at ``F = expm(L)``, L symmetric.

    The exact gradient is the (self-adjoint, L symmetric) Frechet derivative of expm at L
    applied to ``W F^-1``; in L's eigenbasis it is an elementwise product with the divided
    differences ``(e^a - e^b)/(a - b)``. Like ASE's FrechetCellFilter, the plain virial is
    used instead whenever the two point the same way (cosine > 0.8).
    """
    ea = np.exp(lam)
    dl = lam[:, None] - lam[None, :]
    close = np.abs(dl) < 1e-10
    phi = np.where(close, 0.5 * (ea[:, None] + ea[None, :]),
                   (ea[:, None] - ea[None, :]) / np.where(close, 1.0, dl))
    g = vec.T @ (virial @ np.linalg.inv(fgrad)) @ vec
    exact = vec @ (g * phi) @ vec.T
    exact = 0.5 * (exact + exact.T)
    denom = np.sqrt(np.vdot(exact, exact) * np.vdot(virial, virial))
    if denom == 0.0 or np.allclose(exact, virial) or np.vdot(exact, virial) / denom > 0.8:
        return virial
    return exact


class Minimisation:
    """One Python-step-rule relaxation between force calls, as a step machine.

    Generalised coordinates are the positions and ``n log F`` of the cell deformation
    gradient F (as ASE's FrechetCellFilter). :meth:`point` gives the (positions, cell) to
    evaluate next, or None when the run has ended (``state.status`` says why: ``nan``,
    ``exploded``, ``collapsed``); :meth:`update` takes the energy (eV), forces (n, 3) eV/A
    and stress (3, 3) eV/A^3 there, judges them by the protocol's stop rule
    (:meth:`rmsearch.protocol.RunState.stop_rule`) and returns True when the run has ended.
    The progress lives in ``state`` (its start, counts, last evaluated structure), which
    the caller creates and reads. The Python driver (:func:`relax_in_python`) and the
    batched relaxer (:mod:`rmsearch.batched`) both drive it, so they follow the same rule
    step for step. RMError for a bad start structure.

    With ``settings.keep_symmetry`` on a periodic structure, the start (``cell0``, ``x``) is
    made exactly symmetric and forces, stress and every step are projected onto the
    subspace its operations leave invariant (``self.symmetry``; None for a P1 start, whose
    run is then exactly the free one).
    """

    def __init__(self, state: RunState, settings: RelaxSettings, optimizer: str):
        start = start_variables(state.start, settings)
        state.positions, state.cell = start.x.copy(), start.cell0  # until the first evaluation
        self.s, self.state, self.periodic, self.relax_cell = settings, state, start.periodic, start.relax_cell
        self.numbers = start.numbers
        self.cell0, self.vol0 = start.cell0, start.vol0
        self.n = n = len(start.numbers)
        self.p_ev = settings.pressure_gpa * GPa
        self.c = float(n)  # cell "mass" scale, as ASE's exp_cell_factor
        self.symmetry: Symmetry | None = None
        x = start.x
        if settings.keep_symmetry and start.periodic:
            self.symmetry, self.cell0, x = find_symmetry(start.cell0, x, start.numbers, settings.symprec)
        self.r = np.zeros((n + 3, 3))  # generalised coordinates: x (A), then c * log(F)
        self.r[:n] = x
        self.rule = make_step_rule(optimizer, self.r.shape, settings, memory=settings.memory,
                                   alpha=settings.alpha, switch_fmax=settings.switch_fmax)
        self._deform: tuple | None = None

    def point(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (positions, cell) in A to evaluate next (recorded as the state's last evaluated
        structure), or None when the run has ended."""
        n, state = self.n, self.state
        if self.relax_cell:
            fgrad, lam, vec = _sym_expm(self.r[n:] / self.c)
        else:
            fgrad, lam, vec = np.eye(3), None, None
        cell = self.cell0 @ fgrad.T
        pos = self.r[:n] @ fgrad.T
        if not (np.isfinite(pos).all() and np.isfinite(cell).all()):
            state.status = "nan"  # never hand LAMMPS non-finite coordinates (it can hang)
            return None
        vol = abs(np.linalg.det(cell)) if self.periodic else 0.0
        if self.periodic and self.relax_cell:  # never hand LAMMPS an absurd box either
            bad = volume_status(self.s, vol, self.vol0, n)
            if bad:
                state.status = bad
                return None
        self._deform = (fgrad, lam, vec, vol)
        state.positions, state.cell = pos, cell
        return pos, cell

    def update(self, energy: float, forces: np.ndarray, stress: np.ndarray) -> bool:
        """Take the results at the last :meth:`point`; True when the run has ended."""
        state, n = self.state, self.n
        fgrad, lam, vec, vol = self._deform
        state.n_force_calls += 1
        sym = self.symmetry
        if sym is not None and np.isfinite(forces).all() and np.isfinite(stress).all():
            forces, stress = sym.project_vectors(forces), sym.project_tensor(stress)
        if state.stop_rule(self.s, energy, forces, stress, relax_cell=self.relax_cell):
            return True
        g = np.zeros((n + 3, 3))  # generalised forces on (x, c log F)
        g[:n] = forces @ fgrad
        if self.relax_cell:
            g[n:] = _cell_force(-vol * (stress + self.p_ev * np.eye(3)), fgrad, lam, vec) / self.c
            if self.s.constant_volume:  # a traceless log-deformation keeps det F = 1
                g[n:] -= np.trace(g[n:]) / 3 * np.eye(3)
        step = self.rule.step(self.r, g, state.max_force)
        if sym is not None:  # keep round-off from breaking the symmetry over many steps
            step[:n] = sym.project_vectors(step[:n])
            step[n:] = sym.project_tensor(step[n:])
        self.r += step
        state.n_steps += 1
        return False


def relax_in_python(engine: LammpsEngine, atoms: Atoms, settings: RelaxSettings) -> RelaxOutcome:
    """Relax ``atoms`` with the Python step rule of ``settings.optimizer`` ("auto" resolved
    for ``engine.potential``; "lammps-cg" stands for :data:`LAMMPS_CG_STAND_IN`), one
    ``run 0`` of ``engine`` per force call (:class:`Minimisation`). Never raises for a
    failing run: the outcome's status says what happened."""
    optimizer = resolve_optimizer(settings.optimizer, engine.potential)
    if optimizer == "lammps-cg":
        optimizer = LAMMPS_CG_STAND_IN
    state, m0 = RunState(atoms), engine.model_time_s
    with failures_as_status(state, engine):
        run = Minimisation(state, settings, optimizer)
        while (point := run.point()) is not None:
            if run.update(*engine.compute(point[0], point[1], run.numbers, run.periodic)):
                break
    return state.outcome(engine.potential.cutoff, engine.model_time_s - m0)


# ----------------------------------------------------------------------------- relaxer

class Relaxer:
    """Relax structures one after another with one LAMMPS instance (and model) per process.

    >>> relaxer = Relaxer(load_potential("pot/"), RelaxSettings(fmax=0.01))  # doctest: +SKIP
    >>> outcome = relaxer.relax(atoms)                                       # doctest: +SKIP

    :meth:`relax` never raises for a failing run; it returns a status (see
    :mod:`rmsearch.protocol`).
    """

    def __init__(self, potential: Potential, settings: RelaxSettings | None = None, *,
                 threads: int | None = 1):
        self.potential = potential
        self.settings = settings or RelaxSettings()
        self.optimizer = resolve_optimizer(self.settings.optimizer, potential)
        self.engine = LammpsEngine(potential, dtype=self.settings.dtype,
                                   core_repulsion=self.settings.core_repulsion, threads=threads)

    def close(self) -> None:
        """Release LAMMPS and the model."""
        self.engine.close()

    def __enter__(self) -> Relaxer:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def relax(self, atoms: Atoms, rng: np.random.Generator | None = None) -> RelaxOutcome:
        """Relax ``atoms`` (periodic crystal or pbc=False molecule); never raises for a bad run.

        With ``settings.kick > 0``, ``release_symmetry`` or ``volume_steps`` there are two stages (see
        :class:`~rmsearch.protocol.RelaxSettings`, :func:`~rmsearch.protocol.second_stage`);
        kick displacements are drawn from ``rng`` (default: a fresh unseeded generator).
        """
        first = self._relax_once(atoms, first_stage_settings(self.settings, bool(np.all(atoms.pbc))))
        stage = second_stage(first, self.settings, rng)
        if stage is None:
            return first
        return merge_stages(first, self._relax_once(*stage))

    def _relax_once(self, atoms: Atoms, settings: RelaxSettings) -> RelaxOutcome:
        """One stage with its driver: LAMMPS' CG for "lammps-cg", except for a stage that
        keeps a periodic start's symmetry or its volume, which CG cannot (the Python
        driver's stand-in)."""
        constrained = (settings.keep_symmetry or settings.constant_volume) and bool(np.all(atoms.pbc))
        driver = relax_in_lammps if self.optimizer == "lammps-cg" and not constrained else relax_in_python
        return driver(self.engine, atoms, settings)
