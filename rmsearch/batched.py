"""Batched relaxation: many independent relaxations share each MACE model call.

The serial :class:`rmsearch.relax.Relaxer` evaluates one structure per force call through
LAMMPS, so on a GPU the model call is bound by its fixed latency (kernel launches, a few
ms), not by the atoms it holds. :class:`BatchedRelaxer` keeps up to ``batch`` relaxations
in flight and evaluates all of them in one model call
(:meth:`rmsearch.mace_model.MACEEvaluator.evaluate_batch`: the structures flattened into
one graph batch with a per-atom system index), as torch-sim's in-flight autobatcher does:
a relaxation that ends (converged or failed) leaves the batch at once and the next start
takes its place, and results come back tagged with their key so the caller restores the
input order (:meth:`BatchedRelaxer.relax_many` does).

Same protocol as the serial relaxer, step for step: each relaxation is a
:class:`rmsearch.relax.Minimisation` (the same step rule, stop rule, tolerances, volume
checks and statuses), its optimiser state (FIRE velocities, L-BFGS memory) a per-system
numpy object driven in lockstep with the others; only the model call is shared. The kick
stage of the molecule protocol runs as a second relaxation of the same slot. The core
repulsion overlay that LAMMPS adds in the serial path (a spline table of
``g(r) = m (1 - r^2/rc^2)^2``) is added here analytically (:func:`core_repulsion_terms`).
Results agree with the serial relaxer to round-off per force call (the serial path
evaluates the structure rotated into LAMMPS' frame), so relaxations reach the same minima;
``tests/test_batched.py`` checks it on random carbon starts.

What differs: no LAMMPS (so no ``lost_atoms`` from LAMMPS; a molecule with an atom far
from the rest is still ``lost_atoms``), ``wall_s`` of an outcome is the time from its entry
into the batch to its end (shared with the other runs in flight), and ``model_time_s`` its
share of the batched model calls (each call's time split in proportion to the atoms).
Native LAMMPS potentials (``callback: null``) and ``optimizer="lammps-cg"`` are refused:
they have no model call to batch.

Units: A, eV, eV/A, stress in eV/A^3 (ASE sign), times in s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from rmdata.errors import RMError
from rmsearch.engine import CoreRepulsion, Potential
from rmsearch.protocol import (
    RelaxOutcome,
    RelaxSettings,
    RunState,
    check_structure,
    error_status,
    first_stage_settings,
    merge_stages,
    resolve_optimizer,
    second_stage,
)
from rmsearch.relax import Minimisation

log = logging.getLogger(__name__)

#: Devices :class:`BatchedRelaxer` accepts (a CUDA index may follow: "cuda:1").
DEVICES = ("cpu", "cuda")
#: Relaxations in flight per model call on a GPU when none is given (not tuned: no GPU has
#: been measured yet; see README "GPU").
DEFAULT_GPU_BATCH = 128


def check_device(device: str) -> str:
    """``device`` if torch can use it ("cpu", "cuda" or "cuda:N"); RMError otherwise."""
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise RMError(f"--device {device!r}: must be cpu, cuda or cuda:N")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RMError(f"--device {device}: torch {torch.__version__} finds no CUDA device here; "
                          "use --device cpu (add --batch N for the batched path on the CPU)")
        if index and int(index) >= torch.cuda.device_count():
            raise RMError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def check_batchable(potential: Potential, settings: RelaxSettings) -> str:
    """The step rule a batched relaxation of ``potential`` with ``settings`` uses; RMError
    for a LAMMPS-native potential or ``optimizer="lammps-cg"`` (no model call to batch)."""
    if potential.callback != "mace":
        raise RMError(f"{potential.directory}: the batched path (--device cuda / --batch) needs a "
                      "mace potential; a LAMMPS-native potential relaxes with the worker pool")
    optimizer = resolve_optimizer(settings.optimizer, potential)
    if optimizer == "lammps-cg":
        raise RMError("optimizer lammps-cg runs inside LAMMPS and cannot be batched; choose a "
                      "Python step rule (fire2-lbfgs, fire2, fire, lbfgs)")
    return optimizer


def core_repulsion_terms(positions: np.ndarray, cell: np.ndarray, periodic: bool, core: CoreRepulsion,
                         neighbours, numbers: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces (n, 3) eV/A and stress (3, 3) eV/A^3 (ASE sign, zeros without
    periodicity) of ``sum over pairs g(r)`` for r < rc_ab (:class:`rmsearch.engine.CoreRepulsion`,
    :meth:`~rmsearch.engine.CoreRepulsion.pair_energy`; ``numbers``, the atomic numbers, are
    needed when g depends on the pair): the overlay the serial relaxer tabulates for
    LAMMPS (:func:`rmsearch.engine.write_core_table`). ``neighbours``: a half
    ``vesin.NeighborList`` with a cutoff of at least the largest rc_ab."""
    n = len(positions)
    forces = np.zeros((n, 3))
    i, j, d_pc = neighbours.compute(points=positions, box=cell if periodic else np.zeros((3, 3)),
                                    periodic=periodic, quantities="ijD")
    r_p = np.linalg.norm(d_pc, axis=1)
    if numbers is None:
        if core.covalent_scale is not None or core.zbl:
            raise ValueError("core_repulsion_terms: atomic numbers are needed for a per-pair overlay")
        numbers = np.zeros(n, dtype=int)  # g does not depend on the elements
    rc_p = core.radii(numbers)[i, j]
    inside = r_p < rc_p
    if not inside.any():
        return 0.0, forces, np.zeros((3, 3))
    i, j, d_pc, r_p, rc_p = i[inside], j[inside], d_pc[inside], r_p[inside], rc_p[inside]
    g_p, dg_p = core.pair_energy(r_p, rc_p, numbers[i], numbers[j])  # eV, dg/dr (eV/A)
    dedd_pc = (dg_p / r_p)[:, None] * d_pc  # dE/dD for D = r_j - r_i (+ shift)
    for c in range(3):
        forces[:, c] += np.bincount(i, dedd_pc[:, c], minlength=n) - np.bincount(j, dedd_pc[:, c], minlength=n)
    stress = np.zeros((3, 3))
    if periodic:
        stress = dedd_pc.T @ d_pc / abs(np.linalg.det(cell))
    return float(np.sum(g_p)), forces, stress


