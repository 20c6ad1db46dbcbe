"""Symmetry-preserving relaxation (rmsearch/symmetry.py, RelaxSettings.keep_symmetry):
the projector is the group average, a strained rocksalt keeps Fm-3m exactly and reaches
the free relaxation's energy, a P1 start is untouched, Wyckoff starts keep their group
with the Python rules, the lammps-cg fallback and the batched path, and ``launch
--keep-symmetry`` records the final groups."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from ase.build import bulk

warnings.filterwarnings("ignore", category=UserWarning)

CRYSTAL = "model:mp20-mace"  # knows Na and Cl


@pytest.fixture(scope="module")
def mp20():
    from rmsearch.potentials import load_potential
    from rmsearch.registry import resolve_potential

    return load_potential(resolve_potential(CRYSTAL))


def _wyckoff_start(mp20, formula="NaCl", natoms=8, sg=63, run_id=0):
    """A pyxtal start of ``formula`` in space group ``sg`` (free Wyckoff parameters for 63)."""
    from rmsearch.starts import make_spec, make_start

    spec = make_spec(composition=formula, natoms=str(natoms), volumes=mp20.volumes, spacegroup=sg)
    start = make_start(spec, run_id, 0)
    assert start.info["spacegroup_start"] == sg, start.info
    return start


def _rocksalt(strain=1.12, rattle=0.0, seed=0):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.set_cell(atoms.cell * strain, scale_atoms=True)
    if rattle:
        atoms.positions += np.random.default_rng(seed).uniform(-rattle, rattle, atoms.positions.shape)
    return atoms


def test_projection_is_the_group_average_of_ase_fixsymmetry(mp20):
    """Random forces and stress on a Wyckoff start: the projection equals ASE's group
    average (ase.spacegroup.symmetrize, an independent implementation), is invariant under
    every operation and idempotent."""
    from ase.spacegroup.symmetrize import prep_symmetry, symmetrize_rank1, symmetrize_rank2

    from rmsearch.symmetry import find_symmetry

    start = _wyckoff_start(mp20)
    sym, cell, pos = find_symmetry(np.array(start.cell), start.positions, start.numbers)
    assert sym is not None and sym.number == 63 and sym.order > 1
    assert np.abs(pos - start.positions).max() < 1e-8  # the pyxtal start is already symmetric
    rng = np.random.default_rng(3)
    forces = rng.normal(size=(len(start), 3))
    stress = rng.normal(size=(3, 3))
    stress = stress + stress.T
    rot, trans, maps = prep_symmetry(start, symprec=1e-5)
    inv = np.linalg.inv(cell)
    assert np.allclose(sym.project_vectors(forces), symmetrize_rank1(cell, inv, forces, rot, trans, maps),
                       atol=1e-12)
    assert np.allclose(sym.project_tensor(stress), symmetrize_rank2(cell, inv, stress, rot), atol=1e-12)
    pf, ps = sym.project_vectors(forces), sym.project_tensor(stress)
    assert np.allclose(sym.project_vectors(pf), pf, atol=1e-12)
    for r, inverse in zip(sym.rotations, sym.inverse_maps):
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.allclose((pf @ r.T)[inverse], pf, atol=1e-12)  # invariant under the operation
        assert np.allclose(r @ ps @ r.T, ps, atol=1e-12)
    assert not np.allclose(pf, forces)  # random forces are not symmetric: the test can fail


def test_model_forces_on_a_symmetric_structure_are_already_symmetric(mp20):
    """Physics: the model's forces and stress at a Wyckoff start equal their group average."""
    import rmsearch
    from rmsearch.symmetry import find_symmetry

    start = _wyckoff_start(mp20, run_id=1)
    sym = find_symmetry(np.array(start.cell), start.positions, start.numbers)[0]
    with rmsearch.Calculator(CRYSTAL, dtype="float64") as calc:
        start.calc = calc
        forces, stress = start.get_forces(), start.get_stress(voigt=False)
    assert np.abs(forces).max() > 1e-2
    assert np.allclose(sym.project_vectors(forces), forces, atol=1e-6)
    assert np.allclose(sym.project_tensor(stress), stress, atol=1e-8)


