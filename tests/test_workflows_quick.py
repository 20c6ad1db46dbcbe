"""Pieces of the molecules, MP-20 CSP and Li-S workflows, tested cheaply (no training).

End-to-end runs of these workflows take tens of minutes on 2 cores (training included) and
are recorded in RESULTS.md; here: the molecule validity checker on known good and bad
molecules, isomer lookup, the kick stage on a randomly initialised model, target
selection from ``csp15.json`` and the MP-20 subset, and the Li-S hull/antifluorite logic.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflows"))
CSP15 = ROOT / "rmdata" / "data" / "csp15.json"  # the 15 DiffCSP/Response Matching test compositions

import lis
import molecules
import mp20_csp

from rmsearch.analysis.molecules import (
    canonical_smiles,
    check_molecule,
    posebusters_checks,
    read_known_smiles,
)

warnings.filterwarnings("ignore", category=UserWarning)


# ----------------------------------------------------------------------------- molecules

@pytest.mark.parametrize("smiles", ["CC(C)=O", "C1COC1", "C=CC=C", "c1ccncc1", "CC(=O)NC", "ClCCS"])
def test_built_molecules_are_valid_and_known(smiles):
    from rdkit import Chem

    from rmdata.molecules import molecule_from_smiles

    atoms = molecule_from_smiles(smiles, seed=0)
    known = {canonical_smiles(smiles)}
    check = check_molecule(atoms, known)
    assert check.valid, check.reason
    assert check.smiles == Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)
    assert check.known


def test_isomer_is_valid_but_not_the_other_isomer():
    from rmdata.molecules import molecule_from_smiles

    acetone = molecule_from_smiles("CC(C)=O", seed=0)
    check = check_molecule(acetone, {canonical_smiles("CCC=O")})
    assert check.valid and not check.known  # propanal has the same formula, other bonds


def test_invalid_structures_are_rejected():
    from rmdata.molecules import molecule_from_smiles

    acetone = molecule_from_smiles("CC(C)=O", seed=0)
    # atoms scattered 3 A apart on a line: no bonds, many fragments
    apart = Atoms(acetone.numbers, positions=[[3.0 * k, 0, 0] for k in range(len(acetone))])
    assert not check_molecule(apart).valid
    # one H removed: a radical cannot sanitise at charge 0 with all valences filled
    radical = acetone[[k for k in range(len(acetone)) if k != int(np.where(acetone.numbers == 1)[0][0])]]
    bad = check_molecule(radical)
    assert not bad.valid and bad.reason
    # squeezed to 55 %: bonds of ~0.6-0.8 A are not chemistry
    squeezed = acetone.copy()
    squeezed.positions *= 0.55
    assert not check_molecule(squeezed).valid


def test_default_compositions_follow_their_rule():
    """In-training defaults: per heavy-atom count 4-7, the two formulas with most isomers in the
    offline set as it was when the rule was applied (its first 505 molecules; the set has grown
    since, and the defaults stay fixed); out-of-distribution ones have 8-9 heavy atoms and none
    is in the whole set."""
    from ase.formula import Formula

    from rmdata.molecules import molecule_compositions

    whole = molecule_compositions()
    groups = {f: [i for i in ids if int(i.split("-")[1]) < 505] for f, ids in whole.items()}
    groups = {f: ids for f, ids in groups.items() if ids}

    def heavy(f):
        return sum(n for el, n in Formula(f).count().items() if el != "H")

    for n in range(4, 8):
        ranked = sorted((f for f in groups if heavy(f) == n), key=lambda f: (-len(groups[f]), f))
        assert set(ranked[:2]) == {f for f in molecules.IN_TRAINING if heavy(f) == n}
    assert all(heavy(f) in (8, 9) and f not in whole for f in molecules.OUT_OF_DISTRIBUTION)


def test_posebusters_passes_a_good_molecule_and_fails_a_bad_one():
    pytest.importorskip("posebusters")
    from rmdata.molecules import molecule_from_smiles

    good = molecule_from_smiles("CC(C)=O", seed=0)
    stretched = good.copy()
    stretched.positions *= 1.25  # every bond 25 % long: bonds still perceived, geometry checks fail
    assert check_molecule(stretched).valid
    res = posebusters_checks([good, stretched])
    assert res is not None and res[0] and all(res[0].values())
    assert not res[1]["bond_lengths"] and not res[1]["internal_energy"]


def test_known_isomers_are_those_the_model_trained_on(tmp_path):
    """The molecules workflow calls an isomer known only when its training set held it: the
    offline set's first molecules with --exclude-formulas C4H10 are molecules 0, 1, 2, 5, 6,
    7 (methane .. neopentane without the two butanes), so a generated isobutane is new; the
    shipped recipe's list is the offline set's first 505."""
    from rmdata.make import make_dataset
    from rmdata.molecules import molecule_from_smiles

    data = tmp_path / "train.xyz"
    make_dataset(data, "molecules", limit=6, exclude_formulas=["C4H10"], levels=[0.0])
    indices = molecules.training_indices(data)
    assert indices == [0, 1, 2, 5, 6, 7]
    known = read_known_smiles(molecules.write_known_smiles(indices, tmp_path / "known.txt"))
    isobutane, neopentane = molecule_from_smiles("CC(C)C", seed=0), molecule_from_smiles("CC(C)(C)C", seed=0)
    assert not check_molecule(isobutane, known).known and check_molecule(isobutane, read_known_smiles()).known
    assert check_molecule(neopentane, known).known
    assert molecules.shipped_indices() == list(range(505))


def test_molecule_search_relaxes_with_the_nuclear_repulsion_core(tmp_path):
    """The molecules workflow's searches use its measured overlay (ZBL below each pair's
    fused distance, RESULTS.md) through ``rmsearch launch --core-repulsion``: stored in each
    run's config.json and in the summary, and the two-stage protocol ends in minima."""
    summary = molecules.main(["--out", str(tmp_path / "m"), "--compositions", "C2H6O", "--nstarts", "2",
                              "--no-posebusters", "--workers", "1"])
    config = json.loads((tmp_path / "m" / "runs" / "C2H6O" / "config.json").read_text())
    assert config["relax"]["core_repulsion"] == {"m": 1.0, "rc": 0.75, "covalent_scale": 0.7, "zbl": True}
    assert config["relax"]["kick"] == 0.75 and summary["protocol"]["core_repulsion"] == molecules.CORE
    assert summary["runs"] == 2 and summary["compositions"] == ["C2H6O"]


