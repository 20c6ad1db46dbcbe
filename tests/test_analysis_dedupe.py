"""Deduplication: known answers for copies of one structure and for distinct polymorphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from rmsearch.analysis.dedupe import MATCHER_SETTINGS, dedupe
from rmsearch.analysis.validity import check_validity


def _disguise(atoms: Atoms, rng: np.random.Generator, noise: float = 0.02) -> Atoms:
    """Same structure: translated, atoms permuted, rigidly rotated (cell too), slightly rattled."""
    a = atoms.copy()
    a.translate(rng.normal(size=3) * 2.0)
    a.wrap()
    a = a[rng.permutation(len(a))]
    rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    a.set_cell(np.asarray(a.cell) @ rot.T, scale_atoms=False)
    a.positions = a.positions @ rot.T
    a.positions += rng.normal(scale=noise, size=a.positions.shape)
    return a


def diamond8() -> Atoms:
    return bulk("C", "diamond", a=3.567, cubic=True)


def lonsdaleite8() -> Atoms:
    return bulk("CC", "wurtzite", a=2.522, c=4.12).repeat((1, 1, 2))


def test_copies_merge_into_one_cluster():
    rng = np.random.default_rng(3)
    base = diamond8()
    items = [(k, _disguise(base, rng), -7.0 + rng.normal(scale=0.003)) for k in range(12)]
    # the disguises really changed the coordinates and the cell orientation
    assert not np.allclose(items[0][1].positions, base.positions, atol=0.1)
    assert not np.allclose(np.asarray(items[0][1].cell), np.asarray(base.cell), atol=0.1)
    res = dedupe(items)
    assert len(res.clusters) == 1
    c = res.clusters[0]
    assert c.hits == 12 and c.members == list(range(12))
    assert c.representative == min(items, key=lambda it: it[2])[0]  # the lowest energy keeps the cluster
    # each later copy matches the first cluster at once, here all by the quick duplicate test
    assert res.n_matcher_calls + res.n_quick_matches == 11 and res.n_quick_matches == 11


def test_strained_copies_fall_back_to_the_matcher():
    rng = np.random.default_rng(4)
    base = diamond8()
    items = [(0, base.copy(), -7.0)]
    for k in (1, 2):  # 4 % strain: beyond the quick test (2 %), well inside ltol = 0.3
        a = _disguise(base, rng, noise=0.01)
        a.set_cell(np.asarray(a.cell) * (1 + 0.04 * k / 2), scale_atoms=True)
        items.append((k, a, -7.0 + 0.001 * k))
    res = dedupe(items, volume_bin=0.2)
    assert len(res.clusters) == 1 and res.n_quick_matches == 0 and res.n_matcher_calls == 2


def test_quick_test_is_sound_on_mp20_structures():
    """Whenever the quick test says 'same', StructureMatcher agrees; distinct structures never pass it."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from rmsearch.analysis.dedupe import make_matcher
    from rmsearch.analysis.quick import quick_form, quick_same
    from rmsearch.analysis.references import load_references

    def qf(s):
        return quick_form(np.array([site.specie.Z for site in s]), s.lattice.matrix, s.cart_coords)

    rng = np.random.default_rng(11)
    ad = AseAtomsAdaptor()
    matcher = make_matcher()
    refs = [s for _, s in load_references("mp20-subset:val")[:40]]
    hits = 0
    for s in refs:
        copy = ad.get_structure(_disguise(ad.get_atoms(s), rng, noise=0.01))
        if quick_same(qf(s), qf(copy)):
            hits += 1
            assert matcher.fit(s, copy, symmetric=True)
    assert hits >= 36  # nearly all plain copies are caught without the matcher
    forms = [qf(s) for s in refs]
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            if quick_same(forms[i], forms[j]):
                assert matcher.fit(refs[i], refs[j], symmetric=True)