def test_rattled_strained_rocksalt_keeps_fm3m_at_the_free_energy():
    import rmsearch
    from rmsearch.symmetry import spacegroup_number

    free = rmsearch.relax_atoms(_rocksalt(), CRYSTAL, dtype="float64", fmax=1e-3, smax_gpa=0.01)
    kept = rmsearch.relax_atoms(_rocksalt(rattle=3e-5), CRYSTAL, dtype="float64", fmax=1e-3, smax_gpa=0.01,
                                keep_symmetry=True)
    loose = rmsearch.relax_atoms(_rocksalt(rattle=3e-5), CRYSTAL, dtype="float64", fmax=1e-3, smax_gpa=0.01)
    assert free.converged and kept.converged
    assert spacegroup_number(kept.atoms, 1e-5) == 225
    assert spacegroup_number(loose.atoms, 1e-5) != 225  # without the constraint the rattle stays
    assert kept.energy == pytest.approx(free.energy, abs=1e-6)
    assert kept.atoms.get_volume() == pytest.approx(free.atoms.get_volume(), rel=1e-6)
    start_volume = _rocksalt().get_volume()
    assert kept.atoms.get_volume() < 0.9 * start_volume  # the cell did relax (12 % linear strain, 40 % in volume)


def test_p1_start_is_unaffected(mp20):
    import rmsearch
    from rmsearch.starts import make_spec, make_start
    from rmsearch.symmetry import spacegroup_number

    spec = make_spec(composition="NaCl", natoms="4", volumes=mp20.volumes)
    start = make_start(spec, 0, 0)
    assert spacegroup_number(start, 1e-4) == 1
    runs = [rmsearch.relax_atoms(start, CRYSTAL, max_steps=40, keep_symmetry=keep) for keep in (False, True)]
    assert runs[0].n_force_calls == runs[1].n_force_calls > 5
    assert runs[0].energy == runs[1].energy
    assert np.array_equal(runs[0].atoms.positions, runs[1].atoms.positions)
    assert np.array_equal(runs[0].atoms.cell.array, runs[1].atoms.cell.array)


def test_wyckoff_start_keeps_its_group_serial_and_batched(mp20):
    import rmsearch
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import RelaxSettings
    from rmsearch.symmetry import keeps_operations, spacegroup_number

    start = _wyckoff_start(mp20, run_id=2)
    serial = rmsearch.relax_atoms(start, CRYSTAL, keep_symmetry=True, max_steps=300)
    with BatchedRelaxer(mp20, RelaxSettings(keep_symmetry=True, max_steps=300), batch=2) as relaxer:
        batched = relaxer.relax_many([start, start])
    for out in (serial, *batched):
        assert out.status in ("converged", "not_converged")
        assert spacegroup_number(out.atoms, 1e-5) == spacegroup_number(start, 1e-5)
        assert keeps_operations(start, out.atoms, tol=1e-5)
    shaken = serial.atoms.copy()
    shaken.positions += np.random.default_rng(0).uniform(-0.02, 0.02, shaken.positions.shape)
    assert not keeps_operations(start, shaken)  # 0.02 A off the symmetric positions: not kept
    assert batched[0].energy == pytest.approx(serial.energy, abs=1e-3 * len(start))


def test_lammps_cg_falls_back_to_the_python_rule_and_keeps_the_group():
    """carbon-uf3 recommends lammps-cg; with keep_symmetry a rattled, strained diamond ends Fd-3m."""
    import rmsearch
    from rmsearch.symmetry import spacegroup_number

    diamond = bulk("C", "diamond", a=3.57 * 1.06, cubic=True)
    diamond.positions += np.random.default_rng(1).uniform(-2e-5, 2e-5, diamond.positions.shape)
    kept = rmsearch.relax_atoms(diamond, "model:carbon-uf3", keep_symmetry=True)
    free = rmsearch.relax_atoms(bulk("C", "diamond", a=3.57 * 1.06, cubic=True), "model:carbon-uf3")
    assert kept.converged and free.converged
    assert spacegroup_number(kept.atoms, 1e-5) == 227
    assert kept.energy_per_atom == pytest.approx(free.energy_per_atom, abs=1e-5)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from rmsearch.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_launch_keep_and_release_symmetry_records_the_groups(tmp_path):
    out = tmp_path / "run"
    res = _cli("launch", "-o", str(out), "--potential", CRYSTAL, "--nruns", "2", "--workers", "1",
               "--composition", "NaCl", "--natoms", "8", "--spacegroup", "63", "--keep-symmetry",
               "--release-symmetry", "--max-steps", "300", "--no-progress")
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["relax"]["keep_symmetry"] is True and config["relax"]["release_symmetry"] is True
    from rmsearch.records import read_records

    records = sorted(read_records(out / "shards"), key=lambda r: r.run_id)
    assert len(records) == 2
    for rec in records:
        assert rec.spacegroup_start == 63
        assert set(rec.extra["spacegroup_final"]) == {"0.001", "0.01", "0.1"}
        assert rec.extra["spacegroup_start_found"] == 63
        assert rec.extra["first_stage"]["status"] in ("converged", "not_converged")
        assert isinstance(rec.extra["spacegroup_kept"], bool)


