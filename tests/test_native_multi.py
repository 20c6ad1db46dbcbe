"""Multi-element native SNAP (``rmsearch fit-native --kind snap`` on binaries and molecules).

- exactness: labels of a known two-element SNAP (random coefficients, per-element blocks)
  on rocksalt cells and on non-periodic Na2Cl2 clusters are fitted back to 1e-8;
- LAMMPS parity of the fitted pair style with the fit's own predictions <= 1e-6 eV/A on a
  rocksalt cell and on a molecule;
- a 5 %-strained rocksalt NaCl relaxes back within 1 %;
- the NaCl one-shot: linear SNAP with contact-scaled ZBL cores fitted on one rocksalt cell
  finds rocksalt as the lowest valid structure of a 60-run search of 2-8 atoms;
- a rattled molecule of the offline set relaxes back to its reference (RMSD < 0.05 A) with a
  potential fitted on molecules;
- launch refuses an element the potential lacks before any run; UF3 on the binary, taught
  by SNAP searching the training composition.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from rmdata.errors import RMError

os.environ.setdefault("OMP_NUM_THREADS", "1")

A_NACL = 5.64  # A, rocksalt NaCl lattice constant of the test cell
ELEMENTS = ["Cl", "Na"]  # fit_native's type order (sorted symbols)


def _rocksalt(rng: np.random.Generator, strain: float = 0.05, rattle: float = 0.2) -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=A_NACL, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + strain * (rng.random((3, 3)) - 0.5)), scale_atoms=True)
    atoms.positions += rattle * (rng.random(atoms.positions.shape) - 0.5)
    return atoms


def _cluster(rng: np.random.Generator) -> Atoms:
    atoms = Atoms("Na2Cl2", positions=[[0, 0, 0], [2.8, 2.8, 0], [2.8, 0, 0], [0, 2.8, 0]], pbc=False)
    atoms.positions += 0.3 * (rng.random(atoms.positions.shape) - 0.5)
    return atoms


def _labelled(potential, frames: list[Atoms]) -> list[Atoms]:
    """``frames`` with REF_forces (and REF_stress of the crystals) from ``potential`` in LAMMPS."""
    from rmsearch.engine import LammpsEngine

    engine = LammpsEngine(potential, core_repulsion=None)
    for atoms in frames:
        periodic = bool(atoms.pbc.all())
        _, forces, stress = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, periodic)
        atoms.arrays["REF_forces"] = forces
        if periodic:
            atoms.info["REF_stress"] = stress.ravel()
    engine.close()
    return frames


@pytest.mark.parametrize("quadratic", [False, True])
def test_known_two_element_snap_is_fitted_back(tmp_path, quadratic):
    """Labels of a known Na-Cl SNAP (random per-element coefficients, no core) on strained,
    rattled rocksalt cells and non-periodic Na2Cl2 clusters are fitted back: coefficients
    to 1e-8 (relative) and forces and stresses to 1e-8 (float64 labels, no file round trip)."""
    from rmsearch.fitting import design_matrix, errors, fit_beta, native_potential
    from rmsearch.snap import SnapSettings

    settings = SnapSettings(twojmax=2, rcut=4.0, quadratic=quadratic, alpha=0.0, zbl_outer=0.0)
    assert settings.n_columns(ELEMENTS) == 2 * (5 + (15 if quadratic else 0))
    rng = np.random.default_rng(1)
    beta = rng.normal(size=settings.n_columns(ELEMENTS)) * 0.05
    settings.write_model(tmp_path, ELEMENTS, beta)
    text = (tmp_path / "Cl-Na.snapcoeff").read_text().splitlines()
    assert text[2].split() == ["2", str(beta.size // 2 + 1)]  # two elements, beta0 + block each
    assert text[3].split()[0] == "Cl" and text[3 + beta.size // 2 + 2].split()[0] == "Na"
    potential = native_potential(tmp_path, settings, ELEMENTS, {"Na": 20.0, "Cl": 25.0})
    frames = _labelled(potential, [_rocksalt(rng) for _ in range(6)] + [_cluster(rng) for _ in range(4)])
    dm = design_matrix(frames, settings, ELEMENTS)
    assert (dm.kind == 1).sum() == 6 * 6  # stress rows for the crystals only
    every = np.ones(len(frames), dtype=bool)
    fitted = fit_beta(dm, settings, every)
    assert np.abs(fitted - beta).max() < 1e-8 * np.abs(beta).max()
    err = errors(dm, fitted, settings, every)
    scale = np.abs(dm.label).max()
    assert err["force_rmse_eV_per_A"] < 1e-8 * scale and err["stress_rmse_eV_per_A3"] < 1e-8 * scale, err


def test_streamed_normal_equations_equal_the_in_memory_fit(tmp_path, monkeypatch):
    """The streamed solver (normal equations accumulated per block of frames, frames grouped
    by their elements) gives the in-memory SVD fit's coefficients to 1e-9 (relative) on
    crystals and molecules, the same bytes with 1 or 2 worker processes, reports errors on
    the frames it kept, and a teacher refuses its streamed rows in one line."""
    from rmsearch import fitting
    from rmsearch.distill import distill
    from rmsearch.fitting import (FitProblem, design_matrix, errors, fit_beta, report_frames,
                                  streamed_design)
    from rmsearch.snap import SnapSettings
    from rmsearch.uf3 import UF3Settings

    rng = np.random.default_rng(3)
    frames = [_rocksalt(rng) for _ in range(5)] + [_cluster(rng) for _ in range(6)]
    frames += [Atoms("Na3", positions=rng.random((3, 3)) * 3.0, pbc=False) for _ in range(3)]
    for atoms in frames:  # any labels do: both solvers fit the same least-squares problem
        atoms.arrays["REF_forces"] = rng.normal(size=(len(atoms), 3))
        if atoms.pbc.all():
            atoms.info["REF_stress"] = rng.normal(size=6) * 0.01
    held = np.zeros(len(frames), bool)
    held[[2, 7]] = True
    monkeypatch.setattr(fitting, "STREAM_BLOCK", 4)  # several blocks, of different elements
    monkeypatch.setattr(fitting, "STREAM_REPORT_FRAMES", 3)
    for settings in (SnapSettings(twojmax=4, rcut=4.0, alpha=1e-3), UF3Settings(rc2=4.5, rc3=3.0, n3=2)):
        full = design_matrix(frames, settings, ELEMENTS)
        beta = fit_beta(full, settings, ~held)
        kept = report_frames(len(frames), held, 0)
        assert kept[:3].all() and kept[held].all() and (kept & ~held).sum() <= 3 + 3
        one = streamed_design(frames, settings, ELEMENTS, ~held, kept, workers=1)
        two = streamed_design(frames, settings, ELEMENTS, ~held, kept, workers=2)
        assert one.normal.rows == int(full.subset(~held).sum())
        b1, b2 = fit_beta(one, settings, ~held), fit_beta(two, settings, ~held)
        assert b1.tobytes() == b2.tobytes()
        assert np.abs(b1 - beta).max() < 1e-9 * np.abs(beta).max(), type(settings).__name__
        # errors on the kept frames equal the in-memory ones on the same frames
        mask = ~held & kept
        assert errors(one, b1, settings, ~held)["n_frames"] == mask.sum() < (~held).sum()
        assert errors(one, b1, settings, ~held)["force_rmse_eV_per_A"] == pytest.approx(
            errors(full, beta, settings, mask)["force_rmse_eV_per_A"], rel=1e-8)
    with pytest.raises(RMError, match="streams them.*--solver svd") as exc:
        distill(FitProblem("x.xyz", frames, ~held, one, settings, ELEMENTS, tmp_path))
    assert "\n" not in str(exc.value)
    with pytest.raises(RMError, match="--solver qr: choose one of auto, svd, normal"):
        SnapSettings(solver="qr")


@pytest.fixture(scope="module")
def nacl_data(tmp_path_factory):
    """An rmdata file of one rocksalt NaCl cell (8 atoms) with the native recipe's strains and copies."""
    from rmdata.make import make_dataset
    from rmsearch.native import NATIVE_COPIES, NATIVE_STRAINS

    d = tmp_path_factory.mktemp("nacl")
    write(d / "nacl.cif", bulk("NaCl", "rocksalt", a=A_NACL, cubic=True))
    make_dataset(d / "nacl.xyz", input_path=str(d / "nacl.cif"), seed=0, workers=1,
                 strains=list(NATIVE_STRAINS), copies=NATIVE_COPIES)
    return d / "nacl.xyz"


