"""The public Python API: ``rmsearch.Calculator`` (ASE calculator of any potential
directory), ``rmsearch.relax_atoms`` and the ``rmsearch relax`` command, ``rmsearch.search``
/ ``RunDirectory`` / ``rmsearch.analyze``, ``rmsearch.export``, ``rmdata.make_dataset``, and
the lazy package attributes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import FIRE

import rmsearch
from rmdata.errors import RMError

CARBON = "model:carbon-uf3"


@pytest.fixture(scope="module")
def carbon_calc():
    with rmsearch.Calculator(CARBON) as calc:
        yield calc


def rattled_diamond(a: float = 3.6, seed: int = 1):
    atoms = bulk("C", "diamond", a=a, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_calculator_forces_and_stress_are_energy_derivatives(carbon_calc):
    atoms = rattled_diamond()
    atoms.calc = carbon_calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.05  # a rattled cell feels forces
    assert np.allclose(forces, calculate_numerical_forces(atoms, eps=1e-5), atol=1e-6)
    assert np.allclose(stress, calculate_numerical_stress(atoms, eps=1e-6), atol=1e-6)


def test_calculator_forces_and_stress_match_lammps_through_ase(carbon_calc):
    """The bare potential (no core overlay) through rmsearch.Calculator and through ASE's own
    LAMMPS calculator (LAMMPSlib, the potential's pair_style/pair_coeff): the same numbers."""
    from ase.calculators.lammpslib import LAMMPSlib

    from rmsearch.api import open_potential

    pot = open_potential(CARBON)  # loads the LAMMPS library as carbon_calc did
    atoms = rattled_diamond(seed=5)
    ref = atoms.copy()
    ref.calc = LAMMPSlib(lmpcmds=[f"pair_style {pot.pair_style}", *(f"pair_coeff {c}" for c in pot.pair_coeff)],
                         atom_types={"C": 1}, log_file=None)
    with rmsearch.Calculator(CARBON, core_repulsion=None) as calc:
        atoms.calc = calc
        assert np.abs(atoms.get_forces()).max() > 0.05
        assert np.allclose(atoms.get_forces(), ref.get_forces(), atol=1e-6, rtol=0)
        assert abs(atoms.get_potential_energy() - ref.get_potential_energy()) < 1e-6
        assert np.allclose(atoms.get_stress(), ref.get_stress(), atol=1e-6, rtol=0)


def test_calculator_on_a_molecule_has_no_stress_and_exact_forces():
    from rmdata.molecules import molecule_from_smiles

    mol = molecule_from_smiles("CCO")
    mol.pbc = False
    mol.rattle(0.05, seed=2)
    with rmsearch.Calculator("model:molecules-mace") as calc:
        mol.calc = calc
        forces = mol.get_forces()
        assert np.allclose(forces, calculate_numerical_forces(mol, eps=1e-4), atol=1e-6)
        assert np.abs(forces.sum(axis=0)).max() < 1e-5  # no net force on a free molecule
        assert "stress" not in calc.results


def test_calculator_agrees_with_the_relaxer_lammps_minimisation(carbon_calc):
    """The UF3 relaxes inside LAMMPS (lammps-cg); at its final structure the calculator's
    max |F| and energy are the relaxer's to 1e-6."""
    out = rmsearch.relax_atoms(rattled_diamond(3.7, seed=4), CARBON, fmax=0.01)
    assert out.status == "converged"
    atoms = out.atoms.copy()
    atoms.calc = carbon_calc
    assert abs(np.linalg.norm(atoms.get_forces(), axis=1).max() - out.fmax) < 1e-6
    assert abs(atoms.get_potential_energy() - out.energy) < 1e-6


def test_strained_cell_relaxes_back_with_ase_fire(carbon_calc):
    ref = bulk("C", "diamond", a=3.57, cubic=True)
    ref.calc = carbon_calc
    assert FIRE(FrechetCellFilter(ref), logfile=None).run(fmax=0.002, steps=1000)
    strained = ref.copy()
    strained.set_cell(ref.cell * 1.05, scale_atoms=True)
    strained.rattle(0.03, seed=3)
    strained.calc = carbon_calc
    assert abs(strained.get_volume() / ref.get_volume() - 1.157) < 0.001
    assert FIRE(FrechetCellFilter(strained), logfile=None).run(fmax=0.002, steps=1000)
    assert abs(strained.get_volume() / ref.get_volume() - 1) < 0.005
    assert abs(strained.get_potential_energy() - ref.get_potential_energy()) < 1e-4


def test_calculator_refuses_unknown_elements(carbon_calc):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.calc = carbon_calc
    with pytest.raises(ValueError, match="not in the potential"):
        atoms.get_potential_energy()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from rmsearch.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_relax_command_writes_each_structure_with_its_results(tmp_path):
    starts = []
    for k, scale in enumerate((0.97, 1.0, 1.04)):
        atoms = rattled_diamond(3.57 * scale, seed=10 + k)
        starts.append(atoms)
    src = tmp_path / "my starts é.extxyz"  # spaces and non-ASCII in the path work
    write(src, starts)
    before = src.read_bytes()
    out = tmp_path / "relaxed.extxyz"
    proc = _cli("relax", str(src), "--potential", CARBON, "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    frames = read(out, index=":")
    assert [f.info["input_index"] for f in frames] == [0, 1, 2]
    assert all(f.info["status"] == "converged" and f.info["fmax"] < 0.01 for f in frames)
    volumes = np.array([f.info["volume_per_atom"] for f in frames])
    assert np.ptp(volumes) < 0.05  # three strains, one minimum
    assert np.all(np.abs([f.info["pressure_gpa"] for f in frames]) < 0.1)
    assert src.read_bytes() == before
    again = _cli("relax", str(src), "--potential", CARBON, "-o", str(out))
    assert again.returncode != 0 and again.stderr.startswith("error:") and "--overwrite" in again.stderr


def test_relax_command_constant_volume_stage_keeps_the_volume_then_frees_it(tmp_path):
    """--volume-steps: a stage at the input's volume (a pressure left), then the free
    relaxation to the same minimum as without the stage; refused with --fixed-cell."""
    src = tmp_path / "strained.extxyz"
    write(src, rattled_diamond(3.57 * 1.04, seed=3))
    v0 = read(src).get_volume() / 8
    outs = {}
    for steps in ("0", "400"):
        out = tmp_path / f"v{steps}.extxyz"
        proc = _cli("relax", str(src), "--potential", CARBON, "-o", str(out), "--no-progress",
                    "--volume-steps", steps, "--volume-fmax", "0.05", "--fmax", "0.005")
        assert proc.returncode == 0, proc.stderr
        outs[steps] = read(out)
    assert all(a.info["status"] == "converged" for a in outs.values())
    assert abs(outs["0"].info["volume_per_atom"] - v0) > 0.1  # the minimum is elsewhere
    assert abs(outs["400"].info["volume_per_atom"] - outs["0"].info["volume_per_atom"]) < 0.01
    staged = rmsearch.relax_atoms(read(src), CARBON, fmax=0.005, volume_steps=400, volume_fmax=0.05)
    assert staged.first_stage["status"] == "converged"  # the CLI ran the API's two stages
    assert outs["400"].info["n_force_calls"] == staged.n_force_calls != outs["0"].info["n_force_calls"]
    bad = _cli("relax", str(src), "--potential", CARBON, "-o", str(tmp_path / "bad.extxyz"),
               "--volume-steps", "50", "--fixed-cell")
    assert bad.returncode != 0 and bad.stderr.startswith("error:") and "volume_steps" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.extxyz").exists()


def test_relax_command_refuses_elements_the_potential_lacks(tmp_path):
    src = tmp_path / "si.extxyz"
    write(src, bulk("Si", "diamond", a=5.43))
    proc = _cli("relax", str(src), "--potential", CARBON, "-o", str(tmp_path / "out.extxyz"))
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "Si" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.extxyz").exists()


def test_import_is_light_and_the_api_is_lazy():
    code = ("import sys, rmsearch, rmdata; heavy = [m for m in ('numpy', 'ase', 'torch', 'lammps', 'pymatgen') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert callable(rmsearch.search) and callable(rmdata.make_dataset); "
            "import rmsearch.relax; assert rmsearch.relax_atoms.__module__ == 'rmsearch.api'; "
            "assert type(rmsearch.relax).__name__ == 'module'; print(sorted(rmsearch.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for name in ("export", "search", "analyze", "RunDirectory", "AnalysisResult", "relax_atoms", "Calculator"):
        assert name in proc.stdout
    with pytest.raises(AttributeError, match="no attribute 'relax_structure'"):
        rmsearch.relax_structure  # noqa: B018


def test_make_dataset_writes_the_expected_frames(tmp_path):
    import rmdata

    out = tmp_path / "diamond.xyz"
    summary = rmdata.make_dataset(out, "diamond", seed=0, copies=1)
    frames = rmdata.read(out)
    # the diamond preset: one 8-atom cell x (noise levels x strains) = 121 frames per copy
    assert summary.n_structures == 1 and summary.n_frames == len(frames) == 121
    assert all(len(f) == 8 and f.arrays["REF_forces"].shape == (8, 3) for f in frames)
    again = rmdata.make_dataset(tmp_path / "again.xyz", "diamond", seed=0, copies=1)
    assert again.output.read_bytes() == out.read_bytes()  # same seed, same bytes


@pytest.fixture(scope="module")
def carbon_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("api_search") / "c_run"
    run = rmsearch.search(CARBON, system="C", natoms="2-8", nruns=20, out=out, seed=0, workers=2)
    return run


def test_search_returns_the_run_directory_with_one_record_per_run(carbon_search):
    run = carbon_search
    assert isinstance(run, rmsearch.RunDirectory) and os.fspath(run) == os.fspath(run.path)
    assert len(run.records) == run.config["nruns"] == 20
    assert sorted(r.run_id for r in run.records) == list(range(20))
    status = run.status()
    assert status["done"] == 20 and status["remaining"] == 0 and status["converged"] >= 18
    assert run.last_launch["runs"] == 20
    assert run.config["start"]["natoms"] == [2, 8] and run.config["system"] == "C"
    # resume: nothing left to run, the stored options kept; nruns may grow
    again = rmsearch.search(out=run.path, nruns=22, workers=1)
    assert again.last_launch["runs"] == 2 and len(again.records) == 22
    assert rmsearch.RunDirectory(run.path).status()["done"] == 22


def test_search_refuses_unknown_options_and_a_missing_run_directory(tmp_path):
    with pytest.raises(TypeError, match="unknown option.*natom.*the options are seed, system"):
        rmsearch.search(CARBON, out=tmp_path / "x", nruns=2, system="C", natom=4)
    with pytest.raises(RMError, match="not a run directory"):
        rmsearch.RunDirectory(tmp_path)
    assert not (tmp_path / "x").exists()


def test_analyze_returns_clusters_as_atoms_with_energies(carbon_search):
    import ase.db
    from pymatgen.core import Structure

    result = rmsearch.analyze(carbon_search, top=5)
    clusters = result.clusters
    assert len(clusters) == result.data["n_clusters"] >= 2
    assert result.report.is_file()
    assert [a.info["cluster_id"] for a in clusters] == list(range(len(clusters)))
    epa = [a.get_potential_energy() / len(a) for a in clusters]
    assert epa == sorted(epa)  # one element, no hull: ranked by energy per atom
    assert epa[0] == pytest.approx(carbon_search.status()["best_energy_per_atom"], abs=1e-12)
    assert sum(a.info["hits"] for a in clusters) == result.data["dedupe"]["n_structures"]
    top = result.data["top_clusters"][0]
    assert clusters[0].info["run_id"] == top["representative"] and clusters[0].info["hits"] == top["hits"]
    assert clusters[0].get_stress().shape == (6,)
    records = {r.run_id: r for r in carbon_search.records}
    assert np.allclose(clusters[0].positions, records[top["representative"]].positions)
    structures = result.structures()
    assert all(isinstance(st, Structure) for st in structures)
    assert structures[0].composition.reduced_formula == "C"
    db = ase.db.connect(carbon_search.path / "results.db")
    assert db.count(representative=True) == len(clusters)


def test_export_copies_a_shipped_model(tmp_path):
    pot = rmsearch.export(CARBON, tmp_path / "carbon")
    assert pot.backend == "uf3" and pot.elements == ["C"] and (tmp_path / "carbon" / "potential.json").is_file()
    with pytest.raises(RMError, match="already exists"):
        rmsearch.export(CARBON, tmp_path / "carbon")
    out = rmsearch.relax_atoms(rattled_diamond(3.6, seed=6), tmp_path / "carbon", fmax=0.01)
    assert out.status == "converged"