@dataclass
class _Run:
    """One relaxation in flight: its step machine, its progress and bookkeeping."""

    key: Any
    rng: np.random.Generator | None
    state: RunState
    mini: Minimisation | None = None
    node_attrs: np.ndarray | None = None
    numbers: np.ndarray | None = None  # atomic numbers (the per-pair core radius)
    point: tuple | None = None  # (positions, cell) to evaluate next; None: the run has ended
    model_time_s: float = 0.0
    first: RelaxOutcome | None = None  # the first stage, while the kick stage runs
    t_first: float = 0.0  # when the first stage began (for the run timeout)


class BatchedRelaxer:
    """Relax many structures at once, ``batch`` of them per MACE model call.

    >>> with BatchedRelaxer(load_potential("pot/"), device="cuda", batch=128) as r:  # doctest: +SKIP
    ...     outcomes = r.relax_many(starts)

    ``device``: "cpu", "cuda" or "cuda:N". ``batch``: relaxations in flight (structures per
    model call). ``threads``: torch intra-op threads (CPU). ``run_timeout_s``: a relaxation
    in flight longer than this (wall, s) ends with status ``timeout`` (None: no limit).
    Never raises for a failing run (see :class:`rmsearch.relax.Relaxer`).
    """

    def __init__(self, potential: Potential, settings: RelaxSettings | None = None, *,
                 device: str = "cpu", batch: int = 64, threads: int | None = 1,
                 run_timeout_s: float | None = None):
        from vesin import NeighborList

        from rmsearch.mace_model import MACEEvaluator

        self.potential = potential
        self.settings = settings or RelaxSettings()
        self.optimizer = check_batchable(potential, self.settings)
        if not (isinstance(batch, int) and batch >= 1):
            raise RMError(f"--batch {batch!r}: must be an integer >= 1")
        self.device = check_device(device)
        self.batch = batch
        self.run_timeout_s = run_timeout_s or None
        self.evaluator = MACEEvaluator(potential.model_file, dtype=self.settings.dtype, threads=threads,
                                       device=device)
        core = self.settings.core_repulsion
        self._core_nl = (NeighborList(cutoff=core.cutoff([atomic_numbers[e] for e in potential.elements]),
                                      full_list=False) if core is not None else None)
        self.n_model_calls = 0

    def close(self) -> None:
        """Release the model (and its device memory)."""
        self.evaluator = None

    def __enter__(self) -> BatchedRelaxer:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public
    def relax(self, atoms: Atoms, rng: np.random.Generator | None = None) -> RelaxOutcome:
        """Relax one structure (a batch of one); see :meth:`irelax`."""
        return self.relax_many([atoms], [rng])[0]

    def relax_many(self, starts: Iterable[Atoms],
                   rngs: Iterable[np.random.Generator | None] | None = None) -> list[RelaxOutcome]:
        """Relax ``starts``; the outcomes in the order of ``starts``. ``rngs``: one generator
        per start for the kick stage (default: fresh unseeded ones)."""
        starts = list(starts)
        rngs = list(rngs) if rngs is not None else [None] * len(starts)
        if len(rngs) != len(starts):
            raise ValueError(f"{len(rngs)} generators for {len(starts)} starts")
        out: list[RelaxOutcome | None] = [None] * len(starts)
        for k, outcome in self.irelax(zip(range(len(starts)), starts, rngs)):
            out[k] = outcome
        return out

    def irelax(self, jobs: Iterable[tuple[Any, Atoms, np.random.Generator | None]]
               ) -> Iterator[tuple[Any, RelaxOutcome]]:
        """Relax the ``(key, atoms, rng)`` of ``jobs`` (read lazily, ``batch`` at a time in
        flight); yields ``(key, outcome)`` as each relaxation ends, so not in input order."""
        jobs = iter(jobs)
        active: list[_Run] = []
        exhausted = False
        while True:
            while not exhausted and len(active) < self.batch:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                key, atoms, rng = job
                settled = self._settle(self._admit(key, atoms, rng, settings=first_stage_settings(
                    self.settings, bool(np.all(atoms.pbc)))))
                if isinstance(settled, RelaxOutcome):
                    yield key, settled
                else:
                    active.append(settled)
            if not active:
                return
            results = self._evaluate(active)
            still: list[_Run] = []
            now = time.perf_counter()
            for run, result in zip(active, results):
                if isinstance(result, BaseException):
                    run.state.status = error_status(result)
                    run.point = None
                elif run.mini.update(*result):
                    run.point = None
                elif self.run_timeout_s is not None and now - run.t_first > self.run_timeout_s:
                    run.state.status = "timeout"
                    run.point = None
                else:
                    run.point = run.mini.point()
                settled = self._settle(run)
                if isinstance(settled, RelaxOutcome):
                    yield run.key, settled
                else:
                    still.append(settled)
            active = still

    # -- internals
    def _admit(self, key: Any, atoms: Atoms, rng: np.random.Generator | None, *,
               settings: RelaxSettings, first: RelaxOutcome | None = None, t_first: float | None = None
               ) -> _Run:
        """A new relaxation of ``atoms`` with its first point to evaluate (or ended already)."""
        state = RunState(atoms)
        run = _Run(key=key, rng=rng, state=state, first=first, t_first=state.t0 if t_first is None else t_first)
        try:
            check_structure(atoms)  # a bad structure is named before unknown elements
            unknown = sorted({int(z) for z in atoms.numbers
                              if chemical_symbols[int(z)] not in self.potential.elements})
            if unknown:
                raise RMError(f"element Z={','.join(map(str, unknown))} not in the potential "
                              f"(elements {self.potential.elements})")
            run.numbers = atoms.numbers.copy()
            run.node_attrs = self.evaluator.node_attrs(run.numbers)
            run.mini = Minimisation(state, settings, self.optimizer)
            run.point = run.mini.point()
        except Exception as exc:  # a bad start is a failed run, not a failed batch
            log.debug("batched relaxation could not start", exc_info=True)
            run.state.status = error_status(exc)
            run.point = None
        return run

    def _settle(self, run: _Run) -> _Run | RelaxOutcome:
        """``run`` while it goes on; when it has ended, its outcome, or the second stage
        (kick, symmetry release or the free stage after the constant-volume one,
        :func:`rmsearch.protocol.second_stage`) that follows it (itself settled)."""
        while run.point is None:
            outcome = self._outcome(run)
            if run.first is not None:
                return merge_stages(run.first, outcome)
            stage = second_stage(outcome, self.settings, run.rng)
            if stage is None:
                return outcome
            run = self._admit(run.key, stage[0], run.rng, settings=stage[1],
                              first=outcome, t_first=run.t_first)
        return run

    def _outcome(self, run: _Run) -> RelaxOutcome:
        return run.state.outcome(self.potential.cutoff, run.model_time_s)

    def _evaluate(self, runs: list[_Run]) -> list:
        """(energy, forces, stress) at each run's point, or the exception its evaluation
        raised. A failing batch is split in halves and retried, so one bad structure (or a
        batch too large for the device's memory) fails only itself."""
        systems = []
        for run in runs:
            pos, cell = run.point
            if run.mini.periodic:  # wrapped into the cell, as LAMMPS holds the atoms
                frac = np.linalg.solve(cell.T, pos.T).T
                pos = (frac % 1.0) @ cell
            systems.append((pos, cell, run.node_attrs, run.mini.periodic))
        t0 = time.perf_counter()
        try:
            results = self.evaluator.evaluate_batch(systems)
            results = [self._add_core(system, run.numbers, result)
                       for system, run, result in zip(systems, runs, results)]
        except Exception as exc:
            if len(runs) == 1:
                return [exc]
            if "out of memory" in str(exc).lower():
                self.batch = max(1, len(runs) // 2)
                log.warning("model call on %d structures ran out of memory; batch now %d", len(runs), self.batch)
            half = len(runs) // 2
            return self._evaluate(runs[:half]) + self._evaluate(runs[half:])
        dt = time.perf_counter() - t0
        self.n_model_calls += 1
        total = sum(len(s[0]) for s in systems)
        for run, system in zip(runs, systems):
            run.model_time_s += dt * len(system[0]) / total
        return results

    def _add_core(self, system: tuple, numbers: np.ndarray, result: tuple) -> tuple[float, np.ndarray, np.ndarray]:
        core = self.settings.core_repulsion
        if core is None:
            return result
        pos, cell, _, periodic = system
        e_core, f_core, s_core = core_repulsion_terms(pos, cell, periodic, core, self._core_nl, numbers)
        energy, forces, stress = result
        return energy + e_core, forces + f_core, stress + s_core