@pytest.fixture(scope="module")
def nacl_pot(nacl_data):
    """Quadratic SNAP (2J = 6, rcut 5 A, ZBL core per pair) fitted on the NaCl cell."""
    from rmsearch.native import fit_native
    from rmsearch.snap import SnapSettings

    out = nacl_data.parent / "pot"
    report = fit_native(nacl_data, out, settings=SnapSettings(rcut=5.0))
    assert report["elements"] == ELEMENTS and report["n_coefficients"] == 2 * 495
    return out


def _parity(potdir, frames: list[Atoms]) -> float:
    """Largest |LAMMPS - fit prediction| of forces (eV/A) and stresses (eV/A^3) on ``frames``."""
    import json

    from rmsearch.engine import LammpsEngine
    from rmsearch.fitting import design_matrix, predict
    from rmsearch.potentials import load_potential
    from rmsearch.snap import SnapSettings

    fit = json.loads((potdir / "fit.json").read_text())
    settings = SnapSettings(**fit["settings"])
    pot = load_potential(potdir)
    stem = "-".join(pot.elements)
    lines = [x for x in (potdir / f"{stem}.snapcoeff").read_text().splitlines() if x.strip() and x[0] != "#"]
    ne, ncoef = (int(x) for x in lines[0].split())
    beta = np.concatenate([np.array(lines[2 + e * (ncoef + 1):1 + (e + 1) * (ncoef + 1)], dtype=float)[1:]
                           for e in range(ne)])  # per element: its line, beta0 (dropped), its block
    for atoms in frames:  # design_matrix wants labels; predictions do not use them
        atoms.arrays.setdefault("REF_forces", np.zeros((len(atoms), 3)))
        if atoms.pbc.all():
            atoms.info.setdefault("REF_stress", np.zeros(9))
    dm = design_matrix(frames, settings, pot.elements)
    engine = LammpsEngine(pot, core_repulsion=None)
    worst = 0.0
    for k, atoms in enumerate(frames):
        f_fit, s_fit = predict(dm, beta, settings, k)
        periodic = bool(atoms.pbc.all())
        _, f, s = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, periodic)
        worst = max(worst, float(np.abs(f - f_fit).max()), float(np.abs(s - s_fit).max()) if periodic else 0.0)
    engine.close()
    return worst


