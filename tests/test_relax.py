"""The relaxation engine: parity with ASE FIRE + FrechetCellFilter, diamond recovery, failures."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms
from ase.io import read
from ase.units import GPa

warnings.filterwarnings("ignore", category=UserWarning)

FMAX = 0.01  # eV/A
SMAX_GPA = 0.1


@pytest.fixture(scope="module")
def diamond_potential(diamond_model, diamond_dataset, tmp_path_factory):
    from rmsearch.potentials import export_potential

    return export_potential(diamond_model, tmp_path_factory.mktemp("pot") / "diamond",
                            training=diamond_dataset)


@pytest.fixture(scope="module")
def diamond_reference(diamond_dataset) -> Atoms:
    """The unperturbed training cell (noise level 0, strain 0)."""
    frames = read(diamond_dataset, ":")
    ref = [a for a in frames if a.info.get("noise_level") == 0 and abs(a.info.get("strain", 1.0)) < 1e-12]
    assert ref, "the diamond dataset has no unperturbed frame"
    return ref[0]


@pytest.fixture(scope="module")
def relaxer(diamond_potential):
    from rmsearch.relax import Relaxer, RelaxSettings

    with Relaxer(diamond_potential, RelaxSettings(fmax=FMAX, smax_gpa=SMAX_GPA)) as r:
        yield r


def _ase_relax(atoms: Atoms, model_file) -> tuple[Atoms, int]:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from mace.calculators import MACECalculator

    atoms = atoms.copy()
    atoms.calc = MACECalculator(model_paths=str(model_file), device="cpu", default_dtype="float64")
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    for calls, _ in enumerate(opt.irun(fmax=0.0, steps=2000), start=1):
        if (np.linalg.norm(atoms.get_forces(), axis=1).max() < FMAX
                and np.abs(atoms.get_stress()).max() < SMAX_GPA * GPa):
            return atoms, calls
    raise AssertionError("ASE did not converge")


def _near_minimum_starts(reference: Atoms) -> list[Atoms]:
    rng = np.random.default_rng(7)
    starts = []
    for k, strain in enumerate((0.03, -0.03, 0.0)):
        atoms = reference.copy()
        deform = np.eye(3) * (1 + strain) + 0.03 * (rng.random((3, 3)) - 0.5)
        atoms.set_cell(atoms.cell @ deform, scale_atoms=True)
        atoms.rattle(0.05, seed=k)
        starts.append(atoms)
    return starts


def test_same_minimum_as_ase(relaxer, diamond_reference, diamond_model):
    """Rattled, strained diamond cells: rmsearch and ASE end at the same energy and volume."""
    for start in _near_minimum_starts(diamond_reference):
        out = relaxer.relax(start)
        assert out.status == "converged", out.status
        assert out.fmax < FMAX and np.abs(out.stress).max() < SMAX_GPA * GPa
        ref, _ = _ase_relax(start, diamond_model)
        n = len(start)
        assert out.energy / n == pytest.approx(ref.get_potential_energy() / n, abs=1e-3)
        assert out.atoms.get_volume() == pytest.approx(ref.get_volume(), rel=0.01)
        assert out.n_force_calls > 1 and out.model_time_s > 0 and out.wall_s >= out.model_time_s


def test_ase_fire_step_rule_follows_ase(diamond_potential, diamond_reference, diamond_model):
    """With ASE's FIRE parameters the relaxer takes ASE's steps: same force calls, same end."""
    from rmsearch.relax import Relaxer, RelaxSettings

    start = _near_minimum_starts(diamond_reference)[1]
    settings = RelaxSettings(fmax=FMAX, smax_gpa=SMAX_GPA, optimizer="fire", max_step=0.2, n_min=5,
                             a_start=0.1, core_repulsion=None)
    with Relaxer(diamond_potential, settings) as r:
        out = r.relax(start)
    ref, calls = _ase_relax(start, diamond_model)
    assert out.status == "converged"
    assert abs(out.n_force_calls - calls) <= 2
    dfrac = out.atoms.get_scaled_positions() - ref.get_scaled_positions()
    assert np.abs(dfrac - np.round(dfrac)).max() < 1e-3
    assert np.abs(np.asarray(out.atoms.cell) - np.asarray(ref.cell)).max() < 1e-3


def test_strained_diamond_returns_to_training_lattice(relaxer, diamond_reference):
    """Strain the training cell by +-5% (and a shear): relaxing restores it within 1%."""
    a0 = diamond_reference.cell.cellpar()
    for deform in (np.eye(3) * 1.05, np.eye(3) * 0.95, np.eye(3) + 0.05 * np.array(
            [[0, 1, 0], [1, 0, 0], [0, 0, 0]]) / 2):
        start = diamond_reference.copy()
        start.set_cell(start.cell @ deform, scale_atoms=True)
        out = relaxer.relax(start)
        assert out.status == "converged"
        par = out.atoms.cell.cellpar()
        assert par[:3] == pytest.approx(a0[:3], rel=0.01)
        assert par[3:] == pytest.approx(a0[3:], abs=0.9)  # degrees: 1% of 90
        # lattice lengths within 1% (above) bound the volume to (1.01)^3 - 1 = 3%
        assert out.volume_per_atom == pytest.approx(diamond_reference.get_volume() / 8, rel=0.0303)
        assert abs(out.pressure_gpa) < SMAX_GPA


def test_float32_agrees_with_float64(diamond_potential, diamond_reference):
    """float32 model evaluation (for search) reaches the same minimum."""
    from rmsearch.relax import Relaxer, RelaxSettings

    start = _near_minimum_starts(diamond_reference)[0]
    with Relaxer(diamond_potential, RelaxSettings(dtype="float32")) as r32, \
            Relaxer(diamond_potential, RelaxSettings(dtype="float64")) as r64:
        o32, o64 = r32.relax(start), r64.relax(start)
    assert o32.status == o64.status == "converged"
    assert o32.energy_per_atom == pytest.approx(o64.energy_per_atom, abs=1e-4)
    assert o32.volume_per_atom == pytest.approx(o64.volume_per_atom, rel=1e-3)


@pytest.fixture(scope="module")
def random_potential(tmp_path_factory):
    """An exported randomly initialised MACE (C, O) and one whose weights are NaN."""
    from test_export import build_random_mace

    from rmsearch.potentials import export_potential

    d = tmp_path_factory.mktemp("rand")
    good = export_potential(build_random_mace(d / "good.model", zs=(6, 8)), d / "good")
    bad = export_potential(build_random_mace(d / "nan.model", zs=(6, 8), nan=True), d / "nan",
                           verify=False)
    return good, bad


def _cube(symbols="C4", a=3.0, seed=0) -> Atoms:
    rng = np.random.default_rng(seed)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) + 0.05 * rng.random((4, 3))
    return Atoms(symbols, scaled_positions=frac, cell=np.eye(3) * a, pbc=True)


def test_failure_statuses_and_reuse(random_potential):
    """NaN, step limit, explosion, unknown element, lost atoms and fused atoms give statuses,
    never raise."""
    from rmsearch.records import STATUSES
    from rmsearch.relax import Relaxer, RelaxSettings

    good, bad = random_potential
    with Relaxer(bad) as r:
        out = r.relax(_cube())
        assert out.status == "nan" and out.n_force_calls == 1
    with Relaxer(good, RelaxSettings(max_steps=3)) as r:
        out = r.relax(_cube())
        assert out.status == "not_converged" and out.n_force_calls == 3
        out = r.relax(_cube("Si4"))  # Si is not in the potential
        assert out.status.startswith("error: ") and "Z=14" in out.status
        out = r.relax(_cube("C2O2"))  # the instance still works after an error
        assert out.status == "not_converged" and np.isfinite(out.energy)
        mol = Atoms("CO2", positions=[[0, 0, 0], [1.2, 0, 0], [30.0, 0, 0]])  # O far away
        out = r.relax(mol)
        assert out.status == "lost_atoms" and np.all(out.stress == 0)
        fused = _cube()
        fused.positions[1] = fused.positions[0] + [1e-7, 0, 0]  # two atoms on top of each other
        out = r.relax(fused)
        assert out.status == "collapsed", out.status
        out = r.relax(_cube("C2O2"))  # and the instance works after it
        assert out.status == "not_converged" and np.isfinite(out.energy)
    with Relaxer(good, RelaxSettings(max_volume_per_atom=1.0, min_volume_per_atom=0.5)) as r:
        assert r.relax(_cube()).status == "exploded"
    with Relaxer(good, RelaxSettings(min_volume_per_atom=1e4)) as r:
        out = r.relax(_cube())  # stopped before LAMMPS sees the cell
        assert out.status == "collapsed" and out.n_force_calls == 0
    for s in ("nan", "not_converged", "lost_atoms", "exploded", "collapsed", "timeout"):
        assert s in STATUSES


def test_core_repulsion_overlay(random_potential):
    """The overlay adds exactly g(r) = m (1 - r^2/rc^2)^2 below rc and nothing beyond."""
    from rmsearch.engine import CoreRepulsion, LammpsEngine

    good, _ = random_potential
    core = CoreRepulsion(m=1.0, rc=0.75)
    plain = LammpsEngine(good)
    overlaid = LammpsEngine(good, core_repulsion=core)
    try:
        for r in (0.5, 0.7, 0.9):
            atoms = Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]], cell=np.eye(3) * 6, pbc=True)
            args = (atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
            e0, f0, _ = plain.compute(*args)
            e1, f1, _ = overlaid.compute(*args)
            g = core.m * (1 - (r / core.rc) ** 2) ** 2 if r < core.rc else 0.0
            dg = -4 * core.m * r / core.rc**2 * (1 - (r / core.rc) ** 2) if r < core.rc else 0.0
            assert e1 - e0 == pytest.approx(g, abs=1e-9)
            assert (f1 - f0)[1, 0] == pytest.approx(-dg, abs=1e-6)
    finally:
        plain.close()
        overlaid.close()


def test_core_repulsion_per_pair_radius(random_potential):
    """With ``covalent_scale`` each element pair has its own radius, max(rc, scale x the
    covalent radii sum): a C-O pair at 0.9 A is inside the C-O core (0.7 x 1.42 = 0.994 A)
    and feels exactly g(r) with that radius; C-C at 1.0 A is inside (1.064 A); an O-O pair
    at 0.95 A is outside (0.924 A). Bad parameters are refused."""
    from ase.data import covalent_radii

    from rmdata.errors import RMError
    from rmsearch.engine import CoreRepulsion, LammpsEngine

    good, _ = random_potential
    core = CoreRepulsion(m=2.0, rc=0.75, covalent_scale=0.7)
    assert core.radius("C", "O") == pytest.approx(0.7 * (covalent_radii[6] + covalent_radii[8]))
    assert core.radius("H", "H") == 0.75  # the floor rc
    plain = LammpsEngine(good)
    overlaid = LammpsEngine(good, core_repulsion=core)
    try:
        for symbols, r, inside in (("CO", 0.9, True), ("CC", 1.0, True), ("OO", 0.95, False)):
            atoms = Atoms(symbols, positions=[[0, 0, 0], [r, 0, 0]], cell=np.eye(3) * 6, pbc=True)
            args = (atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
            rc = core.radius(*symbols)
            assert (r < rc) == inside
            g = core.m * (1 - (r / rc) ** 2) ** 2 if inside else 0.0
            dg = -4 * core.m * r / rc**2 * (1 - (r / rc) ** 2) if inside else 0.0
            (e0, f0, _), (e1, f1, _) = plain.compute(*args), overlaid.compute(*args)
            assert e1 - e0 == pytest.approx(g, abs=1e-9)
            assert (f1 - f0)[1, 0] == pytest.approx(-dg, abs=1e-6)
    finally:
        plain.close()
        overlaid.close()
    for bad in ({"m": 0}, {"rc": float("nan")}, {"covalent_scale": 1.5}, {"covalent_scale": -0.1}):
        with pytest.raises(RMError, match="core repulsion"):
            CoreRepulsion(**bad)
    from rmsearch.engine import MAX_CORE_PAIRS, core_sections

    eleven = ["H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I", "Si"]
    sections, pairs = core_sections(core, eleven)
    assert len(pairs) == MAX_CORE_PAIRS and len(sections) <= len(pairs)
    assert core_sections(CoreRepulsion(), eleven + ["Li"]) == ([(0.75, 0, 0)], [(0, 0, 0)])  # uniform: one
    with pytest.raises(RMError, match="78 for its 12 elements"):
        core_sections(core, eleven + ["Li"])


def test_zbl_is_lammps_pair_zbl():
    """rmsearch.engine.zbl is the ZBL repulsion LAMMPS' pair zbl computes: below the inner
    switching radius pair zbl's force is the unswitched ZBL force (its energy only shifted)."""
    from rmsearch.engine import new_lammps, zbl

    lmp = new_lammps()
    try:
        lmp.commands_string("units metal\natom_modify map array\nboundary f f f\n"
                            "region b block -5 5 -5 5 -5 5\ncreate_box 2 b\n"
                            "create_atoms 1 single 0 0 0\ncreate_atoms 2 single 0.3 0 0\nmass * 1.0\n"
                            "pair_style zbl 1.0 1.5\npair_coeff 1 1 6 6\npair_coeff 1 2 6 8\n"
                            "pair_coeff 2 2 8 8\nrun 0")
        f = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
    finally:
        lmp.close()
    energy, de = zbl(np.array(0.3), 6, 8)
    assert f[1, 0] == pytest.approx(-float(de), rel=1e-9)
    assert energy > 0 and de < 0
    h = 1e-6
    assert float(de) == pytest.approx(float((zbl(0.3 + h, 6, 8)[0] - zbl(0.3 - h, 6, 8)[0]) / (2 * h)), rel=1e-6)


