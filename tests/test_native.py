"""Native potentials fitted on rmdata labels (rmsearch.native, rmsearch.fitting, rmsearch.snap, ``rmsearch fit-native``); SNAP here, UF3 features in test_uf3.py.

- exactness: labels made by a known SNAP potential are fitted back to its coefficients;
- ``pair_style snap`` in LAMMPS reproduces the fit's own predictions;
- a 5 %-strained diamond relaxes back to the reference lattice constant within 1 %;
- the diamond one-shot search (quick size) with each native potential finds cubic diamond.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from click.testing import CliRunner

from rmdata.errors import RMError

os.environ.setdefault("OMP_NUM_THREADS", "1")

A_DIAMOND = 3.567  # A, the diamond preset's reference lattice constant


def _teacher_frames(settings, beta, n_frames=6, seed=0):
    """Rattled, strained 8-atom diamonds labelled by a SNAP potential with coefficients ``beta``."""
    from rmsearch.fitting import pair_definition
    from rmsearch.snap import write_snap_files
    from rmsearch.potentials import load_potential
    from rmsearch.engine import LammpsEngine

    rng = np.random.default_rng(seed)
    import tempfile
    from pathlib import Path

    potdir = Path(tempfile.mkdtemp(prefix="teacher"))
    write_snap_files(potdir, ["C"], beta, settings)
    style, coeff = pair_definition(settings, ["C"])
    (potdir / "potential.json").write_text(json.dumps({
        "backend": "snap", "elements": ["C"], "cutoff": settings.rcut, "pair_style": style,
        "pair_coeff": coeff, "volumes": {"C": 5.67}, "callback": None}))
    engine = LammpsEngine(load_potential(potdir), core_repulsion=None)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("C", "diamond", a=A_DIAMOND, cubic=True)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.05 * (rng.random((3, 3)) - 0.5)), scale_atoms=True)
        atoms.positions += 0.15 * (rng.random(atoms.positions.shape) - 0.5)
        _, forces, stress = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
        atoms.arrays["REF_forces"] = forces
        atoms.info["REF_stress"] = stress.ravel()
        frames.append(atoms)
    engine.close()
    return frames


@pytest.mark.parametrize("quadratic", [False, True])
def test_fit_recovers_a_known_snap_potential(tmp_path, quadratic):
    """Labels from known coefficients are fitted back exactly (no noise, no ridge, no core):
    the coefficients themselves for linear SNAP, and for both the forces and stresses of
    held-out teacher frames (the quadratic products of 2J=2 are nearly collinear, so their
    individual coefficients are not identifiable from a few frames, only the function)."""
    from rmsearch.native import fit_native
    from rmsearch.snap import SnapSettings

    settings = SnapSettings(twojmax=2, rcut=3.0, quadratic=quadratic, alpha=0.0, zbl_outer=0.0,
                            holdout=0.25)
    ncoef = 5 + (15 if quadratic else 0)  # 2J = 2: 5 bispectrum components (+ 5*6/2 products)
    beta = np.random.default_rng(1).normal(size=ncoef) * 0.05
    data = tmp_path / "teacher.xyz"
    write(data, _teacher_frames(settings, beta, n_frames=8), format="extxyz")
    report = fit_native(data, tmp_path / "pot", settings=settings)
    fitted = np.loadtxt(tmp_path / "pot" / "C.snapcoeff", skiprows=4)
    assert fitted[0] == 0.0  # beta0: no energy rows
    if not quadratic:
        assert np.allclose(fitted[1:], beta, rtol=1e-5, atol=1e-7 * np.abs(beta).max())
    # extxyz keeps ~8 significant digits of the labels (forces ~0.1-1 eV/A); an ordinary
    # fit of rmdata labels has errors of 0.02-0.2 eV/A
    for split in ("train", "holdout"):
        assert report[split]["force_rmse_eV_per_A"] < 1e-5, report[split]
        assert report[split]["stress_rmse_eV_per_A3"] < 1e-6, report[split]
    assert report["holdout"]["n_frames"] == 2
    assert report["verification"]["forces_eV_per_A"] < 1e-9


@pytest.fixture(scope="module")
def native_pot(diamond_dataset, tmp_path_factory):
    """The default fit-native recipe on the session's rmdata diamond set, through the CLI."""
    from rmsearch.cli import main

    out = tmp_path_factory.mktemp("native") / "pot"
    res = CliRunner().invoke(main, ["fit-native", str(diamond_dataset), "--kind", "snap", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "holdout" in res.output and "self-check" in res.output
    return out


def test_pair_style_reproduces_fit_and_report(native_pot, diamond_dataset):
    """LAMMPS pair_style snap (+ core) gives the fit's forces/stress; errors stored as JSON."""
    import rmdata
    from rmsearch.fitting import design_matrix, predict
    from rmsearch.snap import SnapSettings
    from rmsearch.potentials import load_potential
    from rmsearch.engine import LammpsEngine

    fit = json.loads((native_pot / "fit.json").read_text())
    meta = json.loads((native_pot / "potential.json").read_text())
    assert meta["backend"] == "snap" and meta["callback"] is None
    for split in ("train", "holdout"):
        assert np.isfinite(fit[split]["force_rmse_eV_per_A"]) and np.isfinite(fit[split]["stress_rmse_eV_per_A3"])
    assert fit["holdout"]["n_frames"] == round(0.1 * fit["n_frames"])
    # independent check on frames the self-check did not use (it uses the first three)
    frames = rmdata.read(diamond_dataset)[-4:]
    settings = SnapSettings(**fit["settings"])
    beta = np.loadtxt(native_pot / "C.snapcoeff", skiprows=4)[1:]
    dm = design_matrix(frames, settings, ["C"])
    engine = LammpsEngine(load_potential(native_pot), core_repulsion=None)
    for k, atoms in enumerate(frames):
        f_fit, s_fit = predict(dm, beta, settings, k)
        _, f, s = engine.compute(atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
        assert np.abs(f - f_fit).max() < 1e-8 * max(1.0, np.abs(f).max())
        assert np.abs(s - s_fit).max() < 1e-8 * max(1.0, np.abs(s).max())
    engine.close()


def test_strained_diamond_relaxes_back(native_pot):
    """A 5 % expanded and a 5 % compressed diamond cell relax back to a = 3.567 A within 1 %."""
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer, RelaxSettings

    with Relaxer(load_potential(native_pot), RelaxSettings(fmax=0.005, smax_gpa=0.05)) as relaxer:
        for factor in (1.05, 0.95):
            atoms = bulk("C", "diamond", a=A_DIAMOND * factor, cubic=True)
            atoms.positions += 0.02 * (np.random.default_rng(0).random(atoms.positions.shape) - 0.5)
            out = relaxer.relax(atoms)
            assert out.converged, out.status
            a = (out.atoms.get_volume() / 8 * 8) ** (1 / 3)
            assert abs(a / A_DIAMOND - 1) < 0.01, (factor, a)


def test_bad_input_is_one_line_error(tmp_path):
    from rmsearch.cli import main

    res = CliRunner().invoke(main, ["fit-native", str(tmp_path / "missing.xyz"), "-o", str(tmp_path / "p")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "error:" in res.output
    with pytest.raises(RMError, match="--zbl"):
        from rmsearch.cli_native import _zbl

        _zbl("1.0")




@pytest.mark.parametrize("kind, nruns", [("uf3", 32), ("snap", 16)])
def test_diamond_one_shot_search_finds_cubic_diamond(tmp_path, kind, nruns):
    """Quick diamond one-shot search (C, 2-4 atoms, 32 or 16 runs) with each native potential
    (UF3 taught by its SNAP teacher, the default; SNAP alone): the lowest-energy valid
    cluster is cubic diamond (spglib 227, ~5.7 A^3/atom)."""
    from rmdata.make import make_dataset
    from rmsearch.analysis.dedupe import dedupe
    from rmsearch.symmetry import spacegroup
    from rmsearch.analysis.validity import check_validity
    from rmsearch.native import NATIVE_COPIES, NATIVE_STRAINS, fit_native
    from rmsearch.records import read_records
    from rmsearch.runner import launch

    data = tmp_path / "diamond_s20.xyz"
    make_dataset(data, "diamond", seed=0, workers=1, strains=list(NATIVE_STRAINS), copies=NATIVE_COPIES)
    fit_native(data, tmp_path / "pot", kind=kind)
    for text in [p.read_text() for p in (tmp_path / "pot").rglob("potential.in")]:
        # every potential.in (the teacher's too) points at the finished directory, not its build folder
        assert ".tmp" not in text and str((tmp_path / "pot").resolve()) in text
    summary = launch(tmp_path / "run", potential=tmp_path / "pot", nruns=nruns, workers=1, progress=False,
                     system="C", natoms="2-4", seed=0)
    assert summary["total"]["done"] == nruns
    records = [r for r in read_records(tmp_path / "run" / "shards") if r.status == "converged"]
    assert len(records) >= 0.75 * nruns, summary
    items = [(r.run_id, r.to_atoms(), r.energy_per_atom) for r in records
             if check_validity(r.to_atoms()).valid]
    clusters = dedupe(items).clusters
    best = min(clusters, key=lambda c: c.energy_per_atom)
    atoms = next(a for rid, a, _ in items if rid == best.representative)
    assert spacegroup(atoms, 0.1)[0] == 227, (best, spacegroup(atoms, 0.1))
    assert abs(best.volume_per_atom / (A_DIAMOND**3 / 8) - 1) < 0.05
    # dedupe merges cell sizes: every diamond hit, whatever its cell, is in the best cluster
    hits = [rid for rid, a, e in items if spacegroup(a, 0.1)[0] == 227 and e < best.energy_per_atom + 1e-3]
    assert len(hits) >= 2 and set(hits) <= set(best.members), (hits, best)
