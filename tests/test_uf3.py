"""UF3 features (rmsearch.uf3) against LAMMPS ``pair_style uf3``, and UF3 fits (fit-native --kind uf3).

- the numpy feature rows times any coefficients equal LAMMPS' energy, forces and stress
  to 1e-9 (rattled triclinic cell), and LAMMPS' forces are minus the gradient of its energy
  (finite differences), so the features are the true derivatives of the model;
- labels made by a known UF3 potential are fitted back exactly;
- the CLI writes a potential directory that recommends the in-LAMMPS minimiser.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from click.testing import CliRunner

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _potential(directory: Path, coef: np.ndarray, basis):
    from rmsearch.potentials import load_potential
    from rmsearch.uf3 import write_potential

    directory.mkdir(parents=True, exist_ok=True)
    write_potential(directory / "C.uf3", "C", coef, basis)
    (directory / "potential.json").write_text(json.dumps({
        "backend": "uf3", "elements": ["C"], "cutoff": basis.rc2, "pair_style": "uf3 3",
        "pair_coeff": ["* * {potdir}/C.uf3 C"], "volumes": {"C": 5.67}, "callback": None}))
    return load_potential(directory)


def _frames(n_frames: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_frames):
        atoms = bulk("C", "diamond", a=3.567, cubic=True)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.08 * (rng.random((3, 3)) - 0.5)), scale_atoms=True)
        atoms.positions += 0.3 * (rng.random(atoms.positions.shape) - 0.5)
        out.append(atoms)
    return out


def _teacher(basis, seed=1) -> np.ndarray:
    """Smooth random coefficients: a repulsive-looking two-body part and a small three-body part."""
    rng = np.random.default_rng(seed)
    coef = np.zeros(basis.n_columns)
    coef[: basis.free2] = np.linspace(2.0, -0.2, basis.free2) + 0.05 * rng.normal(size=basis.free2)
    coef[basis.free2:] = 0.02 * rng.normal(size=basis.n_columns - basis.free2)
    return coef


def test_features_equal_lammps_and_are_the_gradient(tmp_path):
    from rmsearch.engine import LammpsEngine
    from rmsearch.uf3 import UF3Basis, energy_row, feature_rows

    basis = UF3Basis(rc2=3.2, n2=10, rc3=2.4, n3=5, n3jk=5)
    coef = _teacher(basis)
    engine = LammpsEngine(_potential(tmp_path / "pot", coef, basis))
    for atoms in _frames(3, seed=2):
        f_rows, w_rows = feature_rows(atoms, basis)
        energy, forces, stress = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
        scale = max(1.0, np.abs(forces).max())
        assert abs(energy_row(atoms, basis) @ coef - energy) < 1e-9 * max(1.0, abs(energy))
        assert np.abs((f_rows @ coef).reshape(-1, 3) - forces).max() < 1e-9 * scale
        assert np.abs(-(w_rows @ coef) / atoms.get_volume() - stress).max() < 1e-9 * scale
        # LAMMPS' forces are -dE/dx of its own energy: the file is read as the features assume
        h = 1e-5
        for atom, axis in ((0, 0), (3, 2), (6, 1)):
            pos = atoms.positions.copy()
            pos[atom, axis] += h
            ep = engine.compute(pos, np.asarray(atoms.cell), atoms.numbers, True)[0]
            pos[atom, axis] -= 2 * h
            em = engine.compute(pos, np.asarray(atoms.cell), atoms.numbers, True)[0]
            assert abs(-(ep - em) / (2 * h) - forces[atom, axis]) < 1e-6 * scale
    engine.close()


def test_coefficient_arrays_are_symmetric_with_zero_tails():
    from rmsearch.uf3 import TRAILING_ZEROS, UF3Basis, coefficients

    basis = UF3Basis(rc2=3.0, n2=8, rc3=2.2, n3=5, n3jk=4)
    c2, c3 = coefficients(np.arange(1.0, basis.n_columns + 1), basis)
    assert c2.shape == (basis.nb2,) and np.all(c2[-TRAILING_ZEROS:] == 0) and np.all(c2[:-TRAILING_ZEROS] > 0)
    assert c3.shape == (basis.nb3, basis.nb3, basis.nb3jk)
    assert np.array_equal(c3, c3.transpose(1, 0, 2))
    assert np.all(c3[-TRAILING_ZEROS:] == 0) and np.all(c3[:, -TRAILING_ZEROS:] == 0)
    assert np.count_nonzero(c3) == basis.n_columns - basis.free2 + \
        (basis.free3 * (basis.free3 - 1) // 2) * basis.nb3jk  # off-diagonal pairs stored twice


def test_fit_recovers_a_known_uf3_potential(tmp_path):
    """Forces and stresses of a known UF3 potential are fitted back exactly (no ridge, no core)."""
    from rmsearch.engine import LammpsEngine
    from rmsearch.native import fit_native
    from rmsearch.uf3 import UF3Basis, UF3Settings

    settings = UF3Settings(rc2=3.2, n2=10, rc3=2.4, n3=5, n3jk=5, alpha=0.0, zbl_outer=0.0, holdout=0.25)
    basis = UF3Basis(rc2=3.2, n2=10, rc3=2.4, n3=5, n3jk=5)
    coef = _teacher(basis)
    teacher = LammpsEngine(_potential(tmp_path / "teacher", coef, basis))
    frames = _frames(24, seed=3)
    for atoms in frames:
        _, forces, stress = teacher.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
        atoms.arrays["REF_forces"] = forces
        atoms.info["REF_stress"] = stress.ravel()
    teacher.close()
    write(tmp_path / "teacher.xyz", frames, format="extxyz")
    report = fit_native(tmp_path / "teacher.xyz", tmp_path / "fit", settings=settings, teacher=False)
    assert report["kind"] == "uf3" and "distillation" not in report
    for split in ("train", "holdout"):  # held-out too (same model class); extxyz keeps ~1e-8 eV/A
        assert report[split]["force_rmse_eV_per_A"] < 1e-6, report[split]
        assert report[split]["stress_rmse_eV_per_A3"] < 1e-7, report[split]
    assert report["verification"]["forces_eV_per_A"] < 1e-9


def test_fit_native_cli_uf3_recommends_lammps_minimiser(tmp_path):
    from rmdata.make import make_dataset
    from rmsearch.cli import main
    from rmsearch.potentials import load_potential
    from rmsearch.relax import resolve_optimizer

    data = tmp_path / "diamond.xyz"
    make_dataset(data, "diamond", seed=0, workers=1)
    res = CliRunner().invoke(main, ["fit-native", str(data), "--kind", "uf3", "-o", str(tmp_path / "pot"),
                                    "--rounds", "1", "--distil-starts", "6", "--distil-natoms", "2-4"])
    assert res.exit_code == 0, res.output
    assert "self-check LAMMPS pair style vs fit" in res.output and "teacher: quadratic SNAP" in res.output
    pot = load_potential(tmp_path / "pot")
    assert pot.pair_style == "hybrid/overlay zbl 0.8 1.2 uf3 3"
    assert resolve_optimizer("auto", pot) == "lammps-cg"
    assert resolve_optimizer("fire2", pot) == "fire2"
    fit = json.loads((tmp_path / "pot" / "fit.json").read_text())
    assert fit["verification"]["forces_eV_per_A"] < 1e-6 and fit["settings"]["rc3"] == 2.2
    # the teacher: a SNAP potential directory fitted on the same training split (held-out frames
    # stay held out), and the options reached the distillation
    teacher = json.loads((tmp_path / "pot" / "teacher" / "fit.json").read_text())
    assert teacher["kind"] == "snap" and teacher["holdout_frames"] == fit["holdout_frames"]
    assert load_potential(tmp_path / "pot" / "teacher").pair_style.endswith("snap")
    d = fit["distillation"]
    assert d["settings"]["teacher_starts"] == 6 and d["settings"]["natoms"] == "2-4" and len(d["rounds"]) == 1
    assert 0 < d["teacher_frames"] <= 6 + 6 * 3  # minima within the core range are left out
    assert not list((tmp_path / "pot").glob(".student*"))
    # the teacher's recipe is in the potential's provenance (so in its config hash)
    config = json.loads((tmp_path / "pot" / "potential.json").read_text())["provenance"]["config"]
    assert config["teacher"]["distil"]["rounds"] == 1 and config["teacher"]["snap"]["quadratic"] is True


def test_uf3_settings_reject_bad_cutoffs():
    from rmdata.errors import RMError
    from rmsearch.uf3 import UF3Settings

    with pytest.raises(RMError, match="rc3"):
        UF3Settings(rc2=2.0, rc3=2.5)
    with pytest.raises(RMError, match="n3"):
        UF3Settings(n3=0)


# ----------------------------------------------------------------------------- several elements

def _multi_teacher(layout, seed=4) -> np.ndarray:
    """Smooth random coefficients of every block: repulsive-looking pairs, small triplets."""
    rng = np.random.default_rng(seed)
    coef = 0.02 * rng.normal(size=layout.n_columns)
    pair_off, _ = layout.offsets
    f2 = layout.basis.free2
    for a, b in layout.pairs:
        coef[pair_off[a, b]: pair_off[a, b] + f2] = np.linspace(2.0, -0.2, f2) + 0.1 * rng.normal(size=f2)
    return coef


def _multi_frames(seed: int) -> list:
    """Rattled, strained rocksalt NaCl cells and rattled ClNa-containing molecules (non-periodic)."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        atoms = bulk("NaCl", "rocksalt", a=5.0, cubic=True)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.06 * (rng.random((3, 3)) - 0.5)), scale_atoms=True)
        atoms.positions += 0.3 * (rng.random(atoms.positions.shape) - 0.5)
        out.append(atoms)
        mol = Atoms("Na2Cl3", positions=[[0, 0, 0], [2.4, 0.3, 0], [1.2, 1.8, 0.2], [1.1, -1.5, 0.4],
                                          [3.3, 2.2, -0.5]], pbc=False)
        mol.positions += 0.3 * (rng.random(mol.positions.shape) - 0.5)
        out.append(mol)
    return out