def test_core_repulsion_zbl_overlay(random_potential):
    """The ZBL overlay adds m ZBL(r) (1 - r^2/rc^2)^2 below each pair's radius: in LAMMPS (the
    table) as in :meth:`CoreRepulsion.pair_energy`, and it grows without bound as two atoms
    merge, where the smooth overlay's force vanishes."""
    from rmsearch.engine import CoreRepulsion, LammpsEngine, zbl

    good, _ = random_potential
    core = CoreRepulsion(rc=0.75, covalent_scale=0.7, zbl=True)
    assert CoreRepulsion.parse("zbl,scale=0.7") == core and str(core) == "zbl,m=1,rc=0.75,scale=0.7"
    plain = LammpsEngine(good)
    overlaid = LammpsEngine(good, core_repulsion=core)
    try:
        for symbols, r in (("CO", 0.3), ("CO", 0.9), ("OO", 0.5), ("CC", 1.2)):
            atoms = Atoms(symbols, positions=[[0, 0, 0], [r, 0, 0]], cell=np.eye(3) * 6, pbc=True)
            args = (atoms.positions, np.asarray(atoms.cell), atoms.numbers, True)
            rc = core.radius(*symbols)
            z = atoms.numbers
            g, dg = core.pair_energy(np.array([r]), np.array([rc]), z[:1], z[1:]) if r < rc else ([0.0], [0.0])
            if r < rc:
                e_zbl = zbl(np.array(r), *z)[0]
                assert g[0] == pytest.approx(e_zbl * (1 - (r / rc) ** 2) ** 2)
            (e0, f0, _), (e1, f1, _) = plain.compute(*args), overlaid.compute(*args)
            assert e1 - e0 == pytest.approx(g[0], rel=1e-6, abs=1e-9)
            assert (f1 - f0)[1, 0] == pytest.approx(-dg[0], rel=1e-5, abs=1e-6)
    finally:
        plain.close()
        overlaid.close()
    r = np.array([0.05, 0.02, 0.01])
    smooth = CoreRepulsion(m=10.0, rc=0.75)
    assert np.all(np.diff(-core.pair_energy(r, np.full(3, 0.75), 1, 1)[1]) > 0)  # ZBL: force grows
    assert np.all(np.abs(smooth.pair_energy(r, np.full(3, 0.75), 1, 1)[1]) < 4)  # smooth: it vanishes


