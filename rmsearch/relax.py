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

Stopping: converged only when max |F_i| < ``fmax`` (eV/A) and, for periodic cells with
cell relaxation, max |sigma_ij + p delta_ij| < ``smax_gpa`` (GPa). Hitting
``max_steps`` force calls is ``not_converged``, never converged. NaN energies, forces or
stress give ``nan``; a volume beyond ``max_volume_factor`` x the start or
``max_volume_per_atom`` gives ``exploded``, one below ``min_volume_per_atom`` ``collapsed``
(both checked before LAMMPS sees the cell); atoms missing from LAMMPS (or, for molecules,
atoms left with no neighbour within the cutoff) give ``lost_atoms``; anything else that
goes wrong gives ``error: <message>`` and the LAMMPS instance is rebuilt for the next run.

Core repulsion (on by default): the rmdata term ``g(r) = m (1 - r^2/rc^2)^2`` (m = 1 eV,
rc = 0.75 A, all element pairs) tabulated for ``pair_style table`` and overlaid on the
potential (``pair_style hybrid/overlay``; see :func:`write_core_table`). The model was trained with the same term in its labels
but is unreliable where training data are sparse; the overlay keeps random starts from
collapsing and is exactly zero beyond rc, so it never shifts minima with normal bonds.

Units: A, eV, eV/A, stress in eV/A^3 (ASE sign, positive = tensile), pressures in GPa.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.units import GPa

from rmdata.errors import RMError
from rmsearch.optimizers import OPTIMIZERS, FireParameters, make_step_rule
from rmsearch.potentials import Potential, render_template

log = logging.getLogger(__name__)

#: LAMMPS metal-units pressure (bar) per eV/A^3 (LAMMPS' own ``nktv2p`` constant).
BAR_PER_EV_A3 = 1.6021765e6
#: Size (bytes) past which :meth:`LammpsEngine.run_logged` starts a new log file.
LOG_RESTART_BYTES = 1 << 20


# ----------------------------------------------------------------------------- settings

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
class CoreRepulsion:
    """Short-range overlay ``g(r) = m (1 - r^2/rc^2)^2`` for r < rc; m in eV, rc in A."""

    m: float = 1.0
    rc: float = 0.75


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
    None, max_step, n_min and a_start take 0.3 A, 10 and 0.25 for the FIRE 2.0 rules and
    ASE's 0.2 A, 5 and 0.1 for "fire". memory, alpha (eV/A^2): L-BFGS history length and
    initial curvature. max_volume_factor, max_volume_per_atom (A^3): explosion limits;
    min_volume_per_atom (A^3): below it the cell has collapsed.
    """

    fmax: float = 0.01
    smax_gpa: float = 0.1
    max_steps: int = 2000
    relax_cell: bool = True
    pressure_gpa: float = 0.0
    dtype: str = "float32"
    core_repulsion: CoreRepulsion | None = field(default_factory=CoreRepulsion)
    optimizer: str = "auto"
    switch_fmax: float = 2.0
    max_step: float | None = None  # resolved per optimizer in __post_init__
    n_min: int | None = None
    a_start: float | None = None
    memory: int = 20
    alpha: float = 70.0
    max_volume_factor: float = 10.0
    max_volume_per_atom: float = 200.0
    min_volume_per_atom: float = 1.0
    kick: float = 0.0
    kick_fmax: float = 0.0002

    def __post_init__(self) -> None:
        if self.optimizer not in RELAX_OPTIMIZERS:
            raise RMError(f"relax setting optimizer={self.optimizer!r}: must be one of "
                          f"{', '.join(RELAX_OPTIMIZERS)}")
        ase_flavour = self.optimizer == "fire"
        if self.max_step is None:
            self.max_step = 0.2 if ase_flavour else 0.3
        if self.n_min is None:
            self.n_min = 5 if ase_flavour else 10
        if self.a_start is None:
            self.a_start = 0.1 if ase_flavour else 0.25
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


@dataclass
class RelaxOutcome:
    """Result of :meth:`Relaxer.relax`.

    atoms: final structure (the start if the run failed before moving). status: one of
    ``rmsearch.records.STATUSES`` or ``"error: ..."``. energy (eV), stress (eV/A^3, ASE
    Voigt-6 xx yy zz yz xz xy), fmax (eV/A) of the last evaluated structure; n_force_calls,
    n_steps (optimizer steps), wall_s and model_time_s (seconds inside the model/pair
    computation, i.e. LAMMPS ``run 0`` including any callback).
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