def test_two_element_features_equal_lammps(tmp_path):
    """Two elements (Cl, Na): the numpy rows times random coefficients of every 2B and 3B block
    (J != K blocks full, J == K symmetric) equal LAMMPS' energy, forces and stress of the
    written file to 1e-9, on rattled rocksalt cells and on non-periodic clusters; the layout
    counts 3 pair and 6 triple blocks."""
    from rmsearch.engine import LammpsEngine, Potential
    from rmsearch.uf3 import UF3Basis, UF3Layout, energy_row, feature_rows, write_potential

    basis = UF3Basis(rc2=3.6, n2=9, rc3=3.0, n3=4, n3jk=4)
    layout = UF3Layout(basis, ("Cl", "Na"))
    assert len(layout.pairs) == 3 and len(layout.triples) == 6
    sym, full = len(basis.pairs_lm[0]) * basis.nb3jk, basis.free3 ** 2 * basis.nb3jk
    assert layout.n_columns == 3 * basis.free2 + 4 * sym + 2 * full
    coef = _multi_teacher(layout)
    write_potential(tmp_path / "ClNa.uf3", ["Cl", "Na"], coef, basis)
    pot = Potential(directory=tmp_path, backend="uf3", elements=["Cl", "Na"], cutoff=basis.rc2,
                    volumes={}, pair_style="uf3 3", pair_coeff=[f"* * {tmp_path}/ClNa.uf3 Cl Na"])
    engine = LammpsEngine(pot, core_repulsion=None)
    try:
        for atoms in _multi_frames(5):
            crystal = bool(atoms.pbc.all())
            f_rows, w_rows = feature_rows(atoms, layout)
            energy, forces, stress = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers,
                                                    crystal)
            scale = max(1.0, np.abs(forces).max())
            assert abs(energy_row(atoms, layout) @ coef - energy) < 1e-9 * max(1.0, abs(energy))
            assert np.abs((f_rows @ coef).reshape(-1, 3) - forces).max() < 1e-9 * scale
            if crystal:
                assert np.abs(-(w_rows @ coef) / atoms.get_volume() - stress).max() < 1e-9 * scale
    finally:
        engine.close()


