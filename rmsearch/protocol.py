"""The relax protocol's contract: settings, the stop-and-status rule, and the outcome.

Every relaxation takes a :class:`RelaxSettings`, keeps its progress in a :class:`RunState`
and ends with a :class:`RelaxOutcome`. The two drivers, Python step rules on Frechet cell
variables (:func:`rmsearch.relax.relax_in_python`) and conjugate gradients inside LAMMPS
(:func:`rmsearch.lammps_min.relax_in_lammps`), both have the signature
``(engine, atoms, settings) -> RelaxOutcome`` and apply the one stop rule,
:meth:`RunState.stop_rule`, to every force evaluation they judge; the batched relaxer
(:mod:`rmsearch.batched`) applies it too. :class:`rmsearch.relax.Relaxer` picks the driver
and runs the stages (:func:`second_stage`, :func:`merge_stages`).

Stopping: converged only when max |F_i| < ``fmax`` (eV/A) and, for periodic cells with
cell relaxation, max |sigma_ij + p delta_ij| < ``smax_gpa`` (GPa). Hitting
``max_steps`` force calls is ``not_converged``, never converged. NaN energies, forces or
stress give ``nan``; a volume beyond ``max_volume_factor`` x the start or
``max_volume_per_atom`` gives ``exploded``, one below ``min_volume_per_atom`` ``collapsed``
(the Python driver checks them before LAMMPS sees the cell); atoms missing from LAMMPS
(or, for molecules, atoms left with no neighbour within the cutoff) give ``lost_atoms``;
two atoms pulled onto each other (closer than the inner end of the core-repulsion table,
LAMMPS' "Pair distance < table inner cutoff") give ``collapsed`` too; anything else that
goes wrong gives ``error: <message>`` and the LAMMPS instance is rebuilt for the next run
(:func:`failures_as_status`).

Names: ``fmax`` and ``smax_gpa`` in the settings are tolerances; what a run measured is
``RunState.max_force`` (eV/A), reported as ``RelaxOutcome.fmax``.

Units: A, eV, eV/A, stress in eV/A^3 (ASE sign, positive = tensile), pressures in GPa.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.units import GPa

from rmdata.errors import RMError
from rmsearch.engine import CoreRepulsion, LammpsEngine, LostAtoms, Potential, to_voigt
from rmsearch.optimizers import OPTIMIZERS, FireParameters
from rmsearch.records import FINISHED_STATUSES
from rmsearch.symmetry import SYMPREC

log = logging.getLogger(__name__)

#: Relaxation methods: "auto" (the potential directory's recommendation, else
#: "fire2-lbfgs"), a Python step rule of :mod:`rmsearch.optimizers`, or "lammps-cg"
#: (minimisation inside LAMMPS, :mod:`rmsearch.lammps_min`).
RELAX_OPTIMIZERS = ("auto", *OPTIMIZERS, "lammps-cg")


def resolve_optimizer(name: str, potential: Potential) -> str:
    """The relaxation method ``name`` stands for with ``potential``: "auto" becomes the
    ``optimizer`` recorded in the potential's ``potential.json`` (fit-native records
    "lammps-cg" for potentials whose force call is so cheap that Python's per-step work
    would dominate) or "fire2-lbfgs"."""
    if name != "auto":
        return name
    chosen = potential.meta.get("optimizer", "fire2-lbfgs")
    if chosen not in RELAX_OPTIMIZERS or chosen == "auto":
        raise RMError(f"{potential.directory}/potential.json: optimizer {chosen!r} is not one of "
                      f"{', '.join(RELAX_OPTIMIZERS[1:])}")
    return chosen


@dataclass
class RelaxSettings(FireParameters):
    """Options of one relaxation (the FIRE parameters of :class:`FireParameters` included).

    fmax: force tolerance, max |F_i| (eV/A). smax_gpa: stress tolerance, max |sigma_ij + p|
    (GPa). max_steps: cap on force calls (not converged when hit). relax_cell: relax the cell
    of periodic structures. pressure_gpa: external pressure (GPa). dtype: "float32"
    (default; ~1.4x faster, same minima in our tests) or "float64" model evaluation (mace
    backend). core_repulsion: overlay term or None.

    optimizer: "auto" (default: what the potential directory recommends, see
    :func:`resolve_optimizer`; "fire2-lbfgs" unless it says otherwise), "lammps-cg" (conjugate gradients with
    ``fix box/relax`` inside LAMMPS, :mod:`rmsearch.lammps_min`), or a Python step rule
    (:mod:`rmsearch.optimizers`): "fire2-lbfgs" (FIRE 2.0 until max |F| < ``switch_fmax``
    eV/A, then L-BFGS), "fire2", "lbfgs", or "fire" (ASE's FIRE; with ASE's parameters it
    follows ASE FIRE + FrechetCellFilter step for step).
    kick: the paper's molecule protocol (DESIGN §5) as a second stage: when > 0, the
    relaxed structure's atoms are each displaced by uniform noise in +-``kick`` A per
    Cartesian component and relaxed again to ``kick_fmax`` (eV/A); 0 (default) = one stage.
    dt, dt_max, max_step (A), n_min, f_inc, f_dec, a_start, f_a: FIRE parameters; left as
    None, max_step, n_min and a_start take the defaults of the optimizer's FIRE flavour
    (:data:`rmsearch.optimizers.FIRE_FLAVOUR_DEFAULTS`: ASE's for "fire", FIRE 2.0's for
    the others). memory, alpha (eV/A^2): L-BFGS history length and
    initial curvature. max_volume_factor, max_volume_per_atom (A^3): explosion limits;
    min_volume_per_atom (A^3): below it the cell has collapsed.
    keep_symmetry: relax a periodic structure within the space group of its start
    (:mod:`rmsearch.symmetry`: the operations spglib finds at ``symprec`` A, the start made
    exactly symmetric, forces, stress and steps projected onto the invariant subspace; the
    stop rule then reads the projected forces and stress). A start whose only operation is
    the identity relaxes as without it. With optimizer "lammps-cg" (which cannot constrain
    ``fix box/relax`` to the group) the symmetric stage uses the Python rule "fire2-lbfgs"
    instead. release_symmetry: after the symmetric stage, a free relaxation from its result
    as a second stage (``first_stage`` holds the symmetric one); needs keep_symmetry and
    cannot be combined with a kick stage.
    volume_steps: a constant-volume first stage for periodic structures, as the paper's
    reference code relaxes MP-20 starts (FIRE at constant volume, 100 steps to 0.05 eV/A,
    then the free relaxation): up to ``volume_steps`` force calls with the cell's shape free
    and its volume fixed, to ``volume_fmax`` (eV/A) and a deviatoric stress below
    ``smax_gpa``, then the free relaxation from where it ended (``first_stage`` holds it);
    0 (default) = none. Cannot be combined with a kick or symmetry-release stage.
    constant_volume: set on that first stage only: the cell's generalised force loses its
    trace (the log-deformation stays traceless, so the volume is the start's) and the stop
    rule reads the deviatoric stress.
    """

    fmax: float = 0.01
    smax_gpa: float = 0.1
    max_steps: int = 2000
    relax_cell: bool = True
    pressure_gpa: float = 0.0
    dtype: str = "float32"
    core_repulsion: CoreRepulsion | None = CoreRepulsion()
    optimizer: str = "auto"
    switch_fmax: float = 2.0
    memory: int = 20
    alpha: float = 70.0
    max_volume_factor: float = 10.0
    max_volume_per_atom: float = 200.0
    min_volume_per_atom: float = 1.0
    kick: float = 0.0
    kick_fmax: float = 0.0002
    keep_symmetry: bool = False
    release_symmetry: bool = False
    symprec: float = SYMPREC
    volume_steps: int = 0
    volume_fmax: float = 0.05
    constant_volume: bool = False

    def __post_init__(self) -> None:  # replaces FireParameters' (whose flavour is ASE's)
        if self.optimizer not in RELAX_OPTIMIZERS:
            raise RMError(f"relax setting optimizer={self.optimizer!r}: must be one of "
                          f"{', '.join(RELAX_OPTIMIZERS)}")
        self.fill_defaults(self.optimizer)
        for name in ("fmax", "smax_gpa", "dt", "dt_max", "max_step", "max_volume_factor",
                     "max_volume_per_atom", "min_volume_per_atom", "switch_fmax", "alpha"):
            if not getattr(self, name) > 0:
                raise RMError(f"relax setting {name}={getattr(self, name)!r}: must be > 0")
        if not (math.isfinite(self.kick) and 0 <= self.kick <= 5.0):
            raise RMError(f"relax setting kick={self.kick!r}: must be a number of A in [0, 5]")
        if not (math.isfinite(self.kick_fmax) and self.kick_fmax > 0):
            raise RMError(f"relax setting kick_fmax={self.kick_fmax!r}: must be > 0 (eV/A)")
        if self.max_steps < 1 or self.memory < 1:
            raise RMError(f"relax settings max_steps={self.max_steps!r}, memory={self.memory!r}: "
                          "must be >= 1")
        if self.dtype not in ("float64", "float32"):
            raise RMError(f"relax setting dtype={self.dtype!r}: must be float64 or float32")
        if not (math.isfinite(self.symprec) and 0 < self.symprec <= 0.5):
            raise RMError(f"relax setting symprec={self.symprec!r}: must be a number of A in (0, 0.5]")
        if self.release_symmetry and not self.keep_symmetry:
            raise RMError("relax setting release_symmetry: needs keep_symmetry (--keep-symmetry)")
        if self.release_symmetry and self.kick > 0:
            raise RMError("relax settings release_symmetry and kick: both are second stages; choose one")
        if not (isinstance(self.volume_steps, int) and 0 <= self.volume_steps <= 10**6):
            raise RMError(f"relax setting volume_steps={self.volume_steps!r}: must be an integer in [0, 1000000]")
        if not (math.isfinite(self.volume_fmax) and self.volume_fmax > 0):
            raise RMError(f"relax setting volume_fmax={self.volume_fmax!r}: must be > 0 (eV/A)")
        if self.volume_steps and (self.kick > 0 or self.release_symmetry):
            raise RMError("relax settings volume_steps and kick/release_symmetry: a run has one "
                          "extra stage; choose one")
        if self.volume_steps and not self.relax_cell:
            raise RMError("relax settings volume_steps and a fixed cell (relax_cell=False): the "
                          "constant-volume stage relaxes the cell's shape; drop one")


@dataclass
class RelaxOutcome:
    """Result of a relaxation (:meth:`rmsearch.relax.Relaxer.relax`).

    atoms: final structure (the start if the run failed before moving). status: one of
    ``rmsearch.records.STATUSES`` or ``"error: ..."``. energy (eV), stress (eV/A^3, ASE
    Voigt-6 xx yy zz yz xz xy), fmax (eV/A, the measured max |F_i|, not the tolerance) of
    the last evaluated structure; n_force_calls, n_steps (optimizer steps), wall_s and
    model_time_s (seconds inside the model/pair computation, i.e. LAMMPS ``run 0``
    including any callback). first_stage: status, energy, fmax and n_force_calls of the
    first stage of a two-stage relaxation (None for one stage).
    """

    atoms: Atoms
    status: str
    energy: float = math.nan
    stress: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    fmax: float = math.nan
    n_force_calls: int = 0
    n_steps: int = 0
    wall_s: float = 0.0
    model_time_s: float = 0.0
    first_stage: dict | None = None

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def energy_per_atom(self) -> float:
        return self.energy / len(self.atoms)

    @property
    def pressure_gpa(self) -> float:
        """Pressure (GPa, positive = compressed): -trace(sigma)/3."""
        return float(-np.mean(self.stress[:3]) / GPa)

    @property
    def volume_per_atom(self) -> float:
        return float(self.atoms.get_volume() / len(self.atoms)) if self.atoms.pbc.all() else math.nan


# ----------------------------------------------------------------------------- structures

def check_structure(atoms: Atoms) -> bool:
    """Whether ``atoms`` is periodic (True) or a molecule (False); RMError for mixed
    periodicity or a degenerate periodic cell."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        raise RMError(f"pbc={pbc.tolist()}: only fully periodic or non-periodic structures")
    if pbc.all() and abs(np.linalg.det(np.array(atoms.cell, dtype=float))) < 1e-6:
        raise RMError("periodic structure with a degenerate cell")
    return bool(pbc.all())


class Start(NamedTuple):
    """The variables a relaxation starts from (:func:`start_variables`)."""

    periodic: bool
    numbers: np.ndarray
    cell0: np.ndarray  # (3, 3) A, rows = lattice vectors
    vol0: float  # A^3; 0 for a molecule
    x: np.ndarray  # (n, 3) A, positions (the undeformed frame)
    relax_cell: bool  # the cell relaxes: settings.relax_cell and periodic


def start_variables(atoms: Atoms, settings: RelaxSettings) -> Start:
    """The :class:`Start` of a relaxation of ``atoms``; RMError for a bad structure."""
    periodic = check_structure(atoms)
    cell0 = np.array(atoms.cell, dtype=float)
    vol0 = abs(np.linalg.det(cell0)) if periodic else 0.0
    x = atoms.positions.astype(float).copy()
    return Start(periodic, atoms.numbers.copy(), cell0, vol0, x, settings.relax_cell and periodic)


def volume_status(settings: RelaxSettings, volume: float, volume0: float, n_atoms: int) -> str | None:
    """"exploded", "collapsed" or None for a cell of ``volume`` (A^3) that started at
    ``volume0``, under the settings' volume limits."""
    if volume > settings.max_volume_factor * volume0 or volume / n_atoms > settings.max_volume_per_atom:
        return "exploded"
    if volume / n_atoms < settings.min_volume_per_atom:
        return "collapsed"
    return None


def _isolated_atoms(positions: np.ndarray, cutoff: float) -> bool:
    """True if some atom of a molecule has no other atom within ``cutoff`` (A)."""
    if len(positions) < 2:
        return False
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return bool((d.min(1) > cutoff).any())


#: LAMMPS' message when two atoms come closer than the inner end of a pair table (the core
#: repulsion's): the model pulled them onto each other.
PAIR_COLLAPSE = "Pair distance < table inner cutoff"


def error_status(exc: BaseException) -> str:
    """The status ``error: <type>: <message>`` (one line, at most 300 characters) of a run
    that raised ``exc``."""
    return "error: " + " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


# ----------------------------------------------------------------------------- progress and stop rule

@dataclass
class RunState:
    """Where one relaxation stands; the driver running it owns it.

    start: the structure it started from. status: see the module doc (``"error: not
    started"`` until a driver sets it). energy (eV), stress (ASE Voigt-6, eV/A^3) and
    max_force (eV/A, the measured max |F_i|) of the last judged evaluation;
    n_force_calls, n_steps (optimizer steps or LAMMPS iterations); positions, cell (A): the
    last evaluated structure (None before any). t0: when the run began
    (``time.perf_counter``).
    """

    start: Atoms
    status: str = "error: not started"
    energy: float = math.nan
    stress: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    max_force: float = math.nan
    n_force_calls: int = 0
    n_steps: int = 0
    positions: np.ndarray | None = None
    cell: np.ndarray | None = None
    t0: float = field(default_factory=time.perf_counter)

    def stop_rule(self, settings: RelaxSettings, energy: float, forces: np.ndarray, stress: np.ndarray, *,
                  relax_cell: bool, volume: float | None = None, volume0: float = 0.0,
                  positions: np.ndarray | None = None) -> bool:
        """Judge one force evaluation; True when the run has ended (``status`` says why).

        Records ``energy`` (eV) and ``stress`` ((3, 3) eV/A^3) and then, in this order:
        ``nan`` when energy, ``forces`` ((n, 3) eV/A), stress or ``positions`` (if given)
        are not finite; ``exploded``/``collapsed`` when ``volume`` (A^3, if given; the
        start's ``volume0``) breaks the settings' limits (:func:`volume_status`); else
        ``max_force`` is measured, and the run is ``converged`` when max_force <
        ``settings.fmax`` and, with ``relax_cell``, max |sigma_ij + p delta_ij| <
        ``settings.smax_gpa``; ``not_converged`` when ``n_force_calls`` has reached
        ``settings.max_steps``.
        """
        self.energy, self.stress = energy, to_voigt(stress)
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()
                and (positions is None or np.isfinite(positions).all())):
            self.status = "nan"
            return True
        if volume is not None:
            bad = volume_status(settings, volume, volume0, len(forces))
            if bad:
                self.status = bad
                return True
        self.max_force = float(np.sqrt((forces**2).sum(1)).max()) if len(forces) else 0.0
        excess = stress + settings.pressure_gpa * GPa * np.eye(3)
        if settings.constant_volume:  # the volume is held: only the deviatoric stress is relaxed
            excess = excess - np.trace(excess) / 3 * np.eye(3)
        stress_max = float(np.abs(excess).max()) if relax_cell else 0.0
        if self.max_force < settings.fmax and stress_max < settings.smax_gpa * GPa:
            self.status = "converged"
            return True
        if self.n_force_calls >= settings.max_steps:
            self.status = "not_converged"
            return True
        return False

    def outcome(self, cutoff: float, model_time_s: float) -> RelaxOutcome:
        """The :class:`RelaxOutcome` of the run so far: the last evaluated structure (wrapped
        into its cell; the start if none), a finished molecule with an atom farther than
        ``cutoff`` (A) from all others ``lost_atoms``; ``model_time_s`` as given, wall time
        since ``t0``."""
        atoms, status = self.start.copy(), self.status
        if self.positions is not None:
            try:
                atoms, status = self._final_structure(cutoff)
            except Exception as exc:  # noqa: BLE001 - reported as the run's status
                status = error_status(exc)
        return RelaxOutcome(atoms=atoms, status=status, energy=self.energy, stress=self.stress,
                            fmax=self.max_force, n_force_calls=self.n_force_calls, n_steps=self.n_steps,
                            wall_s=time.perf_counter() - self.t0, model_time_s=model_time_s)

    def _final_structure(self, cutoff: float) -> tuple[Atoms, str]:
        start = self.start
        periodic = bool(np.all(start.pbc))
        atoms = Atoms(numbers=start.numbers.copy(), positions=self.positions,
                      cell=self.cell if periodic else start.cell, pbc=start.pbc)
        status = self.status
        if not periodic and status in FINISHED_STATUSES and _isolated_atoms(atoms.positions, cutoff):
            status = "lost_atoms"
        if periodic:
            atoms.wrap()
        return atoms, status