def test_settings_validation():
    from rmdata.errors import RMError
    from rmsearch.relax import RelaxSettings

    with pytest.raises(RMError, match="fmax"):
        RelaxSettings(fmax=0)
    with pytest.raises(RMError, match="dtype"):
        RelaxSettings(dtype="float16")
    with pytest.raises(RMError, match="volume_steps"):
        RelaxSettings(volume_steps=-1)
    with pytest.raises(RMError, match="volume_fmax"):
        RelaxSettings(volume_steps=10, volume_fmax=float("nan"))
    with pytest.raises(RMError, match="volume_steps and kick"):
        RelaxSettings(volume_steps=10, kick=0.5)


@pytest.mark.parametrize("optimizer", ["fire2-lbfgs", "lammps-cg"])
def test_constant_volume_stage_keeps_the_volume_then_relaxes_freely(diamond_potential, diamond_reference,
                                                                     optimizer):
    """A diamond cell strained by +8 % and sheared: the constant-volume stage relaxes the shape
    and atoms at exactly the start's volume, with its stop rule on the deviatoric stress; the
    free stage from there returns to the training lattice; the record holds both stages."""
    from rmsearch.protocol import first_stage_settings
    from rmsearch.relax import Relaxer, RelaxSettings

    start = diamond_reference.copy()
    start.set_cell(start.cell @ (np.eye(3) * 1.08 + 0.03 * np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])),
                   scale_atoms=True)
    start.rattle(0.05, seed=3)
    settings = RelaxSettings(volume_steps=200, volume_fmax=0.01, optimizer=optimizer, dtype="float64")
    stage1 = first_stage_settings(settings, periodic=True)
    assert stage1.constant_volume and stage1.max_steps == 200 and stage1.fmax == 0.01
    assert first_stage_settings(settings, periodic=False) is settings  # molecules: one stage
    with Relaxer(diamond_potential, replace(stage1, volume_steps=0)) as r:  # that stage alone
        held = r.relax(start)
    assert held.status == "converged"
    assert held.atoms.get_volume() == pytest.approx(start.get_volume(), rel=1e-9)
    xx, yy, zz, yz, xz, xy = held.stress  # eV/A^3, ASE sign
    full = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    deviatoric = full - np.trace(full) / 3 * np.eye(3)
    assert np.trace(full) / 3 > 10 * SMAX_GPA * GPa  # the expanded cell keeps its tension
    assert np.abs(deviatoric).max() < SMAX_GPA * GPa  # but its shape is relaxed
    with Relaxer(diamond_potential, settings) as r:
        out = r.relax(start)
    assert out.status == "converged"
    assert out.first_stage["status"] == "converged"
    assert out.first_stage["energy"] == pytest.approx(held.energy, abs=1e-6)
    assert out.n_force_calls > out.first_stage["n_force_calls"] > 0
    assert out.volume_per_atom == pytest.approx(diamond_reference.get_volume() / 8, rel=0.03)
    assert out.energy < held.energy
