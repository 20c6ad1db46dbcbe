"""Random starts: determinism per run id, separations, volumes, compositions, LAMMPS
boxes, space groups, molecules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import spglib
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from rmdata.errors import RMError
from rmsearch.starts import (
    StartSpec,
    compositions,
    lammps_tilts,
    make_spec,
    make_start,
    to_lammps_frame,
)

VOLUMES = {"Li": 20.0, "S": 25.0, "C": 5.7, "P": 20.0}  # A^3/atom


def _min_sep_violations(atoms, factor=0.7, floor=0.7) -> int:
    """Pairs closer than their minimum separation, counted with ASE's neighbour list."""
    r = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, 2 * factor * r.max() + floor)
    need = np.maximum(floor, factor * (r[i] + r[j]))
    return int(np.sum(d < need - 1e-9))


def _spg(atoms, symprec=1e-3):
    return spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers),
                                       symprec=symprec)


def test_same_start_for_same_run_id_in_any_order():
    spec = make_spec(system="Li-S", volumes=VOLUMES)
    forward = [make_start(spec, r, 11) for r in range(20)]
    backward = [make_start(spec, r, 11) for r in reversed(range(20))][::-1]
    for a, b in zip(forward, backward):
        assert a.get_chemical_formula() == b.get_chemical_formula()
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell[:], b.cell[:])
    # a rebuilt spec (as a worker reading config.json does) gives the same start
    again = make_start(StartSpec.from_dict(spec.to_dict()), 4711, 11)
    np.testing.assert_array_equal(again.positions, make_start(spec, 4711, 11).positions)
    # other seed or other run id: another start
    assert not np.allclose(make_start(spec, 5, 12).cell[:], forward[5].cell[:])
    assert not np.allclose(forward[6].cell[:], forward[5].cell[:])


def test_symmetric_starts_are_deterministic():
    spec = make_spec(system="Li-S", volumes=VOLUMES, spacegroup="random")
    a, b = make_start(spec, 3, 5), make_start(spec, 3, 5)
    assert a.info["spacegroup_start"] == b.info["spacegroup_start"]
    np.testing.assert_array_equal(a.positions, b.positions)


@pytest.mark.parametrize("kwargs", [{"system": "Li-S"}, {"system": "Li-P-S", "natoms": "3-9"},
                                    {"composition": "C", "natoms": "2-12"},
                                    {"system": "Li-S", "spacegroup": "random"}])
def test_separation_volume_and_lammps_bounds(kwargs):
    spec = make_spec(volumes=VOLUMES, **kwargs)
    lo, hi = spec.volume_factor
    for r in range(30 if spec.spacegroup else 150):  # pyxtal starts take ~0.2 s each
        atoms = make_start(spec, r, 1)
        assert spec.natoms[0] <= len(atoms) <= spec.natoms[1]
        assert _min_sep_violations(atoms) == 0, (r, atoms.info)
        reference = sum(VOLUMES[s] for s in atoms.get_chemical_symbols())
        factor = atoms.get_volume() / reference
        assert lo - 1e-9 <= factor <= hi + 1e-9
        assert factor == pytest.approx(atoms.info["volume_factor"], rel=1e-9)
        lx, ly, _lz, xy, xz, yz = lammps_tilts(atoms.cell[:])
        assert abs(xy) <= lx / 2 + 1e-9 and abs(xz) <= lx / 2 + 1e-9 and abs(yz) <= ly / 2 + 1e-9
        assert np.linalg.det(atoms.cell[:]) > 0


