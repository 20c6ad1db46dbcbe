"""The batched relaxer: same minima and statuses as the serial one, per-system failures,
the batched model call, the core overlay, and ``launch --device/--batch``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms

warnings.filterwarnings("ignore", category=UserWarning)

needs_cuda = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device")


@pytest.fixture(scope="module")
def diamond_potential(diamond_model, tmp_path_factory):
    from rmsearch.potentials import export_potential

    return export_potential(diamond_model, tmp_path_factory.mktemp("pot") / "diamond", verify=False)


@pytest.fixture(scope="module")
def random_potential(tmp_path_factory):
    """An exported randomly initialised MACE (C, O) and one whose weights are NaN."""
    from test_export import build_random_mace

    from rmsearch.potentials import export_potential

    d = tmp_path_factory.mktemp("rand")
    good = export_potential(build_random_mace(d / "good.model", zs=(6, 8)), d / "good", verify=False)
    bad = export_potential(build_random_mace(d / "nan.model", zs=(6, 8), nan=True), d / "nan", verify=False)
    return good, bad


def _carbon_starts(potential, n: int = 8, seed: int = 0) -> list[Atoms]:
    """Random carbon starts of 2-8 atoms, as ``rmsearch launch --system C --natoms 2-8`` makes them."""
    from rmsearch.starts import make_spec, make_start

    spec = make_spec(system="C", natoms=(2, 8), volumes=potential.volumes)
    return [make_start(spec, r, seed) for r in range(n)]


def _cube(symbols="C4", a=3.0, seed=0) -> Atoms:
    rng = np.random.default_rng(seed)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) + 0.05 * rng.random((4, 3))
    return Atoms(symbols, scaled_positions=frac, cell=np.eye(3) * a, pbc=True)


def _assert_same_minima(serial, batched, tol_ev_per_atom=1e-3):
    for k, (s, b) in enumerate(zip(serial, batched)):
        assert b.status == s.status, (k, s.status, b.status)
        assert b.energy_per_atom == pytest.approx(s.energy_per_atom, abs=tol_ev_per_atom), k
        if s.atoms.pbc.all():
            assert b.volume_per_atom == pytest.approx(s.volume_per_atom, rel=1e-2), k


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batched_reaches_the_serial_minima(diamond_potential, dtype):
    """8 random C2-C8 starts, 3 in flight per model call (so starts swap in as others end):
    the same statuses and final energies within 1 meV/atom as the serial LAMMPS relaxer."""
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import Relaxer, RelaxSettings

    settings = RelaxSettings(dtype=dtype, max_steps=400)
    starts = _carbon_starts(diamond_potential)
    with Relaxer(diamond_potential, settings) as r:
        serial = [r.relax(a) for a in starts]
    with BatchedRelaxer(diamond_potential, settings, batch=3) as b:
        batched = b.relax_many(starts)
        n_calls = b.n_model_calls
    assert sum(s.status == "converged" for s in serial) >= 6
    _assert_same_minima(serial, batched)
    for s, o in zip(starts, batched):  # output order is input order
        assert o.atoms.get_chemical_formula() == s.get_chemical_formula()
    # lockstep: far fewer model calls than force calls
    assert n_calls < 0.6 * sum(o.n_force_calls for o in batched)


def test_batched_kick_stage_on_molecules(diamond_potential):
    """The molecule protocol's kick stage (same generators) gives the serial relaxer's
    two-stage outcome: same statuses, first stage, final energy."""
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import Relaxer, RelaxSettings
    from rmsearch.starts import make_spec, make_start

    spec = make_spec(molecule="C4", volumes=diamond_potential.volumes)
    starts = [make_start(spec, r, 0) for r in range(3)]
    settings = RelaxSettings(dtype="float64", kick=0.2, kick_fmax=0.005, max_steps=400)
    with Relaxer(diamond_potential, settings) as r:
        serial = [r.relax(a, rng=np.random.default_rng([0, k, 1])) for k, a in enumerate(starts)]
    with BatchedRelaxer(diamond_potential, settings, batch=2) as b:
        batched = b.relax_many(starts, [np.random.default_rng([0, k, 1]) for k in range(len(starts))])
    _assert_same_minima(serial, batched)
    assert any(o.first_stage is not None for o in batched)
    for s, o in zip(serial, batched):
        assert (s.first_stage is None) == (o.first_stage is None)
        if s.first_stage is not None:
            assert o.first_stage["status"] == s.first_stage["status"]
            assert o.first_stage["energy"] == pytest.approx(s.first_stage["energy"], abs=1e-3 * 4)
            assert o.n_force_calls > o.first_stage["n_force_calls"]
        assert not o.atoms.pbc.any() and np.all(o.stress == 0)


def test_batched_constant_volume_stage(diamond_potential):
    """With a constant-volume first stage the batched relaxer runs the serial relaxer's two
    stages: same statuses, first stages and final energies."""
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import Relaxer, RelaxSettings

    settings = RelaxSettings(dtype="float64", max_steps=400, volume_steps=60)
    starts = _carbon_starts(diamond_potential)[:4]
    with Relaxer(diamond_potential, settings) as r:
        serial = [r.relax(a) for a in starts]
    with BatchedRelaxer(diamond_potential, settings, batch=3) as b:
        batched = b.relax_many(starts)
    _assert_same_minima(serial, batched)
    for s, o in zip(serial, batched):
        assert s.first_stage is not None and o.first_stage is not None
        assert o.first_stage["status"] == s.first_stage["status"]
        assert o.first_stage["n_force_calls"] <= 60


def test_failures_stay_with_their_run(random_potential):
    """One batch holding a NaN-free step-limited run, an unknown element, a collapsed cell and
    a molecule that loses an atom: each gets the serial relaxer's status, in input order."""
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import RelaxSettings

    good, bad = random_potential
    mol = Atoms("CO2", positions=[[0, 0, 0], [1.2, 0, 0], [30.0, 0, 0]])  # O far away
    tiny = _cube(a=1.0)  # 0.25 A^3/atom: below min_volume_per_atom before any force call
    with BatchedRelaxer(good, RelaxSettings(max_steps=3), batch=8) as b:
        out = b.relax_many([_cube(), _cube("Si4"), tiny, mol, _cube("C2O2")])
    assert [o.status[:6] for o in out] == ["not_co", "error:", "collap", "lost_a", "not_co"]
    assert out[0].n_force_calls == 3 and out[2].n_force_calls == 0
    assert "Z=14" in out[1].status and np.isfinite(out[4].energy)
    assert np.all(out[3].stress == 0)
    with BatchedRelaxer(bad, batch=2) as b:
        out = b.relax_many([_cube(), _cube(seed=1)])
    assert [o.status for o in out] == ["nan", "nan"] and all(o.n_force_calls == 1 for o in out)