# ----------------------------------------------------------------------------- LAMMPS engine

#: Points of the tabulated core repulsion (spacing rc/CORE_TABLE_POINTS).
CORE_TABLE_POINTS = 2000


def write_core_table(core: CoreRepulsion, path: str | os.PathLike) -> Path:
    """Write ``g(r) = m (1 - r^2/rc^2)^2`` and ``-dg/dr`` (eV, eV/A) for 0 < r <= rc as a LAMMPS
    ``pair_style table`` file with keyword ``CORE``; returns the path."""
    r = np.linspace(1e-6, core.rc, CORE_TABLE_POINTS)
    x2 = (r / core.rc) ** 2
    table = np.column_stack((np.arange(1, len(r) + 1), r, core.m * (1 - x2) ** 2,
                             4 * core.m * r / core.rc**2 * (1 - x2)))
    path = Path(path)
    header = (f"# rmsearch core repulsion g(r) = {core.m!r} (1 - r^2/{core.rc!r}^2)^2 (eV, A)\n\nCORE\n"
              f"N {len(r)} R {float(r[0])!r} {float(core.rc)!r}\n")
    np.savetxt(path, table, fmt=["%d", "%.17g", "%.17g", "%.17g"], header=header, comments="")
    return path


def pair_commands(potential: Potential, core_repulsion: CoreRepulsion | None,
                  core_table: str | os.PathLike | None = None) -> list[str]:
    """LAMMPS commands that load ``potential`` (plus the core overlay if given, tabulated in
    ``core_table`` by :func:`write_core_table`)."""
    if core_repulsion is None:
        pair_style = potential.pair_style
        coeffs = "\n".join(f"pair_coeff {c}" for c in potential.pair_coeff)
        lines = render_template("pair.in", pair_style=pair_style, pair_coeff=coeffs)
    else:
        if core_table is None:
            raise ValueError("core_table is required with core_repulsion")
        if " table " in f" {potential.pair_style} ":
            raise RMError(f"{potential.directory}: the potential uses pair_style table, which the "
                          "core-repulsion overlay uses too; relax with core_repulsion=None")
        overlay = f"table spline {CORE_TABLE_POINTS}"
        sub = potential.pair_style.split()[0]
        if sub == "hybrid/overlay":  # already a hybrid (e.g. snap on a zbl core): add the table to it
            pair_style = f"{potential.pair_style} {overlay}"
            coeffs = [f"pair_coeff {c}" for c in potential.pair_coeff]
        else:
            pair_style = f"hybrid/overlay {potential.pair_style} {overlay}"
            coeffs = []
            for c in potential.pair_coeff:
                parts = c.split(maxsplit=2)
                coeffs.append(" ".join(["pair_coeff", parts[0], parts[1], sub] + parts[2:]))
        lines = render_template("pair.in", pair_style=pair_style, pair_coeff="\n".join(coeffs))
        lines += render_template("core_repulsion.in", table=str(core_table), rc=core_repulsion.rc)
    if potential.callback is not None:
        lines += render_template("fix_external.in")
    return lines


