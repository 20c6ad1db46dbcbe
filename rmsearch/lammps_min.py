"""Relaxation inside LAMMPS (relax optimizer ``"lammps-cg"``): the fast path for native potentials.

With a LAMMPS-native potential (UF3, SNAP) one force call on a few atoms costs tens of
microseconds, and the Python relaxer's per-step work (a ``run 0``, the cell update, the
optimizer step in numpy; ~0.7 ms) would dominate. Here the whole minimisation runs in
LAMMPS: conjugate gradients with ``fix box/relax tri`` (all six cell degrees of freedom,
``lammps_inputs/minimize.in`` and ``box_relax.in``), in rounds, because box/relax
measures cell changes against a reference cell and a round may stop early on its line
search. After each round the protocol's stop rule (:meth:`rmsearch.protocol.RunState.stop_rule`:
max |F_i| < fmax eV/A and max |sigma + p| < smax GPa, and the failure checks: NaN, lost
atoms, exploded or collapsed volume) is applied to LAMMPS' last force evaluation; when the round stopped on anything
but LAMMPS' force tolerance (a failed line search, the budget), that evaluation may not be
at the final atoms and cell, so one ``run 0`` evaluates them again. LAMMPS' force
tolerance is the relaxer's fmax on the per-atom |F_i|; box/relax adds the cell's "forces"
(stress times volume, eV) to the same norm, which in a small cell can be met while the
stress is still above smax, so a round that met LAMMPS' tolerance but not the relaxer's
rule halves the tolerance for the next. The force-call budget
``max_steps`` counts every force evaluation LAMMPS reports in its log
(:meth:`rmsearch.engine.LammpsEngine.run_logged`); LAMMPS checks its own budget between
iterations, so a run can end a line search (one or two evaluations) past ``max_steps``.

Why CG with box/relax and not the staged FIRE-then-box protocol of DESIGN section 4: on
30 random C8 starts with the SNAP potential it needed ~155 CG iterations and reached a
mean final energy 3 meV/atom above the Python relaxer's (FIRE at fixed cell first: more
iterations, no better minima); ``min_style fire`` cannot be combined with box/relax in
the pip wheel. The Python relaxer (:mod:`rmsearch.relax`) stays the default for callback
(MACE) potentials, where the model call dominates and fewer, better steps win.

Symmetry (``RelaxSettings.keep_symmetry``): LAMMPS' CG with ``fix box/relax`` cannot be
confined to a space group's invariant subspace, so :class:`rmsearch.relax.Relaxer` runs a
stage that keeps the start's symmetry with the Python step rule "fire2-lbfgs"
(:func:`rmsearch.relax.relax_in_python`, which projects forces, stress and steps), with a
LAMMPS-native potential as well (its ``run 0`` force calls stay in LAMMPS); a free
``release_symmetry`` stage after it runs here again.
"""

from __future__ import annotations

import re

import numpy as np
from ase import Atoms

from rmsearch.engine import LammpsEngine, render_template
from rmsearch.protocol import RelaxOutcome, RelaxSettings, RunState, failures_as_status, start_variables

#: Rounds of minimize (each restarts box/relax from the current cell).
MAX_ROUNDS = 12
#: Largest relative volume change per CG iteration.
VMAX = 0.01
#: LAMMPS' force tolerance as a fraction of the relaxer's fmax (eV/A).
FTOL_FACTOR = 0.999
#: Iterations between resets of box/relax's reference cell.
NRESET = 50
_STATS = re.compile(r"Iterations, force evaluations = (\d+) (\d+)")


def relax_in_lammps(engine: LammpsEngine, atoms: Atoms, settings: RelaxSettings) -> RelaxOutcome:
    """Relax ``atoms`` by CG inside LAMMPS (module doc); the space group is not kept (see
    above). Never raises for a failing run: the outcome's status says what happened."""
    state, m0 = RunState(atoms), engine.model_time_s
    with failures_as_status(state, engine):
        _minimise(engine, state, settings)
    return state.outcome(engine.potential.cutoff, engine.model_time_s - m0)


def _minimise(engine: LammpsEngine, state: RunState, settings: RelaxSettings) -> None:
    """The rounds of :func:`relax_in_lammps`, recorded in ``state``."""
    s = settings
    start = start_variables(state.start, s)
    state.positions, state.cell = start.x.copy(), start.cell0  # until the first evaluation
    n, periodic = len(start.numbers), start.periodic
    q = engine.place(start.x, start.cell0, start.numbers, periodic)
    lmp = engine.lmp
    lmp.commands_list(render_template("minimize.in"))
    box = start.relax_cell
    if box:
        lmp.commands_list(render_template("box_relax.in", pressure_bar=repr(s.pressure_gpa * 1e4),
                                          vmax=VMAX, nreset=NRESET))
    # "norm max" is the largest per-atom |F_i| (LAMMPS' min_modify), so LAMMPS' force stop
    # implies the relaxer's force rule; 0.1 % under fmax keeps rounding from splitting them
    ftol = s.fmax * FTOL_FACTOR
    try:
        for _ in range(MAX_ROUNDS):
            budget = s.max_steps - state.n_force_calls - 1
            if budget < 1:
                state.status = "not_converged"
                return
            out = engine.run_logged(f"minimize 0.0 {ftol!r} {budget} {budget}")
            match = _STATS.search(out)
            iterations, evaluations = (int(x) for x in match.groups()) if match else (0, budget)
            state.n_steps += iterations
            state.n_force_calls += evaluations
            ftol_stop = "Stopping criterion = force tolerance" in out
            if not ftol_stop:
                # after other stops (line search failed, budget) LAMMPS' last evaluation may not be
                # at the final atoms and cell: evaluate again for the stop rule and the statuses
                engine.run()
                state.n_force_calls += 1
            pos, cell = engine.structure(n, q, periodic)
            state.positions, state.cell = pos, cell
            energy, forces, stress = engine.results(n, q, periodic)
            if state.stop_rule(s, energy, forces, stress, relax_cell=box, positions=pos,
                               volume=abs(np.linalg.det(cell)) if box else None, volume0=start.vol0):
                return
            if ftol_stop:  # LAMMPS' tolerance was met but not the relaxer's (the cell's part,
                ftol *= 0.5  # on LAMMPS' scale, is looser in small cells): tighten it
        state.status = "not_converged"
    finally:
        if box:
            try:
                lmp.command("unfix rm_box")
            except Exception:  # a failed minimize may leave LAMMPS unusable; the relaxer resets it
                pass