def test_cell_sizes_of_one_crystal_merge():
    """Diamond found in its 2-atom primitive cell, the 8-atom cubic cell and a 16-atom supercell
    is one cluster (the matcher compares primitive cells); lonsdaleite in 4 and 8 atoms is another."""
    rng = np.random.default_rng(6)
    noise = 0.005  # A: relaxed repeat hits differ by ~0.001 A (the 0.02 A default is a matcher test)
    items = [(0, _disguise(bulk("C", "diamond", a=3.567), rng, noise), -7.000),
             (1, _disguise(diamond8(), rng, noise), -6.9995),
             (2, _disguise(diamond8().repeat((2, 1, 1)), rng, noise), -7.0005),
             (3, _disguise(bulk("CC", "wurtzite", a=2.522, c=4.12), rng, noise), -6.998),
             (4, _disguise(lonsdaleite8(), rng, noise), -6.9985)]
    res = dedupe(items)
    assert sorted(c.members for c in res.clusters) == [[0, 1, 2], [3, 4]]
    best = res.clusters[0]
    assert best.representative == 2 and best.natoms == 16 and best.hits == 3


def test_diamond_and_lonsdaleite_stay_apart():
    rng = np.random.default_rng(5)
    d, lon = diamond8(), lonsdaleite8()
    # same composition, same atom count, close volume and energy: only the matcher separates them
    assert len(d) == len(lon)
    assert abs(d.get_volume() - lon.get_volume()) / d.get_volume() < 0.05
    items = [(k, _disguise(d, rng), -7.000 + 0.001 * k) for k in range(4)]
    items += [(10 + k, _disguise(lon, rng), -6.998 + 0.001 * k) for k in range(4)]
    res = dedupe(items)
    assert len(res.clusters) == 2
    assert sorted(c.members for c in res.clusters) == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert res.n_matcher_calls < res.n_all_pairs


def test_bins_keep_distant_energies_apart_and_result_is_deterministic():
    rng = np.random.default_rng(7)
    d = diamond8()
    # identical structures but energies 0.5 eV/atom apart are never compared (different bins)
    items = [(0, _disguise(d, rng), -7.0), (1, _disguise(d, rng), -6.5)]
    res = dedupe(items, energy_bin=0.02)
    assert len(res.clusters) == 2 and res.n_matcher_calls == 0
    # input order does not matter; the parallel path gives the same clusters
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    many = [(k, _disguise(d if k % 2 else si, rng), (-7.0 if k % 2 else -5.4) + 1e-4 * k) for k in range(10)]
    a = dedupe(many)
    b = dedupe(list(reversed(many)), workers=2)
    assert [(c.formula, c.members, c.representative) for c in a.clusters] == \
           [(c.formula, c.members, c.representative) for c in b.clusters]
    assert [c.formula for c in a.clusters] == ["C", "Si"]  # sorted by energy per atom
    assert a.settings["matcher"]["stol"] == MATCHER_SETTINGS["stol"] == 0.5
    assert a.settings["matcher"]["ltol"] == 0.3 and a.settings["matcher"]["angle_tol"] == 10.0


@pytest.mark.parametrize("bad", [True, False])
def test_validity_close_atoms_and_exploded(bad):
    d = diamond8()
    assert check_validity(d).valid
    if bad:  # one C-C pair at 0.9 A < 0.7 * 1.52 A
        d.positions[1] = d.positions[0] + [0.9, 0.0, 0.0]
        v = check_validity(d)
        assert not v.valid and "0.90 A apart" in v.reason and v.min_ratio == pytest.approx(0.9 / 1.52, abs=1e-3)
        assert check_validity(d, frac=0.5).valid  # 0.9 > 0.5 * 1.52
    else:  # cell blown up 4x in each direction: 364 A^3/atom
        d.set_cell(np.asarray(d.cell) * 4, scale_atoms=True)
        v = check_validity(d)
        assert not v.valid and "exploded" in v.reason


def _disguise_molecule(mol: Atoms, rng: np.random.Generator, noise: float = 0.004) -> Atoms:
    """The same molecule moved, rotated, with its atoms re-ordered and rattled by ``noise`` (A)."""
    a = mol[rng.permutation(len(mol))]
    rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    a.positions = a.positions @ rot.T + rng.normal(size=3) * 3.0 + rng.normal(scale=noise, size=(len(a), 3))
    return a