# ----------------------------------------------------------------------------- MP-20 CSP

def test_csp15_targets_and_launch_arguments():
    comps = mp20_csp.read_target_list(CSP15)
    assert len(comps) == 15
    args = {c: mp20_csp.search_args(c) for c in comps}
    assert args["Co2Sb2"] == ("CoSb", 4)
    assert args["KZnF3"][1] == 5 and args["Si2(CN2)4"][1] == 14 and args["Bi4S4Cl4"][1] == 12
    from pymatgen.core import Composition

    for c, (formula, natoms) in args.items():  # whole formula units give exactly the target cell
        units = natoms / Composition(formula).num_atoms
        assert units == int(units) and Composition(formula) * int(units) == Composition(c)


def test_csp15_selection_without_references_and_unknown_elements():
    wanted = mp20_csp.read_target_list(CSP15)
    known = {el for c in wanted for el in __import__("pymatgen.core", fromlist=["Composition"])
             .Composition(c).as_dict()} - {"Hg"}
    refs = [("fake-1", Atoms("Co2Sb2", scaled_positions=[[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                             cell=np.eye(3) * 4, pbc=True))]
    targets, notes = mp20_csp.select_targets(refs, known, 99, 20, wanted)
    assert len(targets) == 14  # Hg2S2O8 skipped: Hg unknown to the model
    assert any("Hg2S2O8" in n and "Hg" in n for n in notes)
    scored = [t for t in targets if t["atoms"] is not None]
    assert [t["formula"] for t in scored] == ["Co2Sb2"] and scored[0]["id"] == "fake-1"
    assert sum("searched, not scored" in n for n in notes) == 13


def test_val_split_selection_respects_elements_and_size():
    refs = mp20_csp.load_reference_atoms("mp20-subset:val")
    assert len(refs) == 123
    known = {"Li", "O", "S", "Mg", "Si", "Al", "Ca", "Na", "F", "Cl", "Zn", "Cu"}
    targets, _ = mp20_csp.select_targets(refs, known, 5, 8, None)
    assert 1 <= len(targets) <= 5
    for t in targets:
        assert set(t["atoms"].get_chemical_symbols()) <= known and len(t["atoms"]) == t["natoms"] <= 8
        assert mp20_csp.cell_formula(t["atoms"]) == t["formula"]
    # the order is the dataset order
    ids = [rid for rid, _ in refs]
    assert [ids.index(t["id"]) for t in targets] == sorted(ids.index(t["id"]) for t in targets)


def test_spacegroup_given_launch_fills_the_conventional_cell_of_the_reference_group():
    """A primitive rocksalt (2 atoms, Fm-3m) is searched in 225 with the 8 atoms of its
    conventional cell, and the Wyckoff start made from those arguments has the group."""
    from ase.build import bulk

    from rmsearch.starts import make_spec, make_start
    from rmsearch.symmetry import spacegroup_number

    prim = bulk("NaCl", "rocksalt", a=5.64)
    args, natoms = mp20_csp.spacegroup_launch_args(prim, len(prim))
    assert args == ["--spacegroup", "225", "--keep-symmetry"] and natoms == 8
    start = make_start(make_spec(composition="NaCl", natoms=str(natoms), volumes={"Na": 23.0, "Cl": 23.0},
                                 spacegroup=225), 0, 0)
    assert start.info["start_kind"] == "spacegroup" and spacegroup_number(start, 1e-5) == 225
    cubic = bulk("Po", "sc", a=3.3)  # primitive group: the count stays
    assert mp20_csp.spacegroup_launch_args(cubic, 1) == (["--spacegroup", "221", "--keep-symmetry"], 1)


# ----------------------------------------------------------------------------- Li-S

def test_antifluorite_recognised_in_other_cells_and_scales():
    from ase.build import bulk

    conv = lis.antifluorite()
    assert lis.is_antifluorite(conv)
    # primitive 3-atom cell at a 7 % smaller lattice constant (model volumes differ): still antifluorite
    prim = Atoms("SLi2", scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]],
                 cell=2.65 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]), pbc=True)
    assert len(prim) == 3 and lis.is_antifluorite(prim)
    assert not lis.is_antifluorite(bulk("LiS", "rocksalt", a=5.0))
    anti_sites = conv.copy()  # S and Li swapped: fluorite-type LiS2 ordering, not Li2S
    anti_sites.numbers = np.where(conv.numbers == 3, 16, 3)
    assert not lis.is_antifluorite(anti_sites)
    # another A2X (the tuning systems): Na2S antifluorite at its own lattice constant; Li2S is not Na2S
    na2s = lis.antifluorite(6.54, "Na", "S")
    assert na2s.get_chemical_formula() == "Na8S4" and lis.is_antifluorite(na2s, "Na", "S")
    assert not lis.is_antifluorite(conv, "Na", "S")


