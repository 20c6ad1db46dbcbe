"""The public Python API: ``rmsearch.Calculator`` (ASE calculator of any potential
directory), ``rmsearch.relax_atoms`` and the ``rmsearch relax`` command."""

from __future__ import annotations

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


def test_relax_command_refuses_elements_the_potential_lacks(tmp_path):
    src = tmp_path / "si.extxyz"
    write(src, bulk("Si", "diamond", a=5.43))
    proc = _cli("relax", str(src), "--potential", CARBON, "-o", str(tmp_path / "out.extxyz"))
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "Si" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.extxyz").exists()