def _chfclbr() -> Atoms:
    """A chiral molecule (bromochlorofluoromethane) on an ideal tetrahedron (A)."""
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
    bonds = np.array([1.09, 1.35, 1.77, 1.94])[:, None]
    return Atoms("CHFClBr", positions=np.vstack([[0, 0, 0], tet * bonds]))


def test_molecules_copies_and_mirror_images_merge_isomers_and_conformers_stay_apart():
    from ase.build import molecule

    from rmsearch.analysis.dedupe import molecule_form, same_molecule

    rng = np.random.default_rng(11)
    ethanol, ether = molecule("CH3CH2OH"), molecule("CH3OCH3")
    # the other conformer: the hydroxyl H turned by 120 degrees about the C-O bond
    turned = ethanol.copy()
    dist_o = np.linalg.norm(turned.positions - turned.positions[turned.numbers == 8][0], axis=1)
    o = int(np.flatnonzero(turned.numbers == 8)[0])
    c = int(np.argmin(np.where(turned.numbers == 6, dist_o, np.inf)))
    h = int(np.argmin(np.where(turned.numbers == 1, dist_o, np.inf)))
    turned.rotate(120.0, turned.positions[o] - turned.positions[c], center=turned.positions[o])
    rotated_h = turned.positions[h].copy()
    turned.positions = ethanol.positions
    turned.positions[h] = rotated_h
    chiral = _chfclbr()
    mirror = chiral.copy()
    mirror.positions[:, 0] *= -1
    for a in (ethanol, ether, turned, chiral, mirror):
        a.pbc = False
    # the mirror image is not a rotation of the molecule (so the mirror branch is what merges it)
    from pymatgen.analysis.molecule_matcher import HungarianOrderMatcher
    from pymatgen.core import Molecule

    rmsd = HungarianOrderMatcher(Molecule(chiral.numbers, chiral.positions)).match(
        Molecule(mirror.numbers, mirror.positions))[3]
    assert rmsd > 0.3
    assert same_molecule(molecule_form(chiral.numbers, chiral.positions),
                         molecule_form(mirror.numbers, mirror.positions))

    items = [(k, _disguise_molecule(ethanol, rng), -3.0 + 1e-4 * k) for k in range(5)]
    items += [(10, _disguise_molecule(ether, rng), -3.0), (11, _disguise_molecule(turned, rng), -3.0001)]
    items += [(20, _disguise_molecule(chiral, rng), -1.0), (21, _disguise_molecule(mirror, rng), -0.9999)]
    res = dedupe(items)
    assert sorted(c.members for c in res.clusters) == [[0, 1, 2, 3, 4], [10], [11], [20, 21]]
    eth = next(c for c in res.clusters if 0 in c.members)
    assert eth.representative == 0 and eth.natoms == 9 and math.isnan(eth.volume_per_atom)
    assert res.settings["molecules"]["mirror_images_merged"]
    # a copy farther than the RMSD tolerance (atoms displaced 0.3 A) is a different structure
    far = ethanol.copy()
    far.positions += np.random.default_rng(1).normal(scale=0.3, size=far.positions.shape)
    assert not same_molecule(molecule_form(ethanol.numbers, ethanol.positions),
                             molecule_form(far.numbers, far.positions))


def test_molecules_with_the_same_shape_but_other_element_sites_stay_apart():
    """A trigonal bipyramid Li2S3 with Li on the two axial sites vs on two equatorial sites:
    the same distances if elements are ignored, the same energy under an element-blind
    potential, but different molecules."""
    from scipy.spatial.distance import pdist

    from rmsearch.analysis.dedupe import molecule_form, same_molecule

    ang = np.radians([0, 120, 240])
    tbp = np.vstack([[0, 0, 1.9], [0, 0, -1.9], np.c_[2.2 * np.cos(ang), 2.2 * np.sin(ang), np.zeros(3)]])
    axial = Atoms("Li2S3", positions=tbp, pbc=False)
    equatorial = Atoms("SSLiLiS", positions=tbp, pbc=False)
    assert np.allclose(np.sort(pdist(axial.positions)), np.sort(pdist(equatorial.positions)))
    assert not same_molecule(molecule_form(axial.numbers, axial.positions),
                             molecule_form(equatorial.numbers, equatorial.positions))
    rng = np.random.default_rng(2)
    items = [(0, _disguise_molecule(axial, rng), -0.5), (1, _disguise_molecule(equatorial, rng), -0.5),
             (2, _disguise_molecule(axial, rng), -0.5), (3, _disguise_molecule(equatorial, rng), -0.5)]
    assert sorted(c.members for c in dedupe(items).clusters) == [[0, 2], [1, 3]]