def test_system_option_takes_a_cation_and_an_anion():
    assert lis.parse_system("Li-Se") == ("Li", "Se") and lis.parse_system("Na-S") == ("Na", "S")
    for bad in ("Li", "Li-Li", "Li-Xx", "Li-S-O", ""):
        with pytest.raises(SystemExit, match="error: --system"):
            lis.parse_system(bad)


def test_hull_compositions_sorted_by_lithium_fraction():
    report = {"hull_vertices": [{"formula": "Li4S2", "e_ex": -0.9, "cluster_id": 0},
                                {"formula": "S8", "e_ex": 0.0, "cluster_id": 3},
                                {"formula": "Li2", "e_ex": 0.0, "cluster_id": 5},
                                {"formula": "Li2S8", "e_ex": -0.3, "cluster_id": 2}]}
    hull = lis.hull_compositions(report)
    assert [v["formula"] for v in hull] == ["S", "LiS4", "Li2S", "Li"]
    assert [v["x"] for v in hull] == pytest.approx([0.0, 0.2, 2 / 3, 1.0])


def test_a2x_check_on_a_run_directory(tmp_path):
    """a2x_check reads the representatives from shards: antifluorite vs a distorted Li2S."""
    from rmsearch.records import RunRecord, append_record

    anti = lis.antifluorite(5.6)
    other = Atoms("Li2S", scaled_positions=[[0, 0, 0], [0.5, 0, 0], [0.25, 0.5, 0.5]],
                  cell=[4.0, 4.5, 5.0], pbc=True)
    (tmp_path / "shards").mkdir()
    with open(tmp_path / "shards" / "w.jsonl", "ab") as fh:
        for rid, atoms in ((7, other), (9, anti)):
            append_record(fh, RunRecord.from_atoms(atoms, run_id=rid, seed=0, status="converged"))

    def cluster(cid, rep, formula, e_hull, e):
        return {"cluster_id": cid, "representative": rep, "formula": formula, "e_hull": e_hull,
                "energy_per_atom": e, "volume_per_atom": 10.0, "hits": 1,
                "spacegroups": {"0.1": [0, ""]}}

    on_hull = [cluster(0, 9, "Li8S4", 0.0, -1.0), cluster(1, 7, "Li2S", 0.2, -0.8)]
    res = lis.a2x_check(tmp_path, on_hull)
    assert res["on_hull"] and res["lowest"]["antifluorite"] and res["antifluorite_found"]
    assert res["n_clusters"] == 2
    off = [cluster(0, 7, "Li2S", 0.0, -1.0), cluster(1, 9, "Li8S4", 0.1, -0.9)]
    res = lis.a2x_check(tmp_path, off)
    assert res["on_hull"] and not res["lowest"]["antifluorite"] and res["antifluorite_found"]
    assert res["antifluorite"]["e_hull"] == pytest.approx(0.1)
    assert lis.a2x_check(tmp_path, [cluster(0, 7, "LiS", 0.0, -1.0)]) == {"found": False, "n_clusters": 0}


