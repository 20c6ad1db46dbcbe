"""rmdata files: writers/readers, determinism, provenance, CLI and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from click.testing import CliRunner

import rmdata
from rmdata.cli import main
from rmdata.io import read_provenance
from rmdata.make import make_dataset


def run_cli(*args, cwd=None):
    runner = CliRunner()
    return runner.invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("suffix", [".xyz", ".h5"])
def test_same_seed_same_bytes(tmp_path, suffix):
    a, b, c = (tmp_path / f"{n}{suffix}" for n in "abc")
    make_dataset(a, "mp20-subset", split="val", limit=6, seed=3, workers=1)
    make_dataset(b, "mp20-subset", split="val", limit=6, seed=3, workers=2)  # workers do not matter
    make_dataset(c, "mp20-subset", split="val", limit=6, seed=4, workers=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_extxyz_and_hdf5_hold_the_same_frames(tmp_path):
    xyz, h5 = tmp_path / "d.xyz", tmp_path / "d.h5"
    make_dataset(xyz, "mp20-subset", split="val", limit=3, seed=1)
    make_dataset(h5, "mp20-subset", split="val", limit=3, seed=1)
    fa, fb = rmdata.read(xyz), rmdata.read(h5)
    assert len(fa) == len(fb) == 3 * 121
    for x, y in zip(fa, fb):
        assert x.get_chemical_formula() == y.get_chemical_formula()
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-7)  # extxyz keeps 8 decimals
        np.testing.assert_allclose(x.arrays["REF_forces"], y.arrays["REF_forces"], atol=1e-7)
        np.testing.assert_allclose(x.info["REF_stress"], y.info["REF_stress"], atol=1e-12)
        assert x.info["source_id"] == y.info["source_id"]
        assert x.info["noise_level"] == y.info["noise_level"]
        assert x.calc is None and "forces" not in x.arrays and "stress" not in x.info
    prov = read_provenance(h5)
    assert prov == read_provenance(xyz)
    assert prov["seed"] == 1 and prov["version"] == rmdata.__version__
    assert prov["config"]["source"]["sha256"].startswith("aa1908f4")


def test_convert_roundtrip(tmp_path):
    src, h5, back = tmp_path / "d.xyz", tmp_path / "d.h5", tmp_path / "back.xyz"
    make_dataset(src, "diamond", seed=0)
    assert run_cli("convert", str(src), str(h5)).exit_code == 0
    assert run_cli("convert", str(h5), str(back)).exit_code == 0
    a, b = rmdata.read(src), rmdata.read(back)
    np.testing.assert_allclose([x.arrays["REF_forces"] for x in a], [x.arrays["REF_forces"] for x in b])


def test_cli_make_info_and_mace_command(tmp_path):
    out = tmp_path / "mp20.h5"
    res = run_cli("make", "--dataset", "mp20-subset", "--k", "1.0", "--limit", "4", "-o", str(out), "-j", "1")
    assert res.exit_code == 0, res.output
    assert "484 frames from 4 structures" in res.output
    info = run_cli("info", str(out))
    assert "frames:      484" in info.output and "provenance" in info.output
    cmd = run_cli("mace-command", str(out)).output.strip().splitlines()
    assert cmd[0].startswith("rmdata convert") and cmd[1].startswith("mace_run_train")
    for flag in ("--forces_key=REF_forces", "--stress_key=REF_stress", "--energy_weight=0",
                 "--num_interactions=1", "--r_max=4.0", "--loss=stress"):
        assert flag in cmd[1]
    assert run_cli("datasets").output.count("\n") >= 7


def test_molecule_input_file(tmp_path):
    mols = [molecule("H2O"), molecule("CH4")]
    src = tmp_path / "mols.xyz"
    write(src, mols)
    out = tmp_path / "m.xyz"
    make_dataset(out, input_path=src, seed=0)
    frames = rmdata.read(out)
    assert len(frames) == 2 * 11
    assert all("REF_stress" not in f.info and not f.pbc.any() for f in frames)
    assert {f.info["config_type"] for f in frames} == {"rm_molecule"}


def test_elements_filter(tmp_path):
    out = tmp_path / "o.h5"
    summary = make_dataset(out, "mp20-subset", split="val", elements=["O", "Li", "Mg", "Si", "Ca"], seed=0)
    assert summary.n_structures > 0
    assert set(summary.elements) <= {"O", "Li", "Mg", "Si", "Ca"}


def test_containing_filter_keeps_any_structure_with_one_of_the_elements(tmp_path):
    from rmdata.datasets import load_structures

    summary = make_dataset(tmp_path / "lis.xyz", "mp20-subset", containing=["Li", "S"], levels=[0], strains=[0.0],
                           seed=0)
    expected = sum(bool({"Li", "S"} & set(a.get_chemical_symbols()))
                   for _, a in load_structures("mp20-subset", split="train", bad=[]))
    assert summary.n_structures == expected > 100  # 62 Li + 62 S crystals, 3 with both
    for frame in rmdata.read(tmp_path / "lis.xyz"):
        assert {"Li", "S"} & set(frame.get_chemical_symbols())


def test_also_stoichiometry_adds_the_prototypes_of_a_stoichiometry(tmp_path):
    """``--containing Li,S --also-stoichiometry AB2``: the Li/S crystals plus every AB2
    binary (fluorite PbF2 among them); --exclude-formulas still holds compositions out."""
    from rmdata.datasets import load_structures
    from rmdata.errors import RMError
    from rmdata.make import anonymous_formula, composition_key

    assert anonymous_formula("Li2S") == anonymous_formula("SiO2") == anonymous_formula("Ca2F4") == "AB2"
    train = [a for _, a in load_structures("mp20-subset", split="train", bad=[])]
    lis = [a for a in train if {"Li", "S"} & set(a.get_chemical_symbols())]
    ab2 = [a for a in train if anonymous_formula(a) == "AB2" and not {"Li", "S"} & set(a.get_chemical_symbols())]
    summary = make_dataset(tmp_path / "ab2.xyz", "mp20-subset", containing=["Li", "S"], also_stoichiometry=["AB2"],
                           exclude_formulas=["PbF2"], levels=[0], strains=[0.0], seed=0)
    formulas = {f.get_chemical_formula(mode="hill", empirical=True) for f in rmdata.read(tmp_path / "ab2.xyz")}
    kept = [a for a in lis + ab2 if composition_key(a) != "F2Pb"]
    assert summary.n_structures == len(kept) == len(lis) + len(ab2) - 1 and len(ab2) > 40
    assert "CaCl2" in formulas and "F2Pb" not in formulas  # fluorite-type CaCl2 added, PbF2 held out
    with pytest.raises(RMError, match="not an anonymous formula"):
        make_dataset(tmp_path / "x.xyz", "mp20-subset", also_stoichiometry=["Li2S"])
    assert not (tmp_path / "x.xyz").exists()


def test_exclude_formulas_holds_out_every_polymorph_and_isomer(tmp_path):
    """Crystals go by reduced formula (any cell size), molecules by molecular formula (C4H8 is not C2H4)."""
    from rmdata.make import composition_key

    assert composition_key("Co2Sb2", periodic=True) == composition_key("CoSb", periodic=True)
    assert composition_key("C4H8", periodic=False) != composition_key("C2H4", periodic=False)
    mols = tmp_path / "m.xyz"
    summary = make_dataset(mols, "molecules", exclude_formulas=["C3H6O", "C2H4"], limit=505, seed=0)
    formulas = {f.get_chemical_formula(mode="hill") for f in rmdata.read(mols)}
    assert "C3H6O" not in formulas and "C2H4" not in formulas and "C4H8" in formulas
    assert summary.n_structures == 505  # --limit counts the structures kept
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    from rmdata.molecules import read_smiles_list

    last = max(int(f.info["source_id"].split("-")[1]) for f in rmdata.read(mols))
    held = [s for s in read_smiles_list()[: last + 1] if CalcMolFormula(Chem.MolFromSmiles(s)) in ("C3H6O", "C2H4")]
    assert len(held) == last + 1 - 505 == 7 + 1  # every isomer skipped, nothing else
    crystals = tmp_path / "c.xyz"
    from rmdata.datasets import load_structures

    first = next(a for _, a in load_structures("mp20-subset", split="train", bad=[]))
    make_dataset(crystals, "mp20-subset", exclude_formulas=[first.get_chemical_formula()], limit=3,
                 levels=[0], strains=[0.0], seed=0)
    kept = {composition_key(f) for f in rmdata.read(crystals)}
    assert composition_key(first) not in kept and len(kept) == 3
    res = CliRunner().invoke(main, ["make", "--dataset", "molecules", "--exclude-formulas", "C3H6O?!",
                                    "-o", str(tmp_path / "x.xyz")])
    assert res.exit_code != 0 and "--exclude-formulas" in res.output and not (tmp_path / "x.xyz").exists()


def test_mace_command_recipe_options_and_bad_values(tmp_path):
    out = tmp_path / "d.xyz"
    make_dataset(out, "diamond", seed=0)
    cmd = run_cli("mace-command", str(out), "--max-L", "2", "--correlation", "3", "--lr-gamma", "0.97",
                  "--ema-decay", "0.99", "--dtype", "float32", "--restart").output
    for flag in ("--max_L=2", "--correlation=3", "--scheduler=ExponentialLR", "--lr_scheduler_gamma=0.97",
                 "--ema_decay=0.99", "--default_dtype=float32", "--restart_latest"):
        assert flag in cmd
    gpu = run_cli("mace-command", str(out), "--device", "cuda").output
    assert "--device=cuda" in gpu and "--default_dtype=float32" in gpu and "--batch_size=32" in gpu
    for bad in (["--epochs", "-1"], ["--r-max", "nan"], ["--channels", "0"], ["--lr-gamma", "1.5"],
                ["--ema-decay", "1"], ["--lr", "inf"], ["--seed", "-5"]):
        res = CliRunner().invoke(main, ["mace-command", str(out), *bad])
        assert res.exit_code != 0 and res.output.startswith("error: "), (bad, res.output)


# ------------------------------------------------------------------ bad input


def _bad(tmp_path, *args):
    out = tmp_path / "out.xyz"
    res = CliRunner().invoke(main, ["make", *args, "-o", str(out), "-j", "1"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.glob(".out.xyz*"))  # no partial output
    return lines[0]


def test_error_missing_file(tmp_path):
    msg = _bad(tmp_path, "--input", str(tmp_path / "nope.cif"))
    assert "nope.cif" in msg and "no such file" in msg


def test_error_unreadable_cif(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 3.0\nloop_\n_atom_site_label\n??? garbage\n")
    msg = _bad(tmp_path, "--input", str(bad))
    assert "broken.cif" in msg


def test_error_unknown_element(tmp_path):
    src = tmp_path / "x.xyz"
    src.write_text("2\n\nXx 0 0 0\nC 1.5 0 0\n")
    msg = _bad(tmp_path, "--input", str(src))
    assert "x.xyz" in msg


def test_error_overlapping_atoms(tmp_path):
    atoms = bulk("C", "diamond", a=3.567, cubic=True)
    atoms.positions[1] = atoms.positions[0] + 0.01
    src = tmp_path / "overlap.cif"
    write(src, atoms)
    msg = _bad(tmp_path, "--input", str(src))
    assert "overlap" in msg and "apart" in msg


def test_error_stress_for_molecule(tmp_path):
    src = tmp_path / "water.xyz"
    write(src, molecule("H2O"))
    msg = _bad(tmp_path, "--input", str(src), "--strains", "-0.05,0,0.05")
    assert "water" in msg and "periodic" in msg


def test_error_unknown_dataset_and_split(tmp_path):
    assert "unknown dataset" in _bad(tmp_path, "--dataset", "mp21")
    assert "no such split" in _bad(tmp_path, "--dataset", "mp20-subset", "--split", "test")


def test_bad_mp20_row_is_reported_and_skipped(tmp_path):
    import csv
    import io

    from rmdata.datasets import iter_mp20_csv

    good = bulk("Si", "diamond", a=5.43)
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    cif = str(CifWriter(AseAtomsAdaptor.get_structure(good)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", "material_id", "cif"])
    w.writerow([0, "mp-good", cif])
    w.writerow([1, "mp-bad", "data_x\nnot a cif"])
    bad: list[str] = []
    rows = list(iter_mp20_csv(io.StringIO(buf.getvalue()), "test.csv", bad))
    assert [r[0] for r in rows] == ["mp-good"]
    assert len(bad) == 1 and "mp-bad" in bad[0]


def test_hdf5_reader_rejects_wrong_layout(tmp_path):
    import h5py

    path = tmp_path / "wrong.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "rmdata"
        h5["numbers"] = np.array([6, 6])
    with pytest.raises(rmdata.RMError, match="wrong.h5: missing dataset"):
        rmdata.read(path)


def test_provenance_is_json_everywhere(tmp_path):
    out = tmp_path / "d.xyz"
    make_dataset(out, "diamond", seed=9, k=2.0)
    prov = read_provenance(out)
    json.dumps(prov)
    assert prov["config"]["presets"]["crystal"]["labels"]["k"] == 2.0
    assert len(prov["config_hash"]) == 16


def test_error_absurd_cell_or_coordinates(tmp_path):
    """Found by the fuzzer: a CIF with a = -1.6e15 A asked for a 26 GiB array."""
    atoms = bulk("C", "diamond", a=3.567, cubic=True)
    huge = atoms.copy()
    huge.set_cell([1.6e15, 3.567, 3.567])
    src = tmp_path / "huge.cif"
    write(src, huge)
    assert "lattice vector lengths" in _bad(tmp_path, "--input", str(src))
    flat = atoms.copy()
    flat.set_cell([[3.567, 0, 0], [3.567, 0.001, 0], [0, 0, 3.567]], scale_atoms=True)
    src = tmp_path / "flat.xyz"
    write(src, flat)
    assert "flat cell" in _bad(tmp_path, "--input", str(src))
    far = molecule("H2O")
    far.positions[0] = [5e4, 0, 0]
    src = tmp_path / "far.xyz"
    write(src, far)
    assert "Angstrom" in _bad(tmp_path, "--input", str(src))


def test_p1_fast_path_equals_pymatgen_cifparser_on_every_shipped_row():
    """MP-20 rows take a fast P1 path; it must give CifParser's structure exactly (sites in
    pymatgen's order, 1/3 and 2/3 rounding, wrapping), and odd CIFs must fall back."""
    import gzip
    import io
    import warnings
    from importlib.resources import files

    from pymatgen.io.cif import CifParser

    from rmdata.datasets import _p1_arrays, iter_mp20_csv, parse_cif_arrays

    fast_rows = 0
    for split in ("train", "val"):
        text = gzip.decompress((files("rmdata") / "data" / f"mp20_subset_{split}.csv.gz").read_bytes())
        for mid, cif in iter_mp20_csv(io.StringIO(text.decode()), split, [], lazy=True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = _p1_arrays(cif)
                ref = CifParser.from_str(cif, check_cif=False).parse_structures(primitive=False)[0]
            got = fast if fast is not None else parse_cif_arrays(mid, cif)
            fast_rows += fast is not None
            assert got[0].tolist() == list(ref.atomic_numbers), mid
            assert np.abs(got[1] - ref.cart_coords).max() < 1e-10, mid
            assert np.abs(got[2] - ref.lattice.matrix).max() < 1e-12, mid
    assert fast_rows >= 960  # all but the rows with a noble gas (no electronegativity)
    p1 = "data_x\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 3\n_cell_angle_alpha 90\n" \
         "_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_symmetry_equiv_pos_as_xyz\n{ops}\n" \
         "loop_\n_atom_site_type_symbol\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n" \
         "_atom_site_fract_z\n_atom_site_occupancy\n{sites}\n"
    assert _p1_arrays(p1.format(ops="'x, y, z'", sites="Na Na0 0 0 0 1\nCl Cl1 0.5 0.5 0.5 1")) is not None
    assert _p1_arrays(p1.format(ops="'x, y, z'\n'-x, -y, -z'", sites="Na Na0 0 0 0 1")) is None
    assert _p1_arrays(p1.format(ops="'x, y, z'", sites="Na Na0 0 0 0 0.5")) is None
    assert _p1_arrays(p1.format(ops="'x, y, z'", sites="Na+ Na0 0 0 0 1")) is None


def test_youngs_scales_the_stress_labels_only(tmp_path):
    """sigma = C : eps with C proportional to E: --youngs 0.1 gives a tenth of the preset's
    stress labels (E = 1 eV/A^3), the same forces and the same structures; recorded in the
    provenance."""
    si = tmp_path / "si.xyz"
    write(si, bulk("Si", "diamond", a=5.43))
    common = ["make", "-i", str(si), "--levels", "0,4", "--strains", "-0.05,0.05", "--seed", "3", "-j", "1"]
    assert run_cli(*common, "-o", str(tmp_path / "e1.xyz")).exit_code == 0
    assert run_cli(*common, "--youngs", "0.1", "-o", str(tmp_path / "e01.xyz")).exit_code == 0
    stiff, soft = rmdata.read(tmp_path / "e1.xyz"), rmdata.read(tmp_path / "e01.xyz")
    assert len(stiff) == len(soft) == 4
    for a, b in zip(stiff, soft):
        assert np.abs(a.info["REF_stress"]).max() > 1e-3  # strained frames carry stress
        np.testing.assert_allclose(b.info["REF_stress"], 0.1 * a.info["REF_stress"], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(b.arrays["REF_forces"], a.arrays["REF_forces"])
        np.testing.assert_array_equal(b.positions, a.positions)
    labels = read_provenance(tmp_path / "e01.xyz")["config"]["presets"]["crystal"]["labels"]
    assert labels["youngs"] == 0.1
    bad = run_cli(*common, "--youngs", "0", "-o", str(tmp_path / "bad.xyz"))
    assert bad.exit_code != 0 and "--youngs" in bad.output and not (tmp_path / "bad.xyz").exists()
