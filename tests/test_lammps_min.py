"""Relaxation inside LAMMPS (optimizer "lammps-cg", rmsearch.lammps_min) with a cheap LJ potential.

- a strained, rattled fcc crystal relaxes to the same minimum as the Python relaxer, and
  the relaxer's own stop rule (forces and stress) holds at the end;
- the force-call budget counts LAMMPS' evaluations and is never exceeded, and the count
  (read from LAMMPS' log) does not change when the log file restarts;
- a non-periodic cluster relaxes without a box;
- "auto" follows the potential directory's recommendation, and a bad one is a clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.units import GPa

os.environ.setdefault("OMP_NUM_THREADS", "1")

SIGMA, EPS = 3.4, 0.0104  # argon-like LJ (A, eV)


def _lj_potential(directory: Path, **extra):
    from rmsearch.potentials import load_potential

    directory.mkdir(parents=True, exist_ok=True)
    meta = {"backend": "lj", "elements": ["Ar"], "cutoff": 8.5, "pair_style": "lj/cut 8.5",
            "pair_coeff": [f"* * {EPS} {SIGMA}"], "callback": None, "volumes": {"Ar": 40.0}, **extra}
    (directory / "potential.json").write_text(json.dumps(meta))
    return load_potential(directory)


def _start(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + 0.04 * (rng.random((3, 3)) - 0.5)), scale_atoms=True)
    atoms.positions += 0.1 * (rng.random(atoms.positions.shape) - 0.5)
    return atoms


def test_same_minimum_as_python_relaxer_and_stop_rule_holds(tmp_path):
    from rmsearch.relax import Relaxer, RelaxSettings

    pot = _lj_potential(tmp_path / "lj")
    out = {}
    for optimizer in ("lammps-cg", "fire2-lbfgs"):
        settings = RelaxSettings(optimizer=optimizer, fmax=1e-4, smax_gpa=1e-3, core_repulsion=None)
        with Relaxer(pot, settings) as relaxer:
            out[optimizer] = relaxer.relax(_start())
    cg, py = out["lammps-cg"], out["fire2-lbfgs"]
    assert cg.converged and py.converged, (cg.status, py.status)
    assert abs(cg.energy_per_atom - py.energy_per_atom) < 1e-6
    assert abs(cg.volume_per_atom / py.volume_per_atom - 1) < 1e-3
    assert cg.fmax < 1e-4 and np.abs(cg.stress).max() < 1e-3 * GPa
    assert cg.n_force_calls > cg.n_steps > 0  # LAMMPS' evaluations, not its iterations
    # the returned structure is the relaxed one: re-evaluating it gives the same energy, no force
    with Relaxer(pot, RelaxSettings(optimizer="fire2-lbfgs", fmax=1e-3, core_repulsion=None)) as check:
        again = check.relax(cg.atoms)
    assert again.n_force_calls == 1 and abs(again.energy - cg.energy) < 1e-9


def test_force_call_budget_is_respected(tmp_path):
    from rmsearch.relax import Relaxer, RelaxSettings

    for cap in (6, 25):  # LAMMPS may finish the line search it is in: at most 2 calls over
        with Relaxer(_lj_potential(tmp_path / "lj"), RelaxSettings(optimizer="lammps-cg", max_steps=cap,
                                                                     fmax=1e-6)) as relaxer:
            out = relaxer.relax(_start(1))
        assert out.status == "not_converged" and cap <= out.n_force_calls <= cap + 2, (cap, out)


def test_force_call_count_survives_log_restarts(tmp_path, monkeypatch):
    """LAMMPS' counts come from its log, kept open across relaxations and restarted when long:
    the same start gives the same relaxation and count every time, restart or not."""
    from rmsearch import engine, relax

    with relax.Relaxer(_lj_potential(tmp_path / "lj"), relax.RelaxSettings(optimizer="lammps-cg", fmax=1e-4)) as r:
        first = r.relax(_start(2))
        monkeypatch.setattr(engine, "LOG_RESTART_BYTES", 1)  # a new log file before every minimize
        again = [r.relax(_start(2)) for _ in range(3)]
        log_file = r.engine.scratch() / "lammps.log"
        assert log_file.stat().st_size < 4_000  # restarted: one minimize, not four relaxations (~12 kB)
    assert first.converged and first.n_force_calls > 10
    for out in again:
        assert (out.status, out.n_force_calls, out.n_steps) == (first.status, first.n_force_calls, first.n_steps)
        assert abs(out.energy - first.energy) < 1e-12


def test_crystals_of_other_sizes_reuse_the_loaded_potential_exactly(tmp_path):
    """A new atom count replaces only the atoms (the pair style stays loaded): relaxing 4-,
    8- and again 4-atom crystals with one relaxer gives what fresh relaxers give, to 1e-10."""
    from rmsearch.relax import Relaxer, RelaxSettings

    pot = _lj_potential(tmp_path / "lj")
    big = _start(3).repeat((2, 1, 1))
    big.positions += 0.05 * np.random.default_rng(4).standard_normal(big.positions.shape)
    structures = [_start(3), big, _start(5)]
    for optimizer in ("lammps-cg", "fire2-lbfgs"):
        settings = RelaxSettings(optimizer=optimizer, fmax=1e-3, core_repulsion=None)
        with Relaxer(pot, settings) as reused:
            out = [reused.relax(a) for a in structures]
        for a, o in zip(structures, out):
            with Relaxer(pot, settings) as fresh:
                ref = fresh.relax(a)
            assert o.converged and (o.n_force_calls, o.n_steps) == (ref.n_force_calls, ref.n_steps)
            assert abs(o.energy - ref.energy) < 1e-10 and np.allclose(o.atoms.positions, ref.atoms.positions, atol=1e-9)


def test_one_atom_cell_meets_the_stress_rule(tmp_path):
    """In a small cell LAMMPS' cell 'forces' (stress x volume, eV) meet its force tolerance
    before the stress is below smax: the tolerance is tightened until the relaxer's rule holds."""
    from rmsearch.relax import Relaxer, RelaxSettings

    atoms = bulk("Ar", "fcc", a=5.26)  # one atom, 36 A^3
    atoms.set_cell(atoms.cell @ np.diag([1.03, 0.98, 1.01]), scale_atoms=True)
    with Relaxer(_lj_potential(tmp_path / "lj"), RelaxSettings(optimizer="lammps-cg", fmax=0.01, smax_gpa=1e-3,
                                                                 core_repulsion=None)) as relaxer:
        out = relaxer.relax(atoms)
    assert out.converged, out.status
    assert np.abs(out.stress).max() < 1e-3 * GPa