def test_native_molecules_workflow_holds_lightly_rattled_molecules(tmp_path):
    """workflows/native_molecules.py at test size: a linear SNAP fitted on 30 offline molecules
    brings 4 of them, rattled by +-0.05 A, back to the same molecule (RDKit SMILES), close to
    the reference geometry."""
    import native_molecules

    summary = native_molecules.main(["--out", str(tmp_path / "nm"), "--limit", "30", "--nmolecules", "4",
                                     "--rattle", "0.05", "--fit-options", "--kind snap --linear --rcut 4"])
    assert summary["molecules"] == 4 and summary["same_molecule"] == 4, summary["rows"]
    assert all(r["rmsd_A"] < 0.1 for r in summary["rows"]), summary["rows"]


def test_generation_draws_disjoint_sets_or_the_whole_split():
    """Table 1 draws: n generation rows and n other control rows when the split has 2n; n
    distinct rows each when it has n; else every row once plus the rest drawn with
    replacement for generation, and every row as the control."""
    import spacegroup_generation

    rows = [(str(i), None) for i in range(10)]
    gen, control = spacegroup_generation.draw_sets(rows, 4, np.random.default_rng(0))
    assert len(gen) == len(control) == 4 and not {r for r, _ in gen} & {r for r, _ in control}
    gen, control = spacegroup_generation.draw_sets(rows, 7, np.random.default_rng(0))
    assert len({r for r, _ in gen}) == len({r for r, _ in control}) == 7
    gen, control = spacegroup_generation.draw_sets(rows, 25, np.random.default_rng(0))
    assert len(gen) == 25 and {r for r, _ in gen} == {r for r, _ in control} == {str(i) for i in range(10)}


def test_generation_keeps_the_lowest_energy_start_of_each_pair():
    """With several starts per pair (results k, n + k, ...), the generated structure of pair k
    is its lowest-energy converged or step-limited result; a pair with none is left out."""
    import spacegroup_generation

    a, b, c, d = (Atoms("H", cell=[x, x, x], pbc=True) for x in (1.0, 2.0, 3.0, 4.0))
    results = [("converged", a, -1.0), ("error: x", b, -9.0), ("not_converged", c, -2.0),
               ("error: y", d, np.nan)]
    assert [x.cell[0, 0] for x in spacegroup_generation.lowest_per_pair(results, 2)] == [3.0]


def test_generation_refuses_a_bad_pressure(tmp_path):
    """--pressure-gpa must be a finite number >= 0 (GPa); nothing is written for a bad one."""
    import spacegroup_generation

    for bad in ("nan", "inf", "-1"):
        with pytest.raises(SystemExit, match="error: .*--pressure-gpa"):
            spacegroup_generation.main(["--out", str(tmp_path / "g"), "--pressure-gpa", bad])
    for bad in ("1,x", "0,nan", "-2"):
        with pytest.raises(SystemExit, match="error: --pressure-scan"):
            spacegroup_generation.main(["--out", str(tmp_path / "g"), "--pressure-scan", bad])
    assert not (tmp_path / "g").exists()