def test_known_two_element_uf3_is_fitted_back(tmp_path):
    """Labels (forces, and stress of the crystals) of a known Cl-Na UF3 potential on rocksalt
    cells and clusters are fitted back to 1e-8 eV/A (no ridge, no core); the fitted file is
    ``ClNa.uf3`` and LAMMPS agrees with the fit."""
    from test_native_multi import _labelled

    from rmsearch.engine import Potential
    from rmsearch.native import fit_native
    from rmsearch.uf3 import UF3Basis, UF3Layout, UF3Settings, write_potential

    basis = UF3Basis(rc2=3.6, n2=9, rc3=3.0, n3=4, n3jk=4)
    coef = _multi_teacher(UF3Layout(basis, ("Cl", "Na")))
    write_potential(tmp_path / "ClNa.uf3", ["Cl", "Na"], coef, basis)
    pot = Potential(directory=tmp_path, backend="uf3", elements=["Cl", "Na"], cutoff=basis.rc2,
                    volumes={}, pair_style="uf3 3", pair_coeff=[f"* * {tmp_path}/ClNa.uf3 Cl Na"])
    frames = [f for seed in range(6, 16) for f in _multi_frames(seed)]
    for atoms in frames:  # positions and cells as extxyz keeps them (8 decimals), so labels stay exact
        atoms.set_cell(np.round(np.asarray(atoms.cell), 8))
        atoms.positions = np.round(atoms.positions, 8)
    frames = _labelled(pot, frames)
    write(tmp_path / "labels.xyz", frames, format="extxyz")
    settings = UF3Settings(rc2=3.6, n2=9, rc3=3.0, n3=4, n3jk=4, alpha=0.0, zbl_outer=0.0, holdout=0.2)
    report = fit_native(tmp_path / "labels.xyz", tmp_path / "fit", settings=settings, teacher=False)
    assert report["elements"] == ["Cl", "Na"]
    scale = np.sqrt(np.mean(np.concatenate([f.arrays["REF_forces"].ravel() for f in frames]) ** 2))
    for split in ("train", "holdout"):  # labels in extxyz: 8 decimals
        assert report[split]["force_rmse_eV_per_A"] < 1e-8 * scale, (report[split], scale)
    assert report["verification"]["forces_eV_per_A"] < 1e-8
    assert (tmp_path / "fit" / "ClNa.uf3").is_file()