def lammps_cell(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a right-handed cell (rows = vectors, A) into LAMMPS' lower-triangular frame.

    Returns ``(cell_l, Q)`` with ``cell_l = cell @ Q`` lower-triangular with a positive
    diagonal and ``Q`` orthogonal; positions rotate the same way, and results rotate back
    with ``Q.T`` (vectors) or ``Q M Q.T`` (tensors).
    """
    q, r = np.linalg.qr(cell.T)
    sign = np.sign(np.diag(r))
    sign[sign == 0] = 1.0
    q = q * sign
    cell_l = cell @ q
    cell_l[np.triu_indices(3, 1)] = 0.0
    return cell_l, q


class LammpsEngine:
    """One LAMMPS instance computing energy, forces and stress of one structure at a time.

    The instance is kept for the life of the engine; a new structure costs a ``clear`` and
    the set-up commands (~0.4 ms), a new geometry a ``reset_box`` and a write into the
    atom arrays, and every evaluation one ``run 0``. ``model_time_s`` sums the time spent
    in ``run 0`` (which includes the Python callback of the mace backend).
    """

    def __init__(self, potential: Potential, *, dtype: str = "float64",
                 core_repulsion: CoreRepulsion | None = None, threads: int | None = 1):
        self.potential = potential
        self.core_repulsion = core_repulsion
        self.evaluator = None
        if potential.callback == "mace":
            from rmsearch.mace_model import MACEEvaluator

            self.evaluator = MACEEvaluator(potential.model_file, dtype=dtype, threads=threads)
        elif potential.callback is not None:
            raise RMError(f"{potential.directory}/potential.json: unknown callback "
                          f"{potential.callback!r}; must be 'mace' or null")
        self._type_of = {atomic_numbers[e]: k + 1 for k, e in enumerate(potential.elements)}
        self._tmpdir = None
        self._core_table = None
        if core_repulsion is not None:
            self._core_table = write_core_table(core_repulsion, self.scratch() / "core.table")
        self.lmp = None
        self._loaded: tuple | None = None
        self._node_attrs = None
        self._callback_error: BaseException | None = None
        self._log_offset: int | None = None  # bytes of the open LAMMPS log already read
        self.model_time_s = 0.0
        self.n_calls = 0

    def scratch(self) -> Path:
        """This engine's private temporary directory (core table, minimize log), removed by
        :meth:`close`."""
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="rmsearch-lmp-")
        return Path(self._tmpdir)

    # -- instance management
    def _instance(self):
        if self.lmp is None:
            from rmsearch.lammps_env import new_lammps

            self.lmp = new_lammps()
            self._loaded = None
            self._log_offset = None
        return self.lmp

    def reset(self) -> None:
        """Throw the LAMMPS instance away (after an error); the next call builds a new one."""
        if self.lmp is not None:
            try:
                self.lmp.close()
            except Exception:  # a wedged instance may fail to close
                log.debug("closing a failed LAMMPS instance raised", exc_info=True)
        self.lmp = None
        self._loaded = None
        self._log_offset = None

    def close(self) -> None:
        """Release the LAMMPS instance (and the core-repulsion table)."""
        self.reset()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self) -> None:
        if getattr(self, "_tmpdir", None) is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _load(self, numbers: np.ndarray, periodic: bool, cell_l: np.ndarray) -> None:
        """Set up box, types, pair style and atoms for a new structure. After a crystal, a
        crystal only replaces the atoms (``delete_atoms``; the box is set by :meth:`place`,
        and the pair style stays: reloading it costs ~5 ms, as much as a native relaxation)."""
        types = []
        for z in numbers:
            if int(z) not in self._type_of:
                raise RMError(f"element Z={int(z)} not in the potential "
                              f"(elements {self.potential.elements})")
            types.append(self._type_of[int(z)])
        same_box = periodic and self.lmp is not None and self._loaded is not None and self._loaded[1]
        lmp = self._instance()
        if same_box:
            lmp.command("delete_atoms group all compress yes")
        else:
            lmp.command("clear")
            masses = "\n".join(f"mass {k + 1} {atomic_masses[atomic_numbers[e]]:.6f}"
                               for k, e in enumerate(self.potential.elements))
            diag = np.diag(cell_l) if periodic else np.ones(3)
            setup = render_template("setup.in", boundary="p p p" if periodic else "s s s",
                                    lx=diag[0], ly=diag[1], lz=diag[2],
                                    ntypes=len(self.potential.elements), masses=masses, skin=1.0,
                                    neighbor_style="bin" if periodic else "nsq")
            lmp.commands_list(setup + pair_commands(self.potential, self.core_repulsion, self._core_table))
        self._loaded = None  # until the new atoms are in
        n = len(numbers)
        lmp.create_atoms(n, list(range(1, n + 1)), types, [0.0] * (3 * n))
        if lmp.get_natoms() != n:
            raise RuntimeError(f"LAMMPS created {lmp.get_natoms()} of {n} atoms")
        if self.evaluator is not None:
            if not same_box:
                lmp.set_fix_external_callback("rm_ext", self._callback, None)
            self._node_attrs = self.evaluator.node_attrs(numbers)
        self._loaded = (tuple(int(z) for z in numbers), periodic)

    def _callback(self, caller, ntimestep, nlocal, tag, x, f) -> None:
        """fix external: fill ``f`` and set energy and virial from the MACE model."""
        try:
            order = np.argsort(tag[:nlocal])
            pos = np.asarray(x[:nlocal])[order]
            boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
            h = np.array(boxhi) - np.array(boxlo)
            cell = np.array([[h[0], 0.0, 0.0], [xy, h[1], 0.0], [xz, yz, h[2]]])
            periodic = bool(all(periodicity))
            energy, forces, stress = self.evaluator.evaluate(pos, cell, None, periodic,
                                                             node_attrs=self._node_attrs)
            f[order] = forces
            volume = abs(np.linalg.det(cell)) if periodic else 0.0
            w = -stress * volume
            self.lmp.fix_external_set_energy_global("rm_ext", energy)
            self.lmp.fix_external_set_virial_global(
                "rm_ext", [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        except BaseException as exc:  # noqa: BLE001 - re-raised by compute() after run 0
            self._callback_error = exc
            f[:nlocal] = np.nan

    def place(self, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray,
              periodic: bool) -> np.ndarray:
        """Put a structure (positions, cell rows in A) into LAMMPS; returns the rotation ``q``
        into LAMMPS' frame (``cell_l = cell @ q``). A left-handed cell is used as ``-cell``."""
        n = len(positions)
        if periodic:
            cell = np.asarray(cell, dtype=float)
            cell_l, q = lammps_cell(-cell if np.linalg.det(cell) < 0 else cell)
            frac = np.linalg.solve(cell_l.T, (positions @ q).T).T
            pos_l = (frac % 1.0) @ cell_l
        else:
            q = np.eye(3)
            cell_l = np.eye(3)
            pos_l = positions - positions.mean(0)
        key = (tuple(int(z) for z in numbers), periodic)
        if self.lmp is None or self._loaded != key:
            self._load(np.asarray(numbers), periodic, cell_l)
        lmp = self.lmp
        if periodic:
            b = cell_l.tolist()
            lmp.command(f"change_box all x final 0 {b[0][0]!r} y final 0 {b[1][1]!r} "
                        f"z final 0 {b[2][2]!r} xy final {b[1][0]!r} xz final {b[2][0]!r} "
                        f"yz final {b[2][1]!r} units box")
        ids = lmp.numpy.extract_atom("id")[:n]
        x = lmp.numpy.extract_atom("x")
        x[:n] = pos_l[ids - 1]
        return q

    def run(self, command: str = "run 0 post no") -> None:
        """Run a LAMMPS command that evaluates forces (``run 0`` or ``minimize``), timed in
        ``model_time_s``; re-raises an error of the Python callback."""
        self._callback_error = None
        t0 = time.perf_counter()
        self.lmp.command(command)
        self.model_time_s += time.perf_counter() - t0
        if self._callback_error is not None:
            raise self._callback_error

    def run_logged(self, command: str) -> str:
        """:meth:`run` with LAMMPS' log on; returns what LAMMPS wrote for it (``minimize``
        reports its iteration and force-evaluation counts only there). The log stays open
        between calls, since opening one costs ~0.5 ms, and starts afresh past 1 MB."""
        path = self.scratch() / "lammps.log"
        if self._log_offset is None or self._log_offset > LOG_RESTART_BYTES:
            self.lmp.command(f"log {path}")
            self._log_offset = 0
        self.run(command)  # on an error the relaxer resets the engine, and with it the log
        self.lmp.flush_buffers()
        with open(path, "rb") as fh:
            fh.seek(self._log_offset)
            text = fh.read()
        self._log_offset += len(text)
        return text.decode(errors="replace")

    def results(self, n: int, q: np.ndarray, periodic: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces (n, 3) eV/A and stress (3, 3) eV/A^3 of the last evaluation,
        rotated back from LAMMPS' frame with ``q``."""
        lmp = self.lmp
        if lmp.get_natoms() != n:
            raise LostAtoms(f"{n - lmp.get_natoms()} atom(s) lost")
        nlocal = lmp.extract_global("nlocal")
        ids = lmp.numpy.extract_atom("id")[:nlocal]
        f_l = np.empty((n, 3))
        f_l[ids - 1] = lmp.numpy.extract_atom("f")[:nlocal]
        energy = float(lmp.get_thermo("pe"))
        if periodic:
            p = np.array(lmp.numpy.extract_compute("rm_press", 0, 1)[:6], dtype=float)
            s_l = -np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]]) / BAR_PER_EV_A3
            stress = q @ s_l @ q.T
        else:
            stress = np.zeros((3, 3))
        return energy, f_l @ q.T, stress

    def structure(self, n: int, q: np.ndarray, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 3) and cell rows (A) now in LAMMPS, rotated back with ``q`` (the cell
        is the identity for a non-periodic structure)."""
        lmp = self.lmp
        nlocal = lmp.extract_global("nlocal")
        ids = lmp.numpy.extract_atom("id")[:nlocal]
        pos = np.empty((n, 3))
        pos[ids - 1] = lmp.numpy.extract_atom("x")[:nlocal]
        if not periodic:
            return pos, np.eye(3)
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
        h = np.array(boxhi) - np.array(boxlo)
        cell_l = np.array([[h[0], 0.0, 0.0], [xy, h[1], 0.0], [xz, yz, h[2]]])
        return (pos - np.array(boxlo)) @ q.T, cell_l @ q.T

    def compute(self, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray,
                periodic: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces (n_atoms, 3) in eV/A, stress (3, 3) in eV/A^3 (ASE sign).

        ``cell`` rows are lattice vectors (A); ignored (and stress returned as zeros) for a
        non-periodic structure. A left-handed cell is used as ``-cell`` (the same lattice).
        """
        q = self.place(positions, cell, numbers, periodic)
        self.run()
        self.n_calls += 1
        return self.results(len(positions), q, periodic)