def test_pressure_scan_compresses_a_crystal_without_changing_its_structure(lj_potential):
    """Lennard-Jones fcc Li at its own 0 GPa minimum: the scan keeps it (V/V0 = 1) at 0 GPa,
    and at 1 and 3 GPa the cell shrinks, more at the higher pressure, while its CrystalNN
    fingerprint (fcc at any scale) stays within the COV threshold."""
    from ase.build import bulk

    import spacegroup_generation
    from rmsearch import relax_atoms

    fcc = relax_atoms(bulk("Li", "fcc", a=3.4, cubic=True), str(lj_potential), fmax=1e-4, smax_gpa=1e-4).atoms
    scan = spacegroup_generation.pressure_scan([fcc, fcc.copy()], str(lj_potential), [0.0, 1.0, 3.0], 500, 1)
    ratios = [row["median_volume_ratio"] for row in scan]
    assert [row["kept"] for row in scan] == [1.0, 1.0, 1.0] and not any(row["failed"] for row in scan)
    assert ratios[0] == pytest.approx(1.0, abs=1e-3) and 1.0 > ratios[1] > ratios[2] > 0.5


def test_generation_starts_on_the_wyckoff_sites_of_known_structure_types():
    """--wyckoff prior: a drawn primitive rocksalt (2 atoms, Fm-3m) gets the templates of the
    known AB crystals of Fm-3m in its conventional cell (4 + 4 atoms: rocksalt twice), and
    its start lies on them: the conventional cell pyxtal fills (8 atoms), exactly rocksalt (4a
    and 4b have no free parameter)."""
    from ase.build import bulk

    import spacegroup_generation
    from rmsearch.symmetry import WyckoffPrior

    known = [bulk("NaCl", "rocksalt", a=5.64), bulk("MgO", "rocksalt", a=4.2), bulk("CsCl", "cesiumchloride", a=4.1)]
    drawn = bulk("KBr", "rocksalt", a=6.6)
    templates = spacegroup_generation.pair_templates(WyckoffPrior(known), drawn)
    assert len(templates) == 2 and templates[0] == templates[1] and set(templates[0]) == {"K", "Br"}
    start = spacegroup_generation.generation_start(drawn, {"K": 40.0, "Br": 35.0}, 0, 0, tuple(templates))
    assert start.info["wyckoff"] and start.info["spacegroup_start"] == 225 and len(start) == 8
    assert mp20_csp.spacegroup_of(start) == "Fm-3m (225)"


def test_spacegroup_prior_leaves_out_target_compositions():
    """mp20_csp --spacegroup-prior: crystals of a target's composition (any cell size) are not
    counted, as the model never saw them; --spacegroup-prior needs drawn groups."""
    from pymatgen.core import Composition

    refs = mp20_csp.load_reference_atoms("mp20-subset:train")
    target = refs[0][1].get_chemical_formula()
    same = sum(Composition(a.get_chemical_formula()).reduced_formula == Composition(target).reduced_formula
               for _, a in refs)
    _, base = mp20_csp.spacegroup_prior("mp20-subset:train", [])
    prior, note = mp20_csp.spacegroup_prior("mp20-subset:train", [target])
    n_base, n = int(base.split()[2]), int(note.split()[2])
    assert same >= 1 and n == n_base - same and len(prior.groups) <= n
    with pytest.raises(SystemExit, match="error: --spacegroup-prior"):
        mp20_csp.main(["--out", "x", "--spacegroups", "none", "--spacegroup-prior", "mp20-subset:train"])
    with pytest.raises(SystemExit, match="error: --keep-symmetry"):
        mp20_csp.main(["--out", "x", "--spacegroups", "none", "--keep-symmetry"])
    with pytest.raises(SystemExit, match="error: --spacegroup-prior"):  # the default prior needs drawn groups
        mp20_csp.main(["--out", "x", "--spacegroup-given", "--spacegroup-prior", "mp20-subset:train"])


def test_unreadable_reference_or_prior_is_one_error_line(tmp_path):
    for option in ("--reference", "--spacegroup-prior"):
        with pytest.raises(SystemExit, match=f"error: {option} nope:val: cannot read structures"):
            mp20_csp.load_reference_atoms("nope:val", option)
    with pytest.raises(SystemExit, match="error: --reference .*missing.cif"):
        mp20_csp.main(["--out", str(tmp_path / "out"), "--reference", str(tmp_path / "missing.cif")])
    assert not (tmp_path / "out").exists()