def test_rocksalt_parity_and_strained_rocksalt_relaxes_back(nacl_pot):
    """pair_style hybrid/overlay zbl ... snap in LAMMPS gives the fit's forces and stresses on a
    rattled rocksalt cell (<= 1e-6 eV/A), and +-5 % strained rocksalt relaxes back within 1 %."""
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer, RelaxSettings

    rng = np.random.default_rng(3)
    assert _parity(nacl_pot, [_rocksalt(rng, rattle=0.1) for _ in range(2)]) <= 1e-6
    with Relaxer(load_potential(nacl_pot), RelaxSettings(fmax=0.005, smax_gpa=0.05)) as relaxer:
        for factor in (1.05, 0.95):
            atoms = bulk("NaCl", "rocksalt", a=A_NACL * factor, cubic=True)
            atoms.positions += 0.02 * (rng.random(atoms.positions.shape) - 0.5)
            out = relaxer.relax(atoms)
            assert out.converged, out.status
            a = out.atoms.get_volume() ** (1 / 3)
            assert abs(a / A_NACL - 1) < 0.01, (factor, a)


def test_contact_scaled_cores_follow_the_references(nacl_data):
    """With --zbl-contacts each pair's ZBL radii are its shortest reference distance (rocksalt:
    Na-Cl a/2, Na-Na and Cl-Cl a/sqrt 2) times the C-C ratio; covalent scaling otherwise."""
    import rmdata
    from rmsearch.fitting import reference_contacts, zbl_radii
    from rmsearch.snap import SnapSettings

    contacts = reference_contacts(rmdata.read(nacl_data))
    assert contacts["Cl-Na"] == pytest.approx(A_NACL / 2, abs=1e-6)
    assert contacts["Cl-Cl"] == pytest.approx(A_NACL / 2**0.5, abs=1e-6) == contacts["Na-Na"]
    on = SnapSettings(zbl_contacts=True, pair_lengths=contacts)
    inner, outer = zbl_radii(on, "Na", "Na")
    assert outer == pytest.approx(1.2 * A_NACL / 2**0.5 / 1.52, abs=1e-5) and inner / outer == pytest.approx(2 / 3)
    assert zbl_radii(SnapSettings(), "Na", "Na")[1] == pytest.approx(1.2 * 2 * 1.66 / 1.52, abs=1e-5)


