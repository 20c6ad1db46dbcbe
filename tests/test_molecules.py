"""The molecule datasets: the shipped SMILES list, its RDKit 3D build, and QM7b parsing/loading."""

from __future__ import annotations

import functools
import http.server
import logging
import threading

import numpy as np
import pytest
import scipy.io
from ase.data import covalent_radii
from rdkit import Chem

from rmdata.errors import RMError
from rmdata.molecules import (
    ALLOWED_ELEMENTS,
    MAX_HEAVY_ATOMS,
    QM7B_URLS,
    classical_mds,
    coulomb_matrix,
    load_molecules,
    load_qm7b,
    molecule_compositions,
    molecule_from_smiles,
    parse_qm7b,
    read_smiles_list,
)
from rmdata.utils import sha256_file


@pytest.fixture(scope="module")
def smiles_list() -> list[str]:
    return read_smiles_list()


@pytest.fixture(scope="module")
def molecules():
    return load_molecules(limit=505)  # the first 505: every chemical class of the hand-written list


def _write_qm7b(path, molecules, rng, size=23, dtype=np.float64):
    """A QM7b-layout .mat file: zero-padded Coulomb matrices X, random properties T."""
    x = np.stack([coulomb_matrix(m, size) for m in molecules]).astype(dtype)
    scipy.io.savemat(path, {"X": x, "T": rng.random((len(molecules), 14)).astype(np.float32)})
    return path


# ---------------------------------------------------------------- the SMILES list


def test_smiles_list_is_sensible(smiles_list):
    assert len(smiles_list) >= 300
    canonical = []
    for smi in smiles_list:
        mol = Chem.MolFromSmiles(smi)
        assert mol is not None, smi
        canonical.append(Chem.MolToSmiles(mol))
        assert canonical[-1] == smi, "list entries are canonical SMILES"
        heavy = [a for a in mol.GetAtoms() if a.GetAtomicNum() != 1]
        assert 1 <= len(heavy) <= MAX_HEAVY_ATOMS, smi
        assert {a.GetSymbol() for a in heavy} <= set(ALLOWED_ELEMENTS) - {"H"}, smi
        assert all(a.GetFormalCharge() == 0 and a.GetNumRadicalElectrons() == 0 for a in mol.GetAtoms()), smi
        assert len(Chem.GetMolFrags(mol)) == 1, smi
    assert len(set(canonical)) == len(canonical) >= 300


@pytest.mark.parametrize("klass, smarts", [
    ("alkane", "[CX4;!R]-[CX4;!R]-[CX4;!R]"), ("alkene", "[CX3]=[CX3]"), ("alkyne", "C#C"),
    ("alcohol", "[CX4][OX2H]"), ("ether", "[#6][OX2][#6]"), ("aldehyde", "[CX3H1](=O)[#6]"),
    ("ketone", "[#6][CX3](=O)[#6]"), ("acid", "[CX3](=O)[OX2H1]"), ("ester", "[#6][CX3](=O)[OX2][#6]"),
    ("amine", "[NX3;H2,H1;!$(NC=O)][CX4]"), ("amide", "[NX3][CX3](=O)"), ("nitrile", "C#N"),
    ("imine", "[CX3]=[NX2]"), ("furan", "c1ccoc1"), ("pyrrole", "c1cc[nH]c1"), ("thiophene", "c1ccsc1"),
    ("oxazole", "c1cocn1"), ("pyridine", "c1ccncc1"), ("thiol", "[SX2H]"), ("thioether", "[#6][SX2][#6]"),
    ("chloride", "[#6]Cl"), ("three-ring", "[r3]"), ("four-ring", "[r4]"), ("benzene", "c1ccccc1"),
])
def test_smiles_list_covers_chemical_classes(smiles_list, klass, smarts):
    pattern = Chem.MolFromSmarts(smarts)
    hits = sum(Chem.MolFromSmiles(s).HasSubstructMatch(pattern) for s in smiles_list)
    assert hits >= 2, f"fewer than 2 {klass} molecules"


# ---------------------------------------------------------------- 3D molecules