class LostAtoms(RuntimeError):
    """LAMMPS lost atoms during an evaluation."""


# ----------------------------------------------------------------------------- relaxer

def _voigt(s: np.ndarray) -> np.ndarray:
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


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


class Minimisation:
    """One Python-step-rule relaxation between force calls (the stop rule of the relaxer).

    Generalised coordinates are the positions and ``n log F`` of the cell deformation
    gradient F (as ASE's FrechetCellFilter). :meth:`point` gives the (positions, cell) to
    evaluate next, or None when the run has ended (``state.status`` says why: ``nan``,
    ``exploded``, ``collapsed``); :meth:`update` takes the energy (eV), forces (n, 3) eV/A
    and stress (3, 3) eV/A^3 there and returns True when the run has ended (``converged``:
    max |F_i| < fmax and max |sigma_ij + p| < smax; ``not_converged``: max_steps force
    calls; ``nan``). The serial :class:`Relaxer` and the batched relaxer
    (:mod:`rmsearch.batched`) both drive it, so they follow the same rule step for step.
    """

    def __init__(self, settings: RelaxSettings, optimizer: str, state: _RunState, numbers: np.ndarray,
                 periodic: bool, relax_cell: bool, cell0: np.ndarray, vol0: float, x: np.ndarray):
        self.s, self.state, self.periodic, self.relax_cell = settings, state, periodic, relax_cell
        self.cell0, self.vol0 = cell0, vol0
        self.n = n = len(numbers)
        self.p_ev = settings.pressure_gpa * GPa
        self.smax = settings.smax_gpa * GPa
        self.c = float(n)  # cell "mass" scale, as ASE's exp_cell_factor
        self.r = np.zeros((n + 3, 3))  # generalised coordinates: x (A), then c * log(F)
        self.r[:n] = x
        self.rule = make_step_rule(optimizer, self.r.shape, settings, memory=settings.memory,
                                   alpha=settings.alpha, switch_fmax=settings.switch_fmax)
        self._deform: tuple | None = None

    def point(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (positions, cell) in A to evaluate next, or None when the run has ended."""
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
        return pos, cell

    def update(self, energy: float, forces: np.ndarray, stress: np.ndarray) -> bool:
        """Take the results at the last :meth:`point`; True when the run has ended."""
        s, state, n = self.s, self.state, self.n
        fgrad, lam, vec, vol = self._deform
        state.n_calls += 1
        state.energy, state.stress = energy, _voigt(stress)
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            state.status = "nan"
            return True
        state.fmax = float(np.sqrt((forces**2).sum(1)).max()) if n else 0.0
        resid = stress + self.p_ev * np.eye(3)
        smax_now = float(np.abs(resid).max()) if self.relax_cell else 0.0
        if state.fmax < s.fmax and smax_now < self.smax:
            state.status = "converged"
            return True
        if state.n_calls >= s.max_steps:
            state.status = "not_converged"
            return True
        g = np.zeros((n + 3, 3))  # generalised forces on (x, c log F)
        g[:n] = forces @ fgrad
        if self.relax_cell:
            g[n:] = _cell_force(-vol * resid, fgrad, lam, vec) / self.c
        self.r += self.rule.step(self.r, g, state.fmax)
        state.n_steps += 1
        return False


def check_structure(atoms: Atoms) -> bool:
    """Whether ``atoms`` is periodic (True) or a molecule (False); RMError for mixed
    periodicity or a degenerate periodic cell."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        raise RMError(f"pbc={pbc.tolist()}: only fully periodic or non-periodic structures")
    if pbc.all() and abs(np.linalg.det(np.array(atoms.cell, dtype=float))) < 1e-6:
        raise RMError("periodic structure with a degenerate cell")
    return bool(pbc.all())


def final_structure(state: _RunState, start: Atoms, pos: np.ndarray, cell: np.ndarray, cutoff: float) -> None:
    """Set ``state.atoms`` to the last evaluated structure (wrapped into its cell), and mark a
    finished molecule with an atom farther than ``cutoff`` (A) from all others ``lost_atoms``."""
    periodic = bool(np.all(start.pbc))
    state.atoms = Atoms(numbers=start.numbers.copy(), positions=pos, cell=cell if periodic else start.cell,
                        pbc=start.pbc)
    if not periodic and state.status in ("converged", "not_converged") and \
            _isolated_atoms(state.atoms.positions, cutoff):
        state.status = "lost_atoms"
    if periodic:
        state.atoms.wrap()


def start_variables(atoms: Atoms, settings: RelaxSettings
                    ) -> tuple[bool, np.ndarray, np.ndarray, float, np.ndarray, bool]:
    """``(periodic, numbers, cell0 (3, 3) A, vol0 A^3, x (n, 3) A, relax_cell)`` of a relaxation
    of ``atoms``: the arguments :class:`Minimisation` takes; RMError for a bad structure."""
    periodic = check_structure(atoms)
    cell0 = np.array(atoms.cell, dtype=float)
    vol0 = abs(np.linalg.det(cell0)) if periodic else 0.0
    x = atoms.positions.astype(float).copy()  # undeformed positions
    return periodic, atoms.numbers.copy(), cell0, vol0, x, settings.relax_cell and periodic


def error_status(exc: BaseException) -> str:
    """The status ``error: <type>: <message>`` (one line, at most 300 characters) of a run
    that raised ``exc``."""
    return "error: " + " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def kick_start(first: RelaxOutcome, kick: float, rng: np.random.Generator | None) -> Atoms | None:
    """The start of the kick stage after the first stage ``first`` (its atoms displaced by
    uniform noise in +-``kick`` A per component, drawn from ``rng``, default a fresh unseeded
    generator), or None when there is no second stage (kick 0 or a failed first stage)."""
    if kick <= 0 or first.status not in ("converged", "not_converged"):
        return None
    rng = rng if rng is not None else np.random.default_rng()
    kicked = first.atoms.copy()
    kicked.positions = kicked.positions + rng.uniform(-kick, kick, size=kicked.positions.shape)
    return kicked


def kick_settings(settings: RelaxSettings) -> RelaxSettings:
    """The settings of the kick stage: ``settings`` with fmax = kick_fmax."""
    return replace(settings, fmax=settings.kick_fmax)


def merge_stages(first: RelaxOutcome, second: RelaxOutcome) -> RelaxOutcome:
    """``second`` with ``first_stage`` set from ``first`` and the counts and times of both."""
    second.first_stage = {"status": first.status, "energy": float(first.energy),
                          "fmax": float(first.fmax), "n_force_calls": int(first.n_force_calls)}
    second.n_force_calls += first.n_force_calls
    second.n_steps += first.n_steps
    second.wall_s += first.wall_s
    second.model_time_s += first.model_time_s
    return second


class Relaxer:
    """Relax structures one after another with one LAMMPS instance (and model) per process.

    >>> relaxer = Relaxer(load_potential("pot/"), RelaxSettings(fmax=0.01))  # doctest: +SKIP
    >>> outcome = relaxer.relax(atoms)                                       # doctest: +SKIP

    :meth:`relax` never raises for a failing run; it returns a status (see module doc).
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

        With ``settings.kick > 0`` a second stage follows (see :class:`RelaxSettings`); its
        displacements are drawn from ``rng`` (default: a fresh unseeded generator).
        """
        first = self._relax_once(atoms)
        kicked = kick_start(first, self.settings.kick, rng)
        if kicked is None:
            return first
        settings = self.settings
        self.settings = kick_settings(settings)
        try:
            second = self._relax_once(kicked)
        finally:
            self.settings = settings
        return merge_stages(first, second)

    def _relax_once(self, atoms: Atoms) -> RelaxOutcome:
        t0 = time.perf_counter()
        m0 = self.engine.model_time_s
        state = _RunState(atoms.copy())
        try:
            self._relax(atoms, state)
        except LostAtoms:
            state.status = "lost_atoms"
            self.engine.reset()
        except Exception as exc:  # a failed run must not stop the search
            log.debug("relaxation failed", exc_info=True)
            state.status = error_status(exc)
            self.engine.reset()
        return RelaxOutcome(atoms=state.atoms, status=state.status, energy=state.energy,
                            stress=state.stress, fmax=state.fmax,
                            n_force_calls=state.n_calls, n_steps=state.n_steps,
                            wall_s=time.perf_counter() - t0,
                            model_time_s=self.engine.model_time_s - m0)

    def _relax(self, atoms: Atoms, state: _RunState) -> None:
        periodic, numbers, cell0, vol0, x, relax_cell = start_variables(atoms, self.settings)
        last: list = [(x.copy(), cell0)]  # the last evaluated (positions, cell)
        try:
            if self.optimizer == "lammps-cg":
                from rmsearch.lammps_min import minimise_in_lammps

                minimise_in_lammps(self.engine, state, numbers, periodic, relax_cell, x, cell0, vol0,
                                   self.settings, last)
            else:
                self._minimise(state, numbers, periodic, relax_cell, cell0, vol0, x, last)
        finally:
            final_structure(state, atoms, *last[0], self.potential.cutoff)

    def _minimise(self, state: _RunState, numbers: np.ndarray, periodic: bool, relax_cell: bool,
              cell0: np.ndarray, vol0: float, x: np.ndarray, last: list) -> None:
        """Minimise over (x, N log F) from ``x`` (A) with the settings' step rule; sets
        ``state`` and ``last[0] = (positions, cell)``."""
        run = Minimisation(self.settings, self.optimizer, state, numbers, periodic, relax_cell, cell0, vol0, x)
        while (point := run.point()) is not None:
            last[0] = point
            if run.update(*self.engine.compute(point[0], point[1], numbers, periodic)):
                break


@dataclass
class _RunState:
    atoms: Atoms
    status: str = "error: not started"
    energy: float = math.nan
    stress: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    fmax: float = math.nan
    n_calls: int = 0
    n_steps: int = 0