def test_evaluate_batch_equals_single_calls(random_potential):
    """One model call on a crystal, a molecule and another crystal gives each structure's own
    energy, forces and stress (float64, to round-off)."""
    from rmsearch.mace_model import MACEEvaluator

    good, _ = random_potential
    ev = MACEEvaluator(good.model_file, dtype="float64", script=False)
    rng = np.random.default_rng(3)
    crystal = _cube("C2O2", a=3.2)
    crystal.cell = crystal.cell.array + 0.2 * rng.random((3, 3))
    mol = Atoms("C3O", positions=rng.random((4, 3)) * 2.5)
    systems = [(a.positions, a.cell.array, ev.node_attrs(a.numbers), a.pbc)
               for a in (crystal, mol, _cube("C4", a=3.5))]
    together = ev.evaluate_batch(systems)
    for system, (e, f, s) in zip(systems, together):
        e1, f1, s1 = ev.evaluate(system[0], system[1], None, system[3], node_attrs=system[2])
        assert e == pytest.approx(e1, abs=1e-10)
        np.testing.assert_allclose(f, f1, atol=1e-10)
        np.testing.assert_allclose(s, s1, atol=1e-12)
    assert np.all(together[1][2] == 0) and np.abs(together[0][2]).max() > 1e-4


def test_scripted_calls_do_not_depend_on_earlier_calls(random_potential):
    """A scripted float32 model gives a structure the same forces on its first call, after
    calls on other structures, and as the eager model: bit for bit, so a run's result does
    not depend on what its worker relaxed before it (TorchScript's re-optimised graph
    rounds differently)."""
    from rmsearch.mace_model import MACEEvaluator

    good, _ = random_potential
    rng = np.random.default_rng(5)
    probe = Atoms("C3O2", positions=rng.random((5, 3)) * 3.0)
    others = [Atoms("CO" * k, positions=rng.random((2 * k, 3)) * 4.0) for k in (1, 3, 2, 4, 5, 3)]

    def forces(ev, atoms):
        return ev.evaluate(atoms.positions, np.zeros((3, 3)), atoms.numbers, pbc=False)[1]

    scripted = MACEEvaluator(good.model_file, dtype="float32", script=True)
    first = forces(scripted, probe)
    for atoms in others * 3:
        forces(scripted, atoms)
    eager = MACEEvaluator(good.model_file, dtype="float32", script=False)
    assert np.array_equal(forces(scripted, probe), first)
    assert np.array_equal(forces(eager, probe), first)


