"""Fingerprint candidate gate and symmetry snapping: known answers on planted sets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from test_analysis_dedupe import _disguise

from rmsearch.analysis.dedupe import Cluster, dedupe, make_matcher
from rmsearch.analysis.fingerprint import FP_RADIUS, candidate_components, fingerprint_of
from rmsearch.symmetry import spacegroup


def _fp(a: Atoms) -> np.ndarray:
    return fingerprint_of(a.numbers, np.asarray(a.cell), a.positions)


def _moved(a: Atoms, rng: np.random.Generator) -> Atoms:
    """The same structure translated, atoms permuted, rigidly rotated (cell too)."""
    return _disguise(a, rng, noise=0.0)


def _graphite() -> Atoms:
    """AB-stacked graphite, 4 atoms (A)."""
    a, c = 2.46, 6.7
    return Atoms("C4", cell=[[a, 0, 0], [-a / 2, a * 3**0.5 / 2, 0], [0, 0, c]], pbc=True,
                 scaled_positions=[[0, 0, 0.25], [1 / 3, 2 / 3, 0.25], [0, 0, 0.75], [2 / 3, 1 / 3, 0.75]])


def _bases() -> list[Atoms]:
    return [bulk("C", "diamond", a=3.567, cubic=True), bulk("CC", "wurtzite", a=2.522, c=4.12).repeat((1, 1, 2)),
            _graphite(), bulk("C", "sc", a=1.8), bulk("C", "bcc", a=2.3), bulk("C", "fcc", a=2.9),
            bulk("CC", "rocksalt", a=3.0), Atoms("C4", scaled_positions=[[0, 0, 0], [0.5, 0.1, 0.2],
                                                                     [0.2, 0.6, 0.5], [0.7, 0.7, 0.8]],
                                              cell=[[2.6, 0, 0], [0.4, 2.8, 0], [0.2, 0.3, 3.1]], pbc=True)]


def test_fingerprint_is_invariant_to_cell_choice_order_rotation_and_volume():
    rng = np.random.default_rng(0)
    d8 = bulk("C", "diamond", a=3.567, cubic=True)
    f = _fp(d8)
    for other in (bulk("C", "diamond", a=3.567), d8.repeat((2, 1, 1)), _moved(d8, rng),
                  bulk("C", "diamond", a=4.2, cubic=True)):  # the matcher scales volumes: so does the fingerprint
        assert np.linalg.norm(_fp(other) - f) < 1e-9
    lon = bulk("CC", "wurtzite", a=2.522, c=4.12)
    # diamond and lonsdaleite: same first shell, different beyond it: far apart
    assert np.linalg.norm(_fp(lon) - f) > 2 * FP_RADIUS


@pytest.mark.parametrize("rattle, strain, radius", [(0.003, 0.005, FP_RADIUS), (0.015, 0.02, 2 * FP_RADIUS)])
def test_candidates_never_miss_a_pair_the_matcher_calls_equal_on_a_planted_set(rattle, strain, radius):
    """Copies in supercells, permuted, moved, rattled (``rattle`` L) and strained (up to ``strain``):
    every pair StructureMatcher calls equal is a fingerprint candidate within ``radius``, and the
    gate still prunes. Repeat hits as relaxations leave them (0.003 L, 0.5 %: ten times the
    scatter of the diamond hits of a carbon search) need the default radius; the looser set
    (0.015 L, 2 %), the matcher's own reach, needs ``--fp-radius 0.6``.

    (Repeat hits of one minimum in a real carbon search lie within fingerprint distance 0.002
    of each other, 150x inside the radius; the matcher's own tolerances, stol 0.5 L and
    ltol 0.3, are far wider: see the fingerprint module doc.)"""
    rng = np.random.default_rng(1)
    structs: list[Atoms] = []
    for base in _bases():
        length = (base.get_volume() / len(base)) ** (1 / 3)
        for k in range(4):
            a = _moved(base.repeat((1 + (k == 1), 1, 1 + (k == 3))), rng)
            a.positions += rng.normal(scale=rattle * length, size=a.positions.shape) * (k >= 2)
            eps = rng.normal(size=(3, 3))
            eps = (eps + eps.T) / 2
            a.set_cell(np.asarray(a.cell) @ (np.eye(3) + strain * k / 3 * eps / np.abs(np.linalg.eigvalsh(eps)).max()),
                       scale_atoms=True)
            structs.append(a)
    ad, matcher = AseAtomsAdaptor(), make_matcher()
    pmg = [ad.get_structure(a) for a in structs]
    fps = np.array([_fp(a) for a in structs])
    n_equal = n_pruned = n_different = 0
    for i in range(len(structs)):
        for j in range(i + 1, len(structs)):
            dist = np.linalg.norm(fps[i] - fps[j])
            if matcher.fit(pmg[i], pmg[j], symmetric=True):
                n_equal += 1
                assert dist <= radius, (i, j, dist)
            else:
                n_different += 1
                n_pruned += dist > radius
    assert n_equal >= 6 * len(_bases())  # the 4 copies of each base match each other
    # the early-stopping symmetric fit answers as pymatgen's on every pair
    from rmsearch.analysis.dedupe import reduce_structure, symmetric_fit

    red = [reduce_structure(p) for p in pmg]
    for i in range(0, len(red), 3):
        for j in range(len(red)):
            assert symmetric_fit(matcher, red[i], red[j]) == matcher.fit(red[i], red[j], symmetric=True,
                                                                         skip_structure_reduction=True)
    assert n_pruned >= 0.9 * n_different
    # the gated dedupe finds the same clusters as the plain rule, with fewer matcher calls
    items = [(k, a, -7.0 + 1e-4 * k) for k, a in enumerate(structs)]
    gated, plain = dedupe(items, volume_bin=1.0, fp_radius=radius), dedupe(items, volume_bin=1.0, fp_radius=None)
    assert sorted(c.members for c in gated.clusters) == sorted(c.members for c in plain.clusters)
    assert gated.n_matcher_calls < plain.n_matcher_calls


def test_candidate_components_keep_every_possible_candidate_pair_together():
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=3.0, size=(30, 4))
    pts = np.repeat(centers, 10, axis=0) + rng.normal(scale=0.05, size=(300, 4))  # repeat hits
    pts = np.vstack([pts, rng.normal(scale=3.0, size=(100, 4))])
    bins = rng.integers(0, 4, size=(400, 2))
    labels = candidate_components(pts, bins, 1.0)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    near_bins = (np.abs(bins[:, None] - bins[None]) <= 1).all(axis=-1)
    i, j = np.nonzero((dist <= 1.0) & near_bins)
    assert (labels[i] == labels[j]).all()
    assert labels.max() + 1 > 20  # and the groups are not all one
    assert labels[0] == 0


def test_parallel_candidate_groups_give_the_same_clusters():
    rng = np.random.default_rng(3)
    items = []
    for k in range(24):
        base = _bases()[k % 4]
        a = _moved(base, rng)
        a.positions += rng.normal(scale=0.01, size=a.positions.shape)
        items.append((k, a, -7.0 + 0.3 * (k % 4) + 1e-4 * k))
    one, two = dedupe(items), dedupe(items, workers=2)
    assert [(c.members, c.representative) for c in one.clusters] == [(c.members, c.representative)
                                                                       for c in two.clusters]
    assert len(one.clusters) == 4 and one.n_candidate_groups == 4


# ----------------------------------------------------------------------------- snapping

@pytest.fixture(scope="module")
def carbon_config() -> dict:
    from rmsearch.registry import model_directory
    from rmsearch.relax import RelaxSettings
    from rmsearch.config import potential_fingerprint, relax_settings_to_dict

    pot = model_directory("carbon-uf3")
    return {"potential": str(pot), "potential_sha256": potential_fingerprint(pot),
            "relax": relax_settings_to_dict(RelaxSettings())}


def _relaxed_rattled_diamond(relaxer, seed: int) -> tuple[Atoms, float]:
    a = bulk("C", "diamond", a=3.567, cubic=True)
    rng = np.random.default_rng(seed)
    a.positions += rng.normal(scale=0.03, size=a.positions.shape)
    a.set_cell(np.asarray(a.cell) @ (np.eye(3) + 0.003 * rng.normal(size=(3, 3))), scale_atoms=True)
    out = relaxer.relax(a)
    assert out.converged
    return out.atoms, out.energy_per_atom


def test_snapping_a_rattled_diamond_recovers_fd3m_at_tight_tolerance(carbon_config):
    from rmsearch.analysis.snap import load_relaxer, snap_structure

    with load_relaxer(carbon_config) as relaxer:
        atoms, e = _relaxed_rattled_diamond(relaxer, 1)
        # relaxed short of its symmetry: P1 at 1e-3 A, diamond only at looser tolerances
        assert spacegroup(atoms, 1e-3)[0] != 227 and spacegroup(atoms, 0.1)[0] == 227
        snapped = snap_structure(atoms, e, relaxer)
    assert snapped.status == "kept"
    assert snapped.spacegroups["0.001"] == [227, "Fd-3m"]
    assert snapped.energy_per_atom <= e
    assert len(snapped.atoms) == 2  # the idealised primitive cell


def test_snap_clusters_merges_clusters_that_snap_to_one_structure(carbon_config):
    from rmsearch.analysis.snap import load_relaxer, snap_clusters

    with load_relaxer(carbon_config) as relaxer:
        (a, ea), (b, eb) = (_relaxed_rattled_diamond(relaxer, s) for s in (2, 3))
    structs = {10: a, 20: b}
    clusters = [Cluster("C", 8, 10, ea, a.get_volume() / 8, [10, 11]), Cluster("C", 8, 20, eb, b.get_volume() / 8, [20])]
    res = snap_clusters(clusters, structs.__getitem__, carbon_config)
    assert res.n_before == 2 and res.n_after == 1
    assert res.clusters[0].members == [10, 11, 20]
    assert all(s.spacegroups["0.001"][0] == 227 for s in res.snapped.values())


def test_snapping_needs_the_searchs_potential(carbon_config, tmp_path):
    from rmdata.errors import RMError
    from rmsearch.analysis.snap import load_relaxer

    with pytest.raises(RMError, match="gone"):
        load_relaxer(dict(carbon_config, potential=str(tmp_path / "nowhere")))
    with pytest.raises(RMError, match="sha256"):
        load_relaxer(dict(carbon_config, potential_sha256="0" * 64))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from rmsearch.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600, check=False)


def test_analyze_snaps_a_small_native_carbon_search(tmp_path):
    """End to end: 40 runs of 2-4 C atoms with model:carbon-uf3; analyze --snap snaps (cubic
    diamond stays first, Fd-3m at 1e-3 A), the default leaves it out, bad --fp-radius is one line."""
    run = str(tmp_path / "run")
    assert _cli("launch", "--potential", "model:carbon-uf3", "--system", "C", "--natoms", "2-4",
                "--volume-factor", "0.684-1.008", "--nruns", "40", "--workers", "1", "--no-progress",
                "-o", run).returncode == 0
    out = _cli("analyze", run, "--snap")
    assert out.returncode == 0, out.stderr
    assert "symmetry snapping:" in out.stdout
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    snap = report["snap"]
    assert snap["n_clusters_after"] <= snap["n_clusters_before"] == report["dedupe"]["n_clusters_before_snap"]
    assert sum(snap["status_counts"].values()) == snap["n_snapped"] == snap["n_clusters_before"]
    best = report["top_clusters"][0]
    sg = best["snap"]["spacegroups"] if best["snap"]["status"] == "kept" else best["spacegroups"]
    assert sg["0.001"][0] == 227, best
    assert report["dedupe"]["settings"]["fingerprint"]["radius"] == FP_RADIUS
    _cli("analyze", run, "--fp-radius", "0")
    plain = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert plain["snap"] is None and plain["dedupe"]["settings"]["fingerprint"] is None
    bad = _cli("analyze", run, "--fp-radius", "nan")
    assert bad.returncode != 0 and "--fp-radius" in bad.stderr and "Traceback" not in bad.stderr


def test_snap_clusters_without_the_potential_is_one_error_also_with_workers(carbon_config, tmp_path):
    from rmdata.errors import RMError
    from rmsearch.analysis.snap import snap_clusters

    a = bulk("C", "diamond", a=3.567)
    clusters = [Cluster("C", 2, k, -7.0 + k, 5.7, [k]) for k in range(3)]
    with pytest.raises(RMError, match="gone"):
        snap_clusters(clusters, lambda rid: a, dict(carbon_config, potential=str(tmp_path / "x")), workers=2)