def test_launch_refuses_symmetry_options_without_their_prerequisites(tmp_path):
    res = _cli("launch", "-o", str(tmp_path / "a"), "--potential", CRYSTAL, "--nruns", "1",
               "--composition", "NaCl", "--keep-symmetry")
    assert res.returncode != 0 and "error: --keep-symmetry" in res.stderr and "Traceback" not in res.stderr
    res = _cli("launch", "-o", str(tmp_path / "b"), "--potential", CRYSTAL, "--nruns", "1",
               "--composition", "NaCl", "--spacegroup", "225", "--release-symmetry")
    assert res.returncode != 0 and "release_symmetry" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_wyckoff_starts_sample_every_combination_not_one():
    """NaCl (8 atoms) in Cmcm: pyxtal draws the Wyckoff combination per start, so 40 starts
    cover every combination of 4-fold sites whose structure has the group itself (the
    others, e.g. Na 4a + Cl 4b, spglib reads as a supergroup)."""
    import spglib

    from rmsearch.starts import make_spec, make_start

    spec = make_spec(composition="NaCl", natoms="8", volumes={"Na": 23.0, "Cl": 23.0}, spacegroup=63)
    seen = set()
    for run_id in range(40):
        start = make_start(spec, run_id, 0)
        data = spglib.get_symmetry_dataset((start.cell[:], start.get_scaled_positions(), start.numbers), 1e-3)
        if data.number == 63:
            seen.add(tuple(sorted({(int(z), w) for z, w in zip(start.numbers, data.wyckoffs)})))
    assert seen == {((11, "a"), (17, "c")), ((11, "c"), (17, "a")), ((11, "c"), (17, "b")),
                    ((11, "b"), (17, "c")), ((11, "c"), (17, "c"))}


def test_spacegroup_prior_counts_groups_of_the_same_stoichiometry():
    """w(g) = crystals of the same anonymous formula in g + smoothing x overall frequency of g."""
    from rmsearch.symmetry import SpacegroupPrior, anonymous_formula

    crystals = [bulk("NaCl", "rocksalt", a=5.64), bulk("KBr", "rocksalt", a=6.6), bulk("MgO", "rocksalt", a=4.2),
                bulk("CsCl", "cesiumchloride", a=4.1), bulk("CaF2", "fluorite", a=5.46)]
    prior = SpacegroupPrior(crystals)
    assert anonymous_formula("Li2S") == anonymous_formula("Li4S2") == anonymous_formula(crystals[-1]) == "AB2"
    assert prior.weights("LiF") == pytest.approx({221: 1 + 1 / 5, 225: 3 + 4 / 5})
    assert prior.weights("Li2S") == pytest.approx({221: 1 / 5, 225: 1 + 4 / 5})
    assert SpacegroupPrior(crystals, smoothing=0).weights("Li2S") == {225: 1.0}
    assert SpacegroupPrior(crystals, smoothing=0).weights("Li3N") == {}


def test_wyckoff_prior_gives_the_sites_of_known_types_by_count_and_electronegativity():
    """Rocksalt NaCl and MgO: Na/Mg (the less electronegative of two equal counts) on 4a, the
    anion on 4b; fluorite CaF2: Ca 4a, F 8c; a query takes the sites in the same order and as
    often as the known crystals hold them; a stoichiometry or group not seen gives none."""
    from rmsearch.starts import wyckoff_counts
    from rmsearch.symmetry import WyckoffPrior, wyckoff_template

    sg, rocksalt = wyckoff_template(bulk("NaCl", "rocksalt", a=5.64))
    assert sg == 225 and wyckoff_counts(sg, rocksalt) == {"Na": 4, "Cl": 4}
    crystals = [bulk("NaCl", "rocksalt", a=5.64), bulk("MgO", "rocksalt", a=4.2),
                bulk("CaF2", "fluorite", a=5.46), bulk("ZnS", "zincblende", a=5.41)]
    prior = WyckoffPrior(crystals)
    anion_site = rocksalt["Cl"]
    assert prior.templates({"F": 4, "Li": 4}, 225) == [{"F": anion_site, "Li": rocksalt["Na"]}] * 2
    fluorite = prior.templates({"Li": 8, "S": 4}, 225)
    assert len(fluorite) == 1 and wyckoff_counts(225, fluorite[0]) == {"Li": 8, "S": 4}
    assert len(fluorite[0]["Li"]) == 1 and fluorite[0]["Li"][0].startswith("8")
    assert prior.templates({"Li": 4, "F": 4}, 221) == [] and prior.templates({"Li": 6, "S": 4}, 225) == []