def test_compositions_exact():
    spec = make_spec(system="Li-S", natoms="2-4", volumes=VOLUMES)
    got = {tuple(sorted(c.items())) for c in compositions(spec)}
    want = {tuple(sorted({k: v for k, v in (("Li", a), ("S", n - a)) if v}.items()))
            for n in range(2, 5) for a in range(n + 1)}
    assert got == want  # 3 + 4 + 5 compositions, the pure elements included
    seen = {make_start(spec, r, 0).get_chemical_formula() for r in range(200)}
    assert seen == {make_start(spec, r, 0).get_chemical_formula() for r in range(200)}
    assert len(seen) == len(want)
    spec = make_spec(composition="Li2S", natoms="2-12", volumes=VOLUMES)
    for r in range(40):
        symbols = make_start(spec, r, 0).get_chemical_symbols()
        n_s = symbols.count("S")
        assert symbols.count("Li") == 2 * n_s and 1 <= n_s <= 4 and len(symbols) == 3 * n_s


def test_starts_make_valid_lammps_boxes():
    """Several hundred starts become LAMMPS boxes with every atom inside, none lost."""
    from rmsearch.engine import new_lammps

    spec = make_spec(system="Li-S", natoms="2-12", volumes=VOLUMES)
    starts = [make_start(spec, r, 3) for r in range(300)]
    starts += [make_start(make_spec(system="Li-S", spacegroup="random", volumes=VOLUMES), r, 3)
               for r in range(20)]
    lmp = new_lammps()
    try:
        for atoms in starts:
            lx, ly, lz, xy, xz, yz = lammps_tilts(atoms.cell[:])
            np.testing.assert_allclose(atoms.cell[:], [[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]],
                                       atol=1e-9)  # starts are already in LAMMPS' frame
            lmp.command("clear")
            lmp.command("units metal")
            lmp.command("atom_modify map array")
            lmp.command(f"region box prism 0 {lx} 0 {ly} 0 {lz} {xy} {xz} {yz}")
            lmp.command("create_box 2 box")
            types = [1 if z == 3 else 2 for z in atoms.numbers]
            lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types,
                             atoms.positions.ravel().tolist())
            lmp.command("mass * 1.0")
            lmp.command("pair_style zero 3.0")
            lmp.command("pair_coeff * *")
            lmp.command("run 0")
            assert lmp.get_natoms() == len(atoms)
            box = lmp.extract_box()
            assert box[2:5] == pytest.approx((xy, yz, xz), abs=1e-9)  # LAMMPS order xy yz xz
    finally:
        lmp.close()


def test_to_lammps_frame_reduces_without_changing_the_crystal():
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43)
    sheared = atoms.copy()
    cell = atoms.cell[:].copy()
    cell[1] += 2 * cell[0]  # same lattice, very tilted basis
    sheared.set_cell(cell, scale_atoms=False)
    sheared.wrap()
    red = to_lammps_frame(sheared)
    lx, ly, _lz, xy, xz, yz = lammps_tilts(red.cell[:])
    assert abs(xy) <= lx / 2 + 1e-9 and abs(xz) <= lx / 2 + 1e-9 and abs(yz) <= ly / 2 + 1e-9
    assert red.get_volume() == pytest.approx(atoms.get_volume())
    assert _spg(red).number == 227
    d0 = np.sort(neighbor_list("d", atoms, 4.0))
    d1 = np.sort(neighbor_list("d", red, 4.0))
    np.testing.assert_allclose(d0, d1, atol=1e-8)


@pytest.mark.parametrize("formula,natoms,sg", [("C", "8", 227), ("Li2S", "12", 225), ("C", "4", 194)])
def test_fixed_spacegroup(formula, natoms, sg):
    spec = make_spec(composition=formula, natoms=natoms, spacegroup=sg, volumes=VOLUMES)
    hits = 0
    for r in range(15):
        atoms = make_start(spec, r, 2)
        assert atoms.info["start_status"] == "ok" and atoms.info["start_kind"] == "spacegroup"
        assert atoms.info["spacegroup_start"] == sg
        assert _min_sep_violations(atoms) == 0
        found = _spg(atoms).number
        hits += found == sg
    assert hits >= 12  # the rest may land on special positions of a supergroup


def _point_group_order(sg: int) -> int:
    """Number of distinct rotations of a space group (its point group order), per spglib."""
    hall = next(h for h in range(1, 531) if spglib.get_spacegroup_type(h).number == sg)
    rotations = spglib.get_symmetry_from_database(hall)["rotations"]
    return len(np.unique(rotations.reshape(len(rotations), -1), axis=0))