def test_cluster_relaxes_without_a_box(tmp_path):
    from rmsearch.relax import Relaxer, RelaxSettings

    r0 = 2 ** (1 / 6) * SIGMA
    tetra = Atoms("Ar4", positions=r0 * np.array([[0, 0, 0], [1, 0, 0], [0.5, 0.9, 0], [0.5, 0.3, 0.8]]),
                  pbc=False)
    with Relaxer(_lj_potential(tmp_path / "lj"), RelaxSettings(optimizer="lammps-cg", fmax=1e-4)) as relaxer:
        out = relaxer.relax(tetra)
    assert out.converged, out.status
    d = out.atoms.get_all_distances()[np.triu_indices(4, 1)]
    assert np.allclose(d, d.mean(), rtol=1e-3)  # a regular tetrahedron
    assert abs(out.energy - 6 * (-EPS)) < 0.02 * 6 * EPS  # six pairs near the LJ minimum (cutoff shift aside)


def test_auto_follows_the_potential_directory(tmp_path):
    from rmdata.errors import RMError
    from rmsearch.relax import Relaxer, RelaxSettings, resolve_optimizer

    assert resolve_optimizer("auto", _lj_potential(tmp_path / "a")) == "fire2-lbfgs"
    assert resolve_optimizer("auto", _lj_potential(tmp_path / "b", optimizer="lammps-cg")) == "lammps-cg"
    with pytest.raises(RMError, match="potential.json: optimizer 'cg'"):
        Relaxer(_lj_potential(tmp_path / "c", optimizer="cg"), RelaxSettings())
    with pytest.raises(RMError, match="optimizer='newton'"):
        RelaxSettings(optimizer="newton")