def test_molecules_are_physical(molecules, smiles_list):
    assert len(smiles_list) >= 4000 and len(molecules) == 505  # the fixture builds the first 505
    smiles_list = smiles_list[:505]
    ids = [m.info["source_id"] for m in molecules]
    assert ids == [f"mol-{i:04d}" for i in range(len(smiles_list))]
    ch = []
    for atoms, smi in zip(molecules, smiles_list):
        assert atoms.info["smiles"] == smi
        assert not atoms.pbc.any() and np.allclose(atoms.cell.array, 0.0)
        assert np.abs(atoms.positions.mean(axis=0)).max() < 1e-10
        d = atoms.get_all_distances()
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.7, smi
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))  # same atom order as the build
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == atoms.numbers.tolist()
        for bond in mol.GetBonds():
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            zi, zj = sorted((atoms.numbers[i], atoms.numbers[j]))
            if (zi, zj) == (1, 6):
                ch.append(d[i, j])
                assert 1.05 <= d[i, j] <= 1.15, (smi, d[i, j])
            ref = covalent_radii[zi] + covalent_radii[zj]
            assert 0.75 * ref <= d[i, j] <= 1.15 * ref, (smi, i, j, d[i, j], ref)
    assert 1.08 < np.mean(ch) < 1.11  # MMFF94 C-H bonds ~1.09-1.10 A


def test_molecules_are_deterministic(molecules):
    again = load_molecules(limit=25)
    assert len(again) == 25
    for a, b in zip(again, molecules[:25]):
        assert a.info == b.info
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)