def test_random_spacegroup_is_the_group_or_a_supergroup():
    """spglib finds the requested group, or one whose point group is at least as large."""
    spec = make_spec(system="Li-S", natoms="4-12", spacegroup="random", volumes=VOLUMES)
    exact = total = 0
    groups = set()
    for r in range(30):
        atoms = make_start(spec, r, 9)
        sg = atoms.info["spacegroup_start"]
        if sg is None:
            assert atoms.info["start_status"].startswith("fallback:")
            continue
        groups.add(sg)
        total += 1
        data = _spg(atoms)
        found_order = len(np.unique(data.rotations.reshape(len(data.rotations), -1), axis=0))
        assert data.number == sg or found_order >= _point_group_order(sg), (sg, data.number)
        exact += data.number == sg
    assert total >= 25 and len(groups) >= 12
    assert exact >= total // 2


def test_mixed_starts_alternate_symmetric_and_random():
    """'mixed': even run ids are space-group starts (spglib finds a group above P1 in most),
    odd ones plain random starts identical to those of a search without symmetry."""
    mixed = make_spec(system="Li-S", natoms="4-12", spacegroup="mixed", volumes=VOLUMES)
    plain = make_spec(system="Li-S", natoms="4-12", volumes=VOLUMES)
    above_p1 = 0
    for r in range(20):
        atoms = make_start(mixed, r, 5)
        if r % 2:
            assert atoms.info["start_kind"] == "random" and atoms.info["spacegroup_start"] is None
            assert np.array_equal(atoms.positions, make_start(plain, r, 5).positions)
        else:
            assert atoms.info["start_kind"] == "spacegroup" or atoms.info["start_status"].startswith("fallback:")
            above_p1 += _spg(atoms).number > 1
    assert above_p1 >= 8
    assert make_spec(system="Li-S", spacegroup="MIXED", volumes=VOLUMES).spacegroup == "mixed"


def test_incompatible_spacegroup_falls_back_with_status():
    spec = make_spec(composition="C", natoms="3", spacegroup=225, volumes=VOLUMES)
    atoms = make_start(spec, 0, 0)
    assert atoms.info["start_kind"] == "random" and atoms.info["spacegroup_start"] is None
    assert "does not fit the Wyckoff positions of space group 225" in atoms.info["start_status"]
    assert len(atoms) == 3 and _min_sep_violations(atoms) == 0


def test_molecule_starts_are_non_periodic_in_the_box():
    spec = make_spec(molecule="C4H6O", volumes={})
    for r in range(50):
        atoms = make_start(spec, r, 0)
        assert atoms.get_chemical_formula() == "C4H6O"
        assert not atoms.pbc.any()
        assert np.all(atoms.positions >= 0) and np.all(atoms.positions <= [10, 5, 5])
        d = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
        assert d.min() >= 0.7


def test_bad_input_is_one_line_rmerror():
    with pytest.raises(RMError, match="exactly one of"):
        make_spec(system="Li-S", composition="Li2S", volumes=VOLUMES)
    with pytest.raises(RMError, match="no per-element volume.*S"):
        make_spec(system="Li-S", volumes={"Li": 20.0})
    with pytest.raises(RMError, match="formula units"):
        make_spec(composition="Li2S", natoms="4-5", volumes=VOLUMES)
    with pytest.raises(RMError, match="1-230"):
        make_spec(system="C", spacegroup="231", volumes=VOLUMES)
    with pytest.raises(RMError, match="natoms"):
        make_spec(system="C", natoms="x", volumes=VOLUMES)