@contextmanager
def failures_as_status(state: RunState, engine: LammpsEngine) -> Iterator[None]:
    """Turn an exception inside the block into ``state``'s status (``lost_atoms`` for
    :class:`~rmsearch.engine.LostAtoms`, ``collapsed`` for two atoms on top of each other,
    ``error: ...`` for anything else) and rebuild the engine's LAMMPS instance for the next
    run: a failed run must not stop the search."""
    try:
        yield
    except LostAtoms:
        state.status = "lost_atoms"
        engine.reset()
    except Exception as exc:
        log.debug("relaxation failed", exc_info=True)
        state.status = "collapsed" if PAIR_COLLAPSE in str(exc) else error_status(exc)
        engine.reset()


# ----------------------------------------------------------------------------- stages

def kick_start(first: RelaxOutcome, kick: float, rng: np.random.Generator | None) -> Atoms | None:
    """The start of the kick stage after the first stage ``first`` (its atoms displaced by
    uniform noise in +-``kick`` A per component, drawn from ``rng``, default a fresh unseeded
    generator), or None when there is no second stage (kick 0 or a failed first stage)."""
    if kick <= 0 or first.status not in FINISHED_STATUSES:
        return None
    rng = rng if rng is not None else np.random.default_rng()
    kicked = first.atoms.copy()
    kicked.positions = kicked.positions + rng.uniform(-kick, kick, size=kicked.positions.shape)
    return kicked