def test_molecule_from_smiles_geometry_and_errors(tmp_path):
    water = molecule_from_smiles("O")
    assert water.get_chemical_formula() == "H2O"
    d = water.get_all_distances()
    assert 0.94 < d[0, 1] < 0.99 and abs(d[0, 1] - d[0, 2]) < 1e-6  # MMFF94 O-H ~0.97 A
    assert 100.0 < water.get_angle(1, 0, 2) < 109.0
    with pytest.raises(RMError, match="cannot parse"):
        molecule_from_smiles("C1CC")
    with pytest.raises(RMError, match="limit"):
        load_molecules(limit=0)
    (tmp_path / "bad.txt").write_text("# two molecules\nCC\nC1CC\n")
    with pytest.raises(RMError, match="C1CC"):
        load_molecules(path=tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(RMError, match="no SMILES"):
        load_molecules(path=tmp_path / "empty.txt")
    ethane = load_molecules(path=tmp_path / "bad.txt", limit=1)
    assert [a.info["smiles"] for a in ethane] == ["CC"]


def test_compositions_from_list_match_built_molecules(molecules):
    from_list = {f: [i for i in ids if int(i.split("-")[1]) < len(molecules)]
                 for f, ids in molecule_compositions().items()}
    from_list = {f: ids for f, ids in from_list.items() if ids}
    assert from_list == molecule_compositions(molecules)
    assert sum(len(v) for v in from_list.values()) == len(molecules)
    assert "C7H16" in from_list and "CH4" in from_list
    methanol = [m.info["source_id"] for m in molecules if m.info["smiles"] == "CO"]
    assert from_list["CH4O"] == methanol  # its only isomer


# ---------------------------------------------------------------- QM7b


def test_classical_mds_recovers_random_point_clouds():
    rng = np.random.default_rng(3)
    pts = rng.normal(scale=2.0, size=(4, 9, 3))
    d = np.linalg.norm(pts[:, :, None] - pts[:, None], axis=-1)
    rec = classical_mds(d)
    np.testing.assert_allclose(np.linalg.norm(rec[:, :, None] - rec[:, None], axis=-1), d, atol=1e-10)
    np.testing.assert_allclose(rec.mean(axis=1), 0.0, atol=1e-12)
    line = np.zeros((3, 3))
    line[:, 0] = [0.0, 1.2, 2.5]  # collinear: a rank-1 Gram matrix still embeds exactly
    rec = classical_mds(np.abs(line[:, None, 0] - line[None, :, 0]))
    np.testing.assert_allclose(np.linalg.norm(rec[:, None] - rec[None], axis=-1),
                               np.abs(line[:, None, 0] - line[None, :, 0]), atol=1e-12)


def test_qm7b_round_trip(tmp_path, molecules):
    rng = np.random.default_rng(0)
    path = _write_qm7b(tmp_path / "qm7b.mat", molecules, rng)
    parsed = parse_qm7b(path)
    assert len(parsed) == len(molecules)
    for i, (ref, got) in enumerate(zip(molecules, parsed)):
        assert got.info["source_id"] == f"qm7b-{i:04d}"
        assert got.get_chemical_symbols() == ref.get_chemical_symbols()
        assert not got.pbc.any()
        np.testing.assert_allclose(got.get_all_distances(), ref.get_all_distances(), atol=1e-6, rtol=0)
    symbols = {s for a in parsed for s in a.get_chemical_symbols()}
    assert symbols == set(ALLOWED_ELEMENTS)


def test_qm7b_single_precision_and_bad_rows(tmp_path, molecules, caplog):
    rng = np.random.default_rng(1)
    mols = molecules[:40]
    x = np.stack([coulomb_matrix(m) for m in mols]).astype(np.float32)
    x[5, 0, 0] = 0.5 * 5.0**2.4  # boron: not a QM7b element
    x[9, 1, 2] = x[9, 2, 1] = 0.3 * x[9, 1, 2]  # distances no longer Euclidean in 3D
    scipy.io.savemat(tmp_path / "q.mat", {"X": x, "T": rng.random((40, 14))})
    with caplog.at_level(logging.WARNING, logger="rmdata.molecules"):
        parsed = parse_qm7b(tmp_path / "q.mat")
    ids = [a.info["source_id"] for a in parsed]
    assert len(parsed) == 38 and "qm7b-0005" not in ids and "qm7b-0009" not in ids and "qm7b-0010" in ids
    assert "qm7b-0005" in caplog.text and "qm7b-0009" in caplog.text
    by_id = {a.info["source_id"]: a for a in parsed}
    for i in (0, 10, 39):
        np.testing.assert_allclose(by_id[f"qm7b-{i:04d}"].get_all_distances(), mols[i].get_all_distances(),
                                   atol=1e-4)


def test_qm7b_padding_anywhere_and_units_check(tmp_path, molecules):
    mol = molecules[3]
    n = len(mol)
    x = np.zeros((1, 23, 23))
    keep = np.r_[0:2, 4:n + 2]  # padding rows 2 and 3 inside the matrix
    x[0][np.ix_(keep, keep)] = coulomb_matrix(mol, n)
    scipy.io.savemat(tmp_path / "pad.mat", {"X": x})
    (got,) = parse_qm7b(tmp_path / "pad.mat")
    np.testing.assert_allclose(got.get_all_distances(), mol.get_all_distances(), atol=1e-6)
    # a matrix built with distances in A instead of Bohr puts C-H at 0.58 A
    angstrom = np.stack([coulomb_matrix(m) for m in molecules[:20]]) * 0.529177
    angstrom[:, np.arange(23), np.arange(23)] /= 0.529177
    scipy.io.savemat(tmp_path / "ang.mat", {"X": angstrom})
    with pytest.raises(RMError, match="atomic units"):
        parse_qm7b(tmp_path / "ang.mat")


def test_qm7b_unreadable_files(tmp_path):
    (tmp_path / "junk.mat").write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(RMError, match="junk.mat"):
        parse_qm7b(tmp_path / "junk.mat")
    with pytest.raises(RMError, match="no such file"):
        parse_qm7b(tmp_path / "missing.mat")
    scipy.io.savemat(tmp_path / "nox.mat", {"T": np.zeros((2, 14))})
    with pytest.raises(RMError, match="'X'"):
        parse_qm7b(tmp_path / "nox.mat")


@pytest.fixture()
def loopback(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def test_load_qm7b_downloads_caches_and_verifies(tmp_path, loopback, molecules, monkeypatch):
    assert all(u.endswith("/qm7b.mat") for u in QM7B_URLS)
    www, base = loopback
    src = _write_qm7b(www / "qm7b.mat", molecules[:30], np.random.default_rng(2))
    digest = sha256_file(src)
    cache = tmp_path / "cache"
    with pytest.raises(RMError, match="checksum"):  # the pinned checksum is QM7b's, not this file's
        load_qm7b(cache_dir=cache, url=f"{base}/qm7b.mat")
    assert not (cache / "qm7b.mat").exists()
    got = load_qm7b(cache_dir=cache, url=f"{base}/qm7b.mat", sha256=digest)
    assert len(got) == 30 and (cache / "qm7b.mat").exists()
    np.testing.assert_allclose(got[7].get_all_distances(), molecules[7].get_all_distances(), atol=1e-6)
    (www / "qm7b.mat").unlink()  # server no longer has it: the verified cache is used
    again = load_qm7b(cache_dir=cache, url=f"{base}/qm7b.mat", sha256=digest)
    np.testing.assert_array_equal(again[7].positions, got[7].positions)
    with pytest.raises(RMError, match="HTTP 404"):
        load_qm7b(cache_dir=tmp_path / "empty", url=f"{base}/qm7b.mat", sha256=None)
    # primary missing, mirror serves the file: falls back; trust on first use records the checksum
    (www / "mirror").mkdir()
    _write_qm7b(www / "mirror" / "qm7b.mat", molecules[:12], np.random.default_rng(4))
    monkeypatch.setattr("rmdata.molecules.QM7B_URLS", (f"{base}/qm7b.mat", f"{base}/mirror/qm7b.mat"))
    fell_back = load_qm7b(cache_dir=tmp_path / "tofu", sha256=None)
    assert len(fell_back) == 12
    recorded = (tmp_path / "tofu" / "qm7b.mat.sha256").read_text().split()[0]
    assert recorded == sha256_file(www / "mirror" / "qm7b.mat")