def test_shared_pyxtal_tolerances_leave_starts_unchanged(monkeypatch):
    """pyxtal's distance checks share one default Tol_matrix (a speed-up): the symmetric starts
    are the same to the bit as with pyxtal building its own per call."""
    import pyxtal.operations as ops
    from pyxtal.tolerance import Tol_matrix

    import rmsearch.starts as starts

    spec = make_spec(composition="Li2S", natoms="6-12", spacegroup="random", volumes=VOLUMES)
    shared = [make_start(spec, r, 4) for r in range(6)]
    assert ops.Tol_matrix is starts._shared_tol_matrix
    monkeypatch.setattr(ops, "Tol_matrix", Tol_matrix)
    monkeypatch.setattr(starts, "_share_default_tolerances", lambda: None)
    own = [make_start(spec, r, 4) for r in range(6)]
    assert ops.Tol_matrix is Tol_matrix
    for a, b in zip(shared, own):
        assert a.info["spacegroup_start"] == b.info["spacegroup_start"]
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cell, b.cell)


def test_pyxtal_check_budget_is_deterministic_and_falls_back(monkeypatch):
    """A start whose group pyxtal cannot fill within PYXTAL_CHECKS distance checks falls back
    to a random start: counted work, not seconds, so the same seed gives the same start."""
    import rmsearch.starts as starts

    spec = make_spec(composition="Li2S", natoms="12", spacegroup=225, volumes=VOLUMES)
    placed = make_start(spec, 0, 1)
    assert placed.info["spacegroup_start"] == 225 and starts._checks["used"] > 1
    monkeypatch.setattr(starts, "PYXTAL_CHECKS", 1)
    starved = [make_start(spec, 0, 1) for _ in range(2)]
    for atoms in starved:
        assert atoms.info["spacegroup_start"] is None and atoms.info["start_status"].startswith("fallback:")
        assert starts._checks["used"] == 2  # stopped at the first check over the budget
        assert starts._checks["limit"] is None  # pyxtal outside a start's draw is not bounded
    assert np.array_equal(starved[0].positions, starved[1].positions)


def test_weighted_groups_draw_only_weighted_groups_as_primitive_cells():
    """--spacegroup-weights: every symmetric start is in a weighted group, in proportion to the
    weights; a centred group (Fm-3m, 4 lattice points) is placed in its conventional cell and
    the start is its primitive cell with the atom count asked for."""
    vols = {"Na": 23.0, "Cl": 23.0}
    fcc = make_spec(composition="NaCl", natoms="2", spacegroup="random", volumes=vols, spacegroup_weights={225: 1})
    for r in range(6):
        atoms = make_start(fcc, r, 0)
        assert atoms.info["spacegroup_start"] == 225 and len(atoms) == 2, atoms.info
        assert _spg(atoms).number == 225 and _min_sep_violations(atoms) == 0
        lx, ly, _lz, xy, xz, yz = lammps_tilts(atoms.cell[:])
        assert abs(xy) <= lx / 2 + 1e-9 and abs(xz) <= lx / 2 + 1e-9 and abs(yz) <= ly / 2 + 1e-9
        assert atoms.get_chemical_formula() == "ClNa"
    both = make_spec(composition="NaCl", natoms="2", spacegroup="random", volumes=vols,
                     spacegroup_weights={221: 3, 225: 1, 229: 0})
    drawn = [make_start(both, r, 1).info["spacegroup_start"] for r in range(40)]
    assert set(drawn) == {221, 225} and 20 <= drawn.count(221) <= 38  # expected 30 of 40
    assert drawn == [make_start(both, r, 1).info["spacegroup_start"] for r in range(40)]  # deterministic
    # no weighted group holds the atoms (Im-3m cannot hold Na2Cl2): a random start that says so
    none = make_spec(composition="NaCl", natoms="2", spacegroup="random", volumes=vols, spacegroup_weights={229: 1})
    atoms = make_start(none, 0, 0)
    assert atoms.info["spacegroup_start"] is None and "--spacegroup-weights" in atoms.info["start_status"]


