"""Export of a MACE model to a potential directory, and LAMMPS-vs-MACECalculator parity.

Parity uses randomly initialised small MACE models built here (no training needed): the
check is that LAMMPS (fix external + the lower-triangular cell rotation + virial
conversion) reproduces MACECalculator, whatever the weights.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from click.testing import CliRunner

from rmdata.errors import RMError

warnings.filterwarnings("ignore", category=UserWarning)


def build_random_mace(path, zs=(6,), r_max=4.0, seed=0, nan=False):
    """Save a randomly initialised one-layer MACE model (float64) for elements ``zs``."""
    import torch  # noqa: I001 - mace before e3nn: mace sets up torch.load for e3nn
    from mace import modules
    from e3nn import o3

    torch.manual_seed(seed)  # torch module initialisation has no generator argument
    model = modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=1, num_elements=len(zs), hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu,
        atomic_energies=np.zeros(len(zs)), avg_num_neighbors=10.0, atomic_numbers=list(zs),
        correlation=2, radial_type="bessel", atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    ).double()
    if nan:
        with torch.no_grad():
            next(p for p in model.parameters() if p.numel() > 1).fill_(float("nan"))
    torch.save(model, path)
    return path


@pytest.fixture(scope="module")
def random_model_lis(tmp_path_factory):
    return build_random_mace(tmp_path_factory.mktemp("m") / "lis.model", zs=(3, 16), seed=1)


def _lis_training(path):
    """Two unperturbed Li-S crystals plus a perturbed frame (ignored by the volume fit)."""
    from ase.io import write

    li = bulk("Li", "bcc", a=3.44, cubic=True)  # 2 atoms, 20.35 A^3/atom
    li2s = Atoms("Li2S", scaled_positions=[[0.25, 0.25, 0.25], [0.75, 0.75, 0.75], [0, 0, 0]],
                 cell=np.eye(3) * 4.0, pbc=True)  # 64 A^3 for Li2S
    noisy = li2s.copy()
    noisy.cell *= 1.3
    frames = []
    for atoms, level, strain in ((li, 0, 0.0), (li2s, 0, 0.0), (noisy, 3, 0.1)):
        atoms = atoms.copy()
        atoms.info.update(noise_level=level, strain=strain)
        atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def test_export_parity_and_volumes(random_model_lis, tmp_path):
    """LAMMPS reproduces MACECalculator to 1e-6 on a skewed two-element cell; volumes by LSQ."""
    from mace.calculators import MACECalculator

    from rmsearch.potentials import export_potential, load_potential
    from rmsearch.engine import LammpsEngine

    training = _lis_training(tmp_path / "train.xyz")
    pot = export_potential(random_model_lis, tmp_path / "pot", training=training)
    meta = json.loads((tmp_path / "pot" / "potential.json").read_text())
    assert meta["backend"] == "mace" and meta["elements"] == ["Li", "S"]
    assert meta["verification"]["forces_eV_per_A"] < 1e-6
    assert meta["verification"]["stress_eV_per_A3"] < 1e-6
    assert meta["verification"]["max_force_eV_per_A"] > 1e-3  # a real, non-trivial check
    # Li: 2 v_Li = 40.70; Li2S: 2 v_Li + v_S = 64  ->  v_Li = 20.35, v_S = 23.30
    assert pot.volumes["Li"] == pytest.approx(3.44**3 / 2, rel=1e-4)
    assert pot.volumes["S"] == pytest.approx(64 - 3.44**3, rel=1e-4)
    assert meta["volumes_source"].startswith("least squares on 2 ")
    assert (tmp_path / "pot" / "potential.in").read_text().count("fix_modify") == 1
    assert load_potential(tmp_path / "pot").cutoff == pytest.approx(4.0)

    # an independent structure: left-handed, strongly skewed cell, S-rich, rattled
    rng = np.random.default_rng(3)
    cell = np.array([[4.1, 0.3, -0.4], [1.6, 3.9, 0.2], [-0.9, 1.1, 4.4]])[[1, 0, 2]]
    assert np.linalg.det(cell) < 0
    atoms = Atoms("LiS3Li2", scaled_positions=rng.random((6, 3)), cell=cell, pbc=True)
    engine = LammpsEngine(pot, dtype="float64")
    try:
        e, f, s = engine.compute(atoms.positions, cell, atoms.numbers, True)
    finally:
        engine.close()
    ref = atoms.copy()
    ref.calc = MACECalculator(model_paths=str(random_model_lis), device="cpu", default_dtype="float64")
    assert e == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    assert np.abs(f - ref.get_forces()).max() < 1e-6
    assert np.abs(s - ref.get_stress(voigt=False)).max() < 1e-6
    assert np.abs(ref.get_forces()).max() > 1e-3


def test_export_covalent_fallback_and_errors(random_model_lis, tmp_path):
    """A molecule-only training set gives covalent-radius volumes and says so; bad input -> RMError."""
    from ase.io import write

    from rmsearch.potentials import covalent_volume, export_potential

    mol = Atoms("LiS", positions=[[0, 0, 0], [2.1, 0, 0]])
    mol.info["noise_level"] = 0
    write(tmp_path / "mol.xyz", [mol], format="extxyz")
    pot = export_potential(random_model_lis, tmp_path / "pot", training=tmp_path / "mol.xyz",
                           verify=False)
    assert pot.volumes["S"] == pytest.approx(covalent_volume("S"))
    assert "covalent radii" in pot.meta["volumes_source"]
    assert "verification" not in pot.meta
    with pytest.raises(RMError, match="already exists"):
        export_potential(random_model_lis, tmp_path / "pot")
    with pytest.raises(RMError, match="not found"):
        export_potential(tmp_path / "missing.model", tmp_path / "pot2")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(RMError, match="cannot load"):
        export_potential(tmp_path / "junk.model", tmp_path / "pot3")
    assert not (tmp_path / "pot3").exists()


def test_export_cli(random_model_lis, tmp_path):
    """``rmsearch export`` writes the directory and reports the self-check; errors are one line."""
    from rmsearch.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["export", str(random_model_lis), "--out", str(tmp_path / "pot")])
    assert res.exit_code == 0, res.output
    assert "self-check vs MACECalculator" in res.output and "covalent radii" in res.output
    res = runner.invoke(main, ["export", str(random_model_lis), "--out", str(tmp_path / "pot")])
    assert res.exit_code == 2 and res.output.startswith("error:") and "--overwrite" in res.output


def test_load_potential_errors(tmp_path):
    from rmsearch.potentials import load_potential

    with pytest.raises(RMError, match="rmsearch export"):
        load_potential(tmp_path)
    (tmp_path / "potential.json").write_text(json.dumps({"backend": "mace"}))
    with pytest.raises(RMError, match="'elements' missing"):
        load_potential(tmp_path)


def test_lammps_cell_rotation():
    """The QR rotation gives LAMMPS' lower-triangular frame and preserves the lattice metric."""
    from rmsearch.engine import lammps_cell

    rng = np.random.default_rng(0)
    for _ in range(20):
        cell = rng.normal(size=(3, 3)) + 3 * np.eye(3)
        if np.linalg.det(cell) < 0:
            cell = -cell
        cell_l, q = lammps_cell(cell)
        assert np.allclose(np.triu(cell_l, 1), 0) and (np.diag(cell_l) > 0).all()
        assert np.allclose(cell_l @ cell_l.T, cell @ cell.T)
        assert np.allclose(q @ q.T, np.eye(3))