def test_public_pymatgen_route_gives_pymatgens_reduction_and_grouping():
    """dedupe reduces and fits through pymatgen's public API only (``get_reduced_structure``,
    ``get_primitive_structure``, one-way ``fit``); the reduced cells are the matcher's own
    (its private ``_get_reduced_structure``, checked here only) and the clusters are those of
    pymatgen's ``group_structures`` with the same matcher."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from rmsearch.analysis.dedupe import make_matcher, reduce_structure, symmetric_fit
    from rmsearch.analysis.references import load_references

    rng = np.random.default_rng(12)
    ad, matcher = AseAtomsAdaptor(), make_matcher()
    refs = [s for _, s in load_references("mp20-subset:val")[:12]]
    items, structures, base_of = [], [], {}
    for b, s in enumerate(refs):
        for c in range(3):  # the reference and two strained (3 %), disguised copies: matcher work
            atoms = ad.get_atoms(s) if c == 0 else _disguise(ad.get_atoms(s), rng, noise=0.005)
            if c:
                atoms.set_cell(np.asarray(atoms.cell) * (1 + 0.015 * c), scale_atoms=True)
            rid = 3 * b + c
            items.append((rid, atoms, -5.0 + 0.0005 * c))
            structures.append(ad.get_structure(atoms))
            base_of[rid] = b
    for st in structures[::3]:
        ours, theirs = reduce_structure(st), matcher._get_reduced_structure(st, True, True)
        assert np.allclose(ours.lattice.matrix, theirs.lattice.matrix)
        assert np.allclose(ours.frac_coords, theirs.frac_coords)
        assert [x.specie for x in ours] == [x.specie for x in theirs]
    red = [reduce_structure(st) for st in structures]
    for i in range(0, len(red), 4):
        for j in range(len(red)):
            assert symmetric_fit(matcher, red[i], red[j]) == matcher.fit(structures[i], structures[j],
                                                                          symmetric=True)
    res = dedupe(items, volume_bin=0.5, fp_radius=None)
    ours = sorted(sorted(c.members) for c in res.clusters)
    index = {id(st): k for k, st in enumerate(structures)}
    groups = matcher.group_structures(structures)
    theirs = sorted(sorted(index[id(st)] for st in g) for g in groups)
    assert ours == theirs
    assert len(ours) == len(refs) and res.n_matcher_calls > 0


def test_split_candidate_group_gives_the_clusters_of_one_process(monkeypatch):
    """A candidate group cut into energy slices (one per worker) and stitched back has the clusters
    the greedy rule finds in one process: repeat hits of two crystals spread over several energy bins."""
    import rmsearch.analysis.dedupe as dd

    rng = np.random.default_rng(11)
    items = []
    for k in range(24):  # hits alternate between the crystals; energies cross the slice boundary
        base = diamond8() if k % 2 == 0 else lonsdaleite8()
        items.append((k, _disguise(base, rng, noise=0.003), -7.0 + 0.0018 * (k % 12) + 0.005 * (k % 2)))
    one = dedupe(items, workers=1)
    monkeypatch.setattr(dd, "SPLIT_MIN", 2)
    monkeypatch.setattr(dd, "SPLIT_SHARE", 0.0)
    two = dedupe(items, workers=2)
    assert sorted(c.members for c in two.clusters) == sorted(c.members for c in one.clusters)
    assert len(one.clusters) == 2