def test_nacl_one_shot_finds_rocksalt_lowest(nacl_data, tmp_path):
    """The one-shot binary (README, native recipe table): a linear SNAP (rcut 5 A) with
    contact-scaled cores fitted on one 8-atom rocksalt cell; 60 random NaCl starts of 2-8
    atoms; the lowest valid structure is rocksalt (StructureMatcher, default tolerances)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    import rmsearch
    from rmsearch.native import fit_native
    from rmsearch.snap import SnapSettings

    pot = tmp_path / "pot"
    fit_native(nacl_data, pot, settings=SnapSettings(rcut=5.0, quadratic=False, zbl_contacts=True))
    run = rmsearch.search(pot, out=tmp_path / "run", nruns=60, composition="NaCl", natoms="2-8", seed=0,
                          workers=2)
    result = run.analyze()
    best = result.structures()[0]
    rocksalt = AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=A_NACL))
    assert StructureMatcher(scale=True).fit(best, rocksalt), result.clusters[0].info
    assert result.data["status_counts"].get("converged", 0) >= 55


def test_fit_native_cli_on_molecules(tmp_path):
    """``rmsearch fit-native --kind snap`` on a few offline molecules (C, H; no stress rows):
    LAMMPS parity on a molecule <= 1e-6 eV/A, and rattled (+-0.1 A) methane and ethane relax
    back to their reference geometry (RMSD < 0.05 A after alignment)."""
    from click.testing import CliRunner

    import rmdata
    from rmdata.make import make_dataset
    from rmsearch.cli import main
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer, RelaxSettings

    data = tmp_path / "mol.xyz"
    make_dataset(data, "molecules", limit=6, seed=0, workers=1, levels=[0, 1, 2, 3, 4], copies=2)
    res = CliRunner().invoke(main, ["fit-native", str(data), "--kind", "snap", "--rcut", "4", "-o",
                                    str(tmp_path / "pot")])
    assert res.exit_code == 0, res.output
    frames = rmdata.read(data)
    assert not frames[0].pbc.any()
    assert _parity(tmp_path / "pot", [frames[-1], frames[len(frames) // 2]]) <= 1e-6
    refs = {f.get_chemical_formula(): f for f in frames if f.info.get("noise_level") == 0.0}
    rng = np.random.default_rng(0)
    with Relaxer(load_potential(tmp_path / "pot"), RelaxSettings(fmax=0.005)) as relaxer:
        for formula in ("CH4", "C2H6"):
            ref = refs[formula]
            atoms = Atoms(ref.numbers, ref.positions + rng.uniform(-0.1, 0.1, ref.positions.shape))
            out = relaxer.relax(atoms)
            assert out.converged, out.status
            p = out.atoms.positions - out.atoms.positions.mean(0)
            q = ref.positions - ref.positions.mean(0)
            u, _, vt = np.linalg.svd(p.T @ q)
            rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
            rmsd = float(np.sqrt(((p @ rot - q) ** 2).sum(1).mean()))
            assert rmsd < 0.05, (formula, rmsd)


def test_launch_refuses_an_element_the_potential_lacks(nacl_pot, tmp_path):
    """``launch`` with the Na-Cl potential and K in the composition: a one-line error naming K,
    before any run (no run directory)."""
    from rmsearch.runner import launch

    with pytest.raises(RMError, match="K.*not among the potential's elements") as exc:
        launch(tmp_path / "run", potential=nacl_pot, nruns=2, workers=1, progress=False,
               composition="KCl", natoms="2-4", seed=0)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()


def test_uf3_on_two_elements_taught_by_snap_and_memory_bound(nacl_data, tmp_path, monkeypatch):
    """UF3 on a binary, taught by SNAP: the teacher searches the training composition (NaCl),
    LAMMPS reads the two-element file and matches the fit (<= 1e-6 eV/A); a fit whose design
    matrix exceeds the available memory: a one-line error naming the kind's own options,
    before any descriptor."""
    import json

    from rmsearch import fitting
    from rmsearch.distill import DistillSettings
    from rmsearch.native import fit_native
    from rmsearch.uf3 import UF3Settings

    report = fit_native(nacl_data, tmp_path / "uf3", settings=UF3Settings(rc2=5.0, rc3=3.0, n3=2),
                        teacher=DistillSettings(rounds=1, teacher_starts=4, natoms="2-4"))
    assert report["elements"] == ELEMENTS and (tmp_path / "uf3" / "ClNa.uf3").is_file()
    assert report["verification"]["forces_eV_per_A"] <= 1e-6
    assert report["distillation"]["teacher_frames"] > 0
    teacher = json.loads((tmp_path / "uf3" / "teacher" / "fit.json").read_text())
    assert teacher["settings"]["rcut"] == 5.0  # the student's two-body reach
    monkeypatch.setattr(fitting, "available_memory", lambda: 1 << 20)
    for kind, hint in (("snap", "--linear"), ("uf3", "--n3")):
        with pytest.raises(RMError, match=f"GiB.*{hint}") as exc:
            fit_native(nacl_data, tmp_path / kind, kind=kind, overwrite=True)
        assert "\n" not in str(exc.value)
    assert not (tmp_path / "snap").exists()


def test_teacher_searches_the_training_compositions():
    """The distillation's searches: a crystal's reduced formula with at least one formula unit,
    a molecule's formula as a molecule, each once."""
    from ase.build import molecule

    from rmsearch.distill import training_specs

    frames = [bulk("NaCl", "rocksalt", a=A_NACL, cubic=True), molecule("CH4"), molecule("CH4"),
              bulk("Si", "diamond", a=5.43) * (2, 1, 1)]
    frames[1].pbc = frames[2].pbc = False
    volumes = {"Na": 20.0, "Cl": 25.0, "C": 6.0, "H": 5.0, "Si": 20.0}
    specs = training_specs(frames, "2-8", volumes)
    assert [(s.mode, s.formula, s.natoms) for s in specs] == [
        ("composition", "ClNa", (2, 8)), ("molecule", "CH4", (2, 12)), ("composition", "Si", (2, 8))]
    assert training_specs([bulk("NaCl", "rocksalt", a=A_NACL)], "1-1", volumes)[0].natoms == (2, 2)