def kick_settings(settings: RelaxSettings) -> RelaxSettings:
    """The settings of the kick stage: ``settings`` with fmax = kick_fmax."""
    return replace(settings, fmax=settings.kick_fmax)


def first_stage_settings(settings: RelaxSettings, periodic: bool) -> RelaxSettings:
    """The settings of a run's first stage: the constant-volume stage of a periodic
    structure when ``settings.volume_steps`` > 0, else ``settings`` themselves."""
    if not (settings.volume_steps and periodic):
        return settings
    return replace(settings, constant_volume=True, fmax=settings.volume_fmax, max_steps=settings.volume_steps)


def second_stage(first: RelaxOutcome, settings: RelaxSettings, rng: np.random.Generator | None
                 ) -> tuple[Atoms, RelaxSettings] | None:
    """The ``(start, settings)`` of the second stage after ``first``, or None: the free
    relaxation after the constant-volume stage (``volume_steps``) or after the symmetric
    stage (``release_symmetry``), or the kick stage (:func:`kick_start`,
    :func:`kick_settings`); none after a failed first stage. ``settings`` are the run's
    (not the first stage's)."""
    if first.status not in FINISHED_STATUSES:
        return None
    if settings.volume_steps:
        if not bool(np.all(first.atoms.pbc)):
            return None
        return first.atoms.copy(), replace(settings, volume_steps=0, constant_volume=False)
    if settings.keep_symmetry and settings.release_symmetry:
        return first.atoms.copy(), replace(settings, keep_symmetry=False, release_symmetry=False)
    kicked = kick_start(first, settings.kick, rng)
    return None if kicked is None else (kicked, kick_settings(settings))


def merge_stages(first: RelaxOutcome, second: RelaxOutcome) -> RelaxOutcome:
    """``second`` with ``first_stage`` set from ``first`` and the counts and times of both."""
    second.first_stage = {"status": first.status, "energy": float(first.energy),
                          "fmax": float(first.fmax), "n_force_calls": int(first.n_force_calls)}
    second.n_force_calls += first.n_force_calls
    second.n_steps += first.n_steps
    second.wall_s += first.wall_s
    second.model_time_s += first.model_time_s
    return second