def test_core_repulsion_terms_are_the_overlay():
    """g(r) = m (1 - r^2/rc^2)^2 below rc, forces and stress its exact derivatives
    (finite differences of energy in positions and strain), nothing beyond rc."""
    from vesin import NeighborList

    from rmsearch.batched import core_repulsion_terms
    from rmsearch.engine import CoreRepulsion

    core = CoreRepulsion(m=1.0, rc=0.75)
    nl = NeighborList(cutoff=core.rc, full_list=False)
    cell = np.diag([2.0, 2.1, 2.2]) + 0.1
    pos = np.array([[0.1, 0.1, 0.1], [0.6, 0.2, 0.1], [0.2, 0.55, 0.3], [1.5, 1.5, 1.5]])
    energy, forces, stress = core_repulsion_terms(pos, cell, True, core, nl)
    e_pair = [core.m * (1 - (np.linalg.norm(pos[k] - pos[0]) / core.rc) ** 2) ** 2 for k in (1, 2)]
    r12 = np.linalg.norm(pos[2] - pos[1])
    assert r12 < core.rc
    assert energy == pytest.approx(sum(e_pair) + core.m * (1 - (r12 / core.rc) ** 2) ** 2, rel=1e-12)
    h = 1e-6
    for a in range(3):
        for c in range(3):
            p = pos.copy()
            p[a, c] += h
            ep = core_repulsion_terms(p, cell, True, core, nl)[0]
            p[a, c] -= 2 * h
            em = core_repulsion_terms(p, cell, True, core, nl)[0]
            assert forces[a, c] == pytest.approx(-(ep - em) / (2 * h), abs=1e-6)
    assert np.all(forces[3] == 0)
    vol = np.linalg.det(cell)
    for a, b in ((0, 0), (1, 1), (0, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / (2 if a != b else 1)
        ep = core_repulsion_terms(pos @ (np.eye(3) + eps), cell @ (np.eye(3) + eps), True, core, nl)[0]
        em = core_repulsion_terms(pos @ (np.eye(3) - eps), cell @ (np.eye(3) - eps), True, core, nl)[0]
        assert stress[a, b] == pytest.approx((ep - em) / (2 * h * vol), abs=1e-6)
    assert core_repulsion_terms(pos * 5, cell * 5, True, core, nl)[0] == 0.0


@pytest.mark.parametrize("zbl", [False, True])
def test_core_repulsion_terms_per_pair_radius(zbl):
    """With ``covalent_scale`` (and with ``zbl``) the batched overlay uses each pair's own
    radius and nuclei (as the LAMMPS table does): energy and forces of a C-O-H triangle are
    the sum of g(r) over the pairs inside their radii, and the forces its exact derivatives."""
    from vesin import NeighborList

    from rmsearch.batched import core_repulsion_terms
    from rmsearch.engine import CoreRepulsion

    core = CoreRepulsion(m=1.5, rc=0.75, covalent_scale=0.7, zbl=zbl)
    numbers = np.array([6, 8, 1])
    pos = np.array([[0.0, 0.0, 0.0], [0.95, 0.0, 0.0], [0.1, 0.8, 0.0]])
    nl = NeighborList(cutoff=core.cutoff(numbers), full_list=False)
    energy, forces, _ = core_repulsion_terms(pos, np.zeros((3, 3)), False, core, nl, numbers)
    expected = 0.0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        r, rc = np.linalg.norm(pos[a] - pos[b]), core.radius(int(numbers[a]), int(numbers[b]))
        if r < rc:
            expected += core.pair_energy(np.array([r]), np.array([rc]), numbers[a], numbers[b])[0][0]
    assert np.linalg.norm(pos[0] - pos[1]) > core.rc  # outside the uniform core, inside C-O's
    assert energy == pytest.approx(expected, rel=1e-12) and energy > 0
    h = 1e-6
    for a in range(3):
        for c in range(3):
            p = pos.copy()
            p[a, c] += h
            ep = core_repulsion_terms(p, np.zeros((3, 3)), False, core, nl, numbers)[0]
            p[a, c] -= 2 * h
            em = core_repulsion_terms(p, np.zeros((3, 3)), False, core, nl, numbers)[0]
            assert forces[a, c] == pytest.approx(-(ep - em) / (2 * h), abs=1e-6)


def test_launch_batched_on_cpu(diamond_potential, tmp_path):
    """``launch --batch`` on a CPU: every run id once, in shards/batched.jsonl, with the
    pool's record fields and the serial relaxer's minima on the same starts."""
    from rmsearch.records import read_records
    from rmsearch.relax import Relaxer
    from rmsearch.config import read_config, relax_settings_from_dict
    from rmsearch.runner import launch
    from rmsearch.starts import StartSpec, make_start

    rundir = tmp_path / "run"
    summary = launch(rundir, potential=diamond_potential.directory, nruns=4, batch=3, system="C",
                     natoms="2-6", max_steps=300, progress=False)
    assert summary["runs"] == 4 and summary["total"]["done"] == 4
    assert [p.name for p in (rundir / "shards").iterdir()] == ["batched.jsonl"]
    recs = sorted(read_records(rundir / "shards"), key=lambda r: r.run_id)
    assert [r.run_id for r in recs] == [0, 1, 2, 3]
    config = read_config(rundir)
    spec = StartSpec.from_dict(config["start"])
    with Relaxer(diamond_potential, relax_settings_from_dict(config["relax"])) as r:
        for rec in recs:
            ref = r.relax(make_start(spec, rec.run_id, 0))
            assert rec.status == ref.status
            assert rec.energy_per_atom == pytest.approx(ref.energy_per_atom, abs=1e-3)
            assert {"start_kind", "model_time_s"} <= set(rec.extra) and 0 < rec.extra["model_time_s"] < rec.wall_s
    more = launch(rundir, nruns=5, batch=2, progress=False)  # resume: only the new run id
    assert more["runs"] == 1 and more["total"]["done"] == 5


def test_launch_device_options_are_checked(diamond_potential, lj_potential, tmp_path):
    """Bad --device/--batch combinations are one-line errors and write nothing."""
    from click.testing import CliRunner

    from rmsearch.cli import main

    base = ["launch", "--system", "C", "--nruns", "2", "--potential", str(diamond_potential.directory)]
    cases = [(["--device", "tpu"], "--device 'tpu'"),
             (["--batch", "2", "--workers", "2"], "--workers applies to the worker pool"),
             (["--batch", "0"], "--batch"),
             (["--batch", "2", "--scheduler", "slurm", "--dry-run"], "apply to --scheduler local")]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "finds no CUDA device"))
    for k, (extra, message) in enumerate(cases):
        out = tmp_path / f"r{k}"
        res = CliRunner().invoke(main, [*base, "-o", str(out), *extra])
        assert res.exit_code != 0 and message in res.output, res.output
        assert not out.exists()
    res = CliRunner().invoke(main, ["launch", "--system", "Li-S", "--nruns", "2", "--potential",
                                    str(lj_potential), "-o", str(tmp_path / "lj"), "--batch", "2"])
    assert res.exit_code != 0 and "needs a mace potential" in res.output
    assert not (tmp_path / "lj").exists()


@needs_cuda
def test_cuda_batched_reaches_the_cpu_minima(diamond_potential):
    """On a GPU: the batched relaxer (float32, all starts in one batch) reaches the serial
    CPU relaxer's minima."""
    from rmsearch.batched import BatchedRelaxer
    from rmsearch.relax import Relaxer, RelaxSettings

    settings = RelaxSettings(max_steps=400)
    starts = _carbon_starts(diamond_potential)
    with Relaxer(diamond_potential, settings) as r:
        serial = [r.relax(a) for a in starts]
    with BatchedRelaxer(diamond_potential, settings, device="cuda", batch=len(starts)) as b:
        assert next(b.evaluator.model.parameters()).is_cuda
        batched = b.relax_many(starts)
    _assert_same_minima(serial, batched)


@needs_cuda
def test_cuda_launch(diamond_potential, tmp_path):
    from click.testing import CliRunner

    from rmsearch.cli import main

    res = CliRunner().invoke(main, ["launch", "--system", "C", "--natoms", "2-6", "--nruns", "6", "--potential",
                                    str(diamond_potential.directory), "-o", str(tmp_path / "r"),
                                    "--device", "cuda", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "shards" / "batched.jsonl").is_file()