def test_bad_spacegroup_weights_are_one_line_rmerrors(tmp_path):
    for weights, match in (({231: 1}, "1-230"), ({225: float("nan")}, "finite"), ({225: -1}, ">= 0"),
                           ({225: 0}, "every weight is 0"), ({"x": 1}, "not a space group"),
                           (str(tmp_path / "missing.json"), "cannot read")):
        with pytest.raises(RMError, match=match):
            make_spec(composition="C", spacegroup="random", volumes=VOLUMES, spacegroup_weights=weights)
    with pytest.raises(RMError, match="random or mixed"):
        make_spec(composition="C", spacegroup=225, volumes=VOLUMES, spacegroup_weights={225: 1})
    (tmp_path / "w.json").write_text('{"227": 2, "194": 1}')
    spec = make_spec(composition="C", spacegroup="mixed", volumes=VOLUMES, spacegroup_weights=str(tmp_path / "w.json"))
    assert spec.spacegroup_weights == {194: 1.0, 227: 2.0}
    assert StartSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # as config.json stores it


def test_wyckoff_templates_place_atoms_on_the_given_sites():
    """--wyckoff: NaCl (8 atoms) in Cmcm on Na 4c + Cl 4c (one of five combinations pyxtal
    could choose) puts every start on those sites; two templates are drawn per start, both
    seen; the start records its template; the spec round-trips through config.json."""
    vols = {"Na": 23.0, "Cl": 23.0}
    spec = make_spec(composition="NaCl", natoms="8", volumes=vols, spacegroup=63, wyckoff="Na:4c,Cl:4c")
    in_cmcm = 0
    for r in range(8):
        atoms = make_start(spec, r, 0)
        data = _spg(atoms)
        assert atoms.info["wyckoff"] == "Cl:4c,Na:4c" and atoms.info["start_status"] == "ok"
        if data.number == 63:  # pyxtal's setting is spglib's standard one for Cmcm
            assert set(data.wyckoffs) == {"c"}
            in_cmcm += 1
    assert in_cmcm >= 4
    # rocksalt (Na 4a, Cl 4b) against the swapped assignment: both drawn, each exact Fm-3m
    two = make_spec(composition="NaCl", natoms="8", volumes=vols, spacegroup=225, wyckoff="Na:4a,Cl:4b;Na:4b,Cl:4a")
    drawn = [make_start(two, r, 0) for r in range(12)]
    assert {a.info["wyckoff"] for a in drawn} == {"Cl:4b,Na:4a", "Cl:4a,Na:4b"}
    assert all(_spg(a).number == 225 for a in drawn)
    assert [a.info["wyckoff"] for a in drawn] == [make_start(two, r, 0).info["wyckoff"] for r in range(12)]
    assert StartSpec.from_dict(json.loads(json.dumps(two.to_dict()))) == two  # as config.json stores it
    # without templates the starts are those of before (no extra draw from the generator)
    plain = make_spec(composition="NaCl", natoms="8", volumes=vols, spacegroup=63)
    assert "wyckoff" not in make_start(plain, 0, 0).info


def test_bad_wyckoff_templates_are_one_line_rmerrors(tmp_path):
    vols = {"Na": 23.0, "Cl": 23.0}
    for value, sg, match in (("Na:4a,Cl:4z", 225, "has no site 4z"), ("Na:4a,Cl:8c", 225, "not a cell of this search"),
                             ("Na4a", 225, "element:sites"), ("Xx:4a", 225, "site labels"),
                             ("Na:4a,Cl:4b", "random", "--spacegroup N"),
                             (str(tmp_path / "t.json"), 225, "cannot read")):
        if value.endswith(".json"):
            (tmp_path / "t.json").write_text("[{")
        with pytest.raises(RMError, match=match):
            make_spec(composition="NaCl", natoms="8", volumes=vols, spacegroup=sg, wyckoff=value)
    (tmp_path / "t.json").write_text('[{"Na": ["4a"], "Cl": "4b"}]')
    spec = make_spec(composition="NaCl", natoms="8", volumes=vols, spacegroup=225, wyckoff=str(tmp_path / "t.json"))
    assert spec.wyckoff == ({"Cl": ("4b",), "Na": ("4a",)},)
