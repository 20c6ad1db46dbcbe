"""Malformed files of every supported format, given to every command that reads them.

extxyz (rmdata's labelled files and plain structures), HDF5 (rmdata's layout), CIF, POSCAR,
model files, potential directories, reference files, shards and run directories. Every
corruption is generated (seeded) from a good file; each must give one ``error:`` line
naming the file, no traceback, no output and the input unchanged. Bad shard records are
not fatal: ``collect``/``analyze`` list them as problems and go on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers.hostile import assert_clean_exit, check_refused, invoke
from rmdata.cli import main as rmdata_main
from rmsearch.cli import main as rmsearch_main

# ------------------------------------------------------------------ extxyz corruptions


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _xyz_corruptions(text: str, rng: np.random.Generator) -> dict[str, bytes]:
    """name -> bytes of a certainly-broken extxyz made from ``text`` (frames of 2 atoms)."""
    lines = _lines(text)
    out: dict[str, bytes] = {"empty": b"", "blank-lines": b"\n\n\n", "only-count": b"2\n"}
    # cut at the start of an atom or comment line: the frame then lacks atom lines
    cuts = [k for k in range(len(lines)) if k % 4 in (1, 2, 3)]
    for k in cuts:
        out[f"cut-line{k}"] = "".join(lines[:k]).encode()
    for s in range(3):
        out[f"random-bytes{s}"] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    body = text.encode()
    for s in range(2):
        pos = int(rng.integers(len(body) // 4, len(body) // 2))
        out[f"nul-bytes{s}"] = body[:pos] + b"\x00" * 16 + body[pos:]
    atom = lines[2].split()
    out["unknown-element"] = text.replace(lines[2], " ".join(["Xx", *atom[1:]]) + "\n", 1).encode()
    out["nan-position"] = text.replace(lines[2], " ".join([atom[0], "nan", *atom[2:]]) + "\n", 1).encode()
    out["inf-position"] = text.replace(lines[2], " ".join([atom[0], "inf", *atom[2:]]) + "\n", 1).encode()
    out["huge-position"] = text.replace(lines[2], " ".join([atom[0], "1e300", *atom[2:]]) + "\n", 1).encode()
    out["atoms-on-one-site"] = text.replace(lines[3], " ".join([lines[3].split()[0], *atom[1:]]) + "\n", 1).encode()
    out["count-too-big"] = text.replace(lines[0], "7\n", 1).encode()
    out["count-negative"] = text.replace(lines[0], "-2\n", 1).encode()
    out["count-not-a-number"] = text.replace(lines[0], "two\n", 1).encode()
    out["zero-cell"] = _replace_lattice(text, "0 0 0 0 0 0 0 0 0").encode()
    out["flat-cell"] = _replace_lattice(text, "3 0 0 3 0 0 0 0 3").encode()
    out["lattice-nan"] = _replace_lattice(text, "nan 0 0 0 3 0 0 0 3").encode()
    return out


def _replace_lattice(text: str, lattice: str) -> str:
    import re

    return re.sub(r'Lattice="[^"]*"', f'Lattice="{lattice}"', text)


def _labelled_xyz_corruptions(text: str, rng) -> dict[str, bytes]:
    out = _xyz_corruptions(text, rng)
    out["stress-8-numbers"] = _replace_key(text, "REF_stress", '"1 2 3 4 5 6 7 8"').encode()
    out["forces-column-missing"] = text.replace("REF_forces:R:3", "REF_f:R:3").encode()
    return out


def _replace_key(text: str, key: str, value: str) -> str:
    import re

    return re.sub(key + r'="[^"]*"', f"{key}={value}", text)


# HDF5: truncations, garbage and structural edits of rmdata's layout

def _h5_edits() -> dict[str, callable]:
    def drop(name):
        return lambda h5: h5.__delitem__(name)

    def replace(name, fn):
        def edit(h5):
            data = fn(h5[name][()])
            del h5[name]
            h5[name] = data
        return edit

    return {
        "missing-positions": drop("positions"),
        "missing-n_atoms": drop("n_atoms"),
        "missing-source_id": drop("source_id"),
        "format-attr": lambda h5: h5.attrs.__setitem__("format", "other"),
        "positions-2-columns": replace("positions", lambda a: a[:, :2]),
        "forces-short": replace("REF_forces", lambda a: a[:-1]),
        "n_atoms-too-many": replace("n_atoms", lambda a: a + 1),
        "offsets-out-of-range": replace("offsets", lambda a: a + 1000),
        "offsets-negative": replace("offsets", lambda a: a - 1000),
        "element-zero": replace("numbers", lambda a: np.zeros_like(a)),
        "element-200": replace("numbers", lambda a: np.full_like(a, 200)),
        "cell-wrong-shape": replace("cell", lambda a: a.reshape(len(a), 9)),
        "stress-short": replace("REF_stress", lambda a: a[:-1]),
        "positions-a-group": lambda h5: (h5.__delitem__("positions"), h5.create_group("positions")),
    }


def _h5_corruptions(path: Path, rng, tmp: Path) -> dict[str, bytes]:
    body = path.read_bytes()
    out = {"empty": b"", "header-only": body[:8], "random-bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
           "text": b"this is not an HDF5 file\n", "zeroed-superblock": b"\x00" * 512 + body[512:]}
    for frac in (0.01, 0.1, 0.5, 0.9):
        out[f"cut-{frac}"] = body[: int(len(body) * frac)]
    for name, edit in _h5_edits().items():
        work = tmp / f"{name}.h5"
        shutil.copy(path, work)
        with h5py.File(work, "r+") as h5:
            edit(h5)
        out[name] = work.read_bytes()
        work.unlink()
    return out


@pytest.fixture(scope="session")
def corrupt_files(hostile_inputs, tmp_path_factory) -> dict[str, Path]:
    """All corrupted files, one folder: '<format>-<corruption>' -> path."""
    rng = np.random.default_rng(20)
    folder = tmp_path_factory.mktemp("corrupt")
    scratch = tmp_path_factory.mktemp("scratch")
    files: dict[str, Path] = {}
    groups = {
        "labelled.xyz": _labelled_xyz_corruptions((hostile_inputs / "data.xyz").read_text(), rng),
        "plain.xyz": _xyz_corruptions((hostile_inputs / "cell.xyz").read_text(), rng),
        "data.h5": _h5_corruptions(hostile_inputs / "data.h5", rng, scratch),
        "cell.cif": _cif_corruptions((hostile_inputs / "cell.cif").read_text(), rng),
        "POSCAR": _poscar_corruptions((hostile_inputs / "POSCAR").read_text(), rng),
    }
    for kind, variants in groups.items():
        for name, data in variants.items():
            stem, dot, suffix = kind.partition(".")
            path = folder / (f"{stem}-{name}.{suffix}" if dot else f"{name}-{kind}")
            path.write_bytes(data)
            files[f"{kind}:{name}"] = path
    return files


def _cif_corruptions(text: str, rng) -> dict[str, bytes]:
    lines = _lines(text)
    out = {"empty": b"", "random-bytes": rng.integers(0, 256, 400, dtype=np.uint8).tobytes(),
           "latin1": text.replace("C", "\xc7").encode("latin-1"),
           "no-cell": "".join(ln for ln in lines if not ln.startswith("_cell_length")).encode(),
           "zero-cell": text.replace("_cell_length_a", "_cell_length_a 0.0\n#", 1).encode(),
           "garbage-text": b"data_x\n_cell_length_a ?!\nloop_\n_atom_site_label\nfoo bar\n"}
    atom_lines = [i for i, ln in enumerate(lines) if ln.split() and ln.split()[0] == "C" and len(ln.split()) >= 5]
    first = lines[atom_lines[0]]
    out["unknown-element"] = text.replace(first, first.replace("C", "Xx", 1), 1).encode()
    parts = first.split()
    numeric = [k for k, p in enumerate(parts) if _is_float(p)]
    nan_line = " ".join("nan" if k == numeric[-4] else p for k, p in enumerate(parts)) + "\n"  # fract_x
    out["nan-coordinate"] = text.replace(first, nan_line, 1).encode()
    dup = " ".join(p + "9" if k == 1 else p for k, p in enumerate(parts)) + "\n"
    out["atoms-on-one-site"] = text.replace(first, first + dup, 1).encode()
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _poscar_corruptions(text: str, rng) -> dict[str, bytes]:
    lines = _lines(text)
    out = {"empty": b"", "random-bytes": rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
           "cut-after-cell": "".join(lines[:5]).encode(), "cut-one-atom": "".join(lines[:-1]).encode(),
           "zero-cell": "".join(lines[:2] + ["0 0 0\n"] * 3 + lines[5:]).encode(),
           "count-too-big": "".join(lines[:6] + ["9\n"] + lines[7:]).encode(),
           "scale-nan": "".join(lines[:1] + ["nan\n"] + lines[2:]).encode(),
           "coordinate-nan": "".join(lines[:-1] + ["nan 0 0\n"]).encode()}
    return out


FILE_COMMANDS = {
    "make": lambda f: ["make", "--input", f, "-j", "1", "-o", "out.xyz"],
    "make-h5": lambda f: ["make", "--input", f, "-j", "1", "-o", "out.h5"],
    "info": lambda f: ["info", f],
    "convert": lambda f: ["convert", f, "out.h5" if f.suffix != ".h5" else "out.xyz"],
    "mace-command": lambda f: ["mace-command", f],
}
#: corruptions a plain structure file may have for ``make --input`` (labels are not needed)
LABEL_ONLY = {"stress-8-numbers", "forces-column-missing"}


def _file_cases():
    probe = {  # the corruption names, without building the files at collection time
        "labelled.xyz": list(_labelled_xyz_corruptions(_SAMPLE_XYZ, np.random.default_rng(20))),
        "plain.xyz": list(_xyz_corruptions(_SAMPLE_XYZ_PLAIN, np.random.default_rng(20))),
        "data.h5": ["empty", "header-only", "random-bytes", "text", "zeroed-superblock", "cut-0.01", "cut-0.1",
                    "cut-0.5", "cut-0.9", *_h5_edits()],
        "cell.cif": ["empty", "random-bytes", "latin1", "no-cell", "zero-cell", "garbage-text", "unknown-element",
                     "nan-coordinate", "atoms-on-one-site"],
        "POSCAR": ["empty", "random-bytes", "cut-after-cell", "cut-one-atom", "zero-cell", "count-too-big",
                   "scale-nan", "coordinate-nan"],
    }
    for kind, names in probe.items():
        commands = ["make", "make-h5"] if kind in ("cell.cif", "POSCAR") else list(FILE_COMMANDS)
        for name in names:
            for command in commands:
                if command.startswith("make") and name in LABEL_ONLY:
                    continue
                yield pytest.param(f"{kind}:{name}", command, id=f"{command}-{kind}-{name}")


_SAMPLE_XYZ = """2
Lattice="0.0 1.7835 1.7835 1.7835 0.0 1.7835 1.7835 1.7835 0.0" Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_stress="1 2 3 4 5 6 7 8 9" pbc="T T T"
C 0.0 0.0 0.0 0.1 0.1 0.1
C 0.89 0.89 0.89 -0.1 -0.1 -0.1
2
Lattice="0.0 1.7835 1.7835 1.7835 0.0 1.7835 1.7835 1.7835 0.0" Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_stress="1 2 3 4 5 6 7 8 9" pbc="T T T"
C 0.0 0.0 0.0 0.1 0.1 0.1
C 0.89 0.89 0.89 -0.1 -0.1 -0.1
"""
_SAMPLE_XYZ_PLAIN = """2
Lattice="0.0 1.7835 1.7835 1.7835 0.0 1.7835 1.7835 1.7835 0.0" Properties=species:S:1:pos:R:3 pbc="T T T"
C 0.0 0.0 0.0
C 0.89 0.89 0.89
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key, command", list(_file_cases()))
def test_malformed_file_is_refused(key, command, corrupt_files, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = corrupt_files[key]
    check_refused(rmdata_main, FILE_COMMANDS[command](path), names=(path.name,),
                  watch=(tmp_path, path.parent))


def test_corruption_names_match_the_generated_files(corrupt_files):
    """The collected case list and the generated files agree (no case tests a missing file)."""
    keys = {p.values[0] for p in _file_cases()}
    assert keys <= set(corrupt_files)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["info", "convert", "mace-command"])
def test_unlabelled_structures_are_not_an_rmdata_file(command, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = hostile_inputs / "cell.xyz"
    err = check_refused(rmdata_main, FILE_COMMANDS[command](path), names=("cell.xyz",),
                        watch=(tmp_path, hostile_inputs))
    assert "rmdata make --input" in err  # says what to do


# ------------------------------------------------------------------ potentials and models

POTENTIAL_JSON = {
    "not-json": "{not json",
    "empty": "",
    "a-list": "[1, 2, 3]",
    "a-number": "42",
    "null": "null",
    "latin1-bytes": "\udcff",
    "missing-elements": {"drop": "elements"},
    "missing-volumes": {"drop": "volumes"},
    "elements-a-number": {"set": ("elements", 5)},
    "elements-unknown": {"set": ("elements", ["Xx", "S"])},
    "volumes-a-list": {"set": ("volumes", [1, 2])},
    "volume-negative": {"set": ("volumes", {"Li": -1.0, "S": 14.0})},
    "volume-nan": {"set": ("volumes", {"Li": "nan", "S": 14.0})},
    "volume-missing-element": {"set": ("volumes", {"Li": 14.0})},
    "cutoff-text": {"set": ("cutoff", "far")},
    "cutoff-nan": {"set": ("cutoff", "nan")},
    "cutoff-zero": {"set": ("cutoff", 0)},
    "pair-coeff-a-number": {"set": ("pair_coeff", 3)},
    "pair-style-braces": {"set": ("pair_style", "table {nope}")},
    "model-missing": {"set": ("model", "missing.model")},
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("variant", list(POTENTIAL_JSON))
def test_garbage_potential_json_is_refused_and_no_run_directory_is_made(variant, hostile_inputs, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    pot = tmp_path / "pot"
    shutil.copytree(hostile_inputs / "pot", pot)
    spec = POTENTIAL_JSON[variant]
    meta_path = pot / "potential.json"
    if isinstance(spec, str):
        meta_path.write_bytes(spec.encode("utf-8", "surrogateescape"))
    else:
        meta = json.loads(meta_path.read_text())
        if "drop" in spec:
            meta.pop(spec["drop"])
        else:
            meta[spec["set"][0]] = spec["set"][1]
        meta_path.write_text(json.dumps(meta))
    check_refused(rmsearch_main, ["launch", "-o", "run", "--potential", pot, "--nruns", "2", "--system", "Li-S"],
                  names=("potential.json", "missing.model"), watch=(tmp_path,))


MODEL_FILES = {
    "empty": b"",
    "text": b"not a model\n",
    "random-bytes": bytes(np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8)),
    "zip-header-only": b"PK\x03\x04" + b"\x00" * 40,
    "json": b'{"model": 1}',
    "pickle-of-a-dict": b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("variant", list(MODEL_FILES))
def test_bad_model_file_is_refused_by_export(variant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / f"{variant}.model"
    model.write_bytes(MODEL_FILES[variant])
    check_refused(rmsearch_main, ["export", model, "-o", "pot"], names=(model.name,), watch=(tmp_path,))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key", ["labelled.xyz:empty", "labelled.xyz:cut-line2", "labelled.xyz:random-bytes0",
                                 "labelled.xyz:forces-column-missing", "data.h5:cut-0.5", "data.h5:element-200",
                                 "data.h5:missing-positions", "labelled.xyz:nan-position"])
def test_bad_training_file_is_refused_by_fit_native(key, corrupt_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = corrupt_files[key]
    check_refused(rmsearch_main, ["fit-native", path, "-o", "pot", "--no-teacher"], names=(path.name,),
                  watch=(tmp_path, path.parent))


# ------------------------------------------------------------------ references

REFERENCE_FILES = {
    "empty.cif": b"",
    "garbage.cif": b"data_x\n_cell_length_a ?!\nloop_\n_atom_site_label\nfoo bar\n",
    "random.xyz": bytes(np.random.default_rng(4).integers(0, 256, 500, dtype=np.uint8)),
    "molecule.xyz": b"2\nProperties=species:S:1:pos:R:3\nC 0 0 0\nO 0 0 1.2\n",
    "nocif.csv": b"material_id,formula\nmp-1,C\n",
    "badrow.csv": b"material_id,cif\nmp-1,not a cif\n",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_bad_reference_file_is_refused_by_analyze(name, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(hostile_inputs / "run", run)
    ref = tmp_path / name
    ref.write_bytes(REFERENCE_FILES[name])
    check_refused(rmsearch_main, ["analyze", run, "--no-metrics", "--reference", ref], names=(name,),
                  watch=(tmp_path,))


# ------------------------------------------------------------------ shards and run directories


def _good_record(hostile_inputs) -> dict:
    shard = sorted((hostile_inputs / "run" / "shards").glob("*.jsonl"))[0]
    return json.loads(shard.read_text().splitlines()[0])


BAD_RECORDS = {
    "unknown-element": lambda r: {**r, "numbers": [0] + r["numbers"][1:]},
    "element-200": lambda r: {**r, "numbers": [200] + r["numbers"][1:]},
    "element-text": lambda r: {**r, "numbers": ["Cu"] + r["numbers"][1:]},
    "zero-cell": lambda r: {**r, "cell": [[0, 0, 0]] * 3},
    "flat-cell": lambda r: {**r, "cell": [[4, 0, 0], [4, 0, 0], [0, 0, 4]]},
    "cell-2x3": lambda r: {**r, "cell": [[4, 0, 0], [0, 4, 0]]},
    "count-mismatch": lambda r: {**r, "positions": r["positions"][:-1]},
    "positions-2d": lambda r: {**r, "positions": [p[:2] for p in r["positions"]]},
    "nan-positions": lambda r: {**r, "positions": [[None, 0, 0]] + r["positions"][1:]},
    "run-id-text": lambda r: {**r, "run_id": "seven"},
    "run-id-negative": lambda r: {**r, "run_id": -3},
    "missing-field": lambda r: {k: v for k, v in r.items() if k != "numbers"},
    "unknown-field": lambda r: {**r, "colour": "blue"},
    "energy-text": lambda r: {**r, "energy_per_atom": "low"},
    "pbc-one": lambda r: {**r, "pbc": [True]},
    "a-list": lambda r: [1, 2, 3],
}
RAW_LINES = {"not-json": b"{{{\n", "latin1": b"\xff\xfe\x00garbage\n", "truncated": b'{"run_id": 5, "seed"'}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("variant", list(BAD_RECORDS) + list(RAW_LINES))
def test_bad_shard_record_is_a_problem_not_a_crash(variant, hostile_inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hostile_inputs / "run", run)
    if variant in RAW_LINES:
        line = RAW_LINES[variant]
    else:
        rec = BAD_RECORDS[variant](_good_record(hostile_inputs))
        if isinstance(rec, dict):
            rec = {**rec, "run_id": rec["run_id"] if variant.startswith("run-id") else 900}
        line = (json.dumps(rec) + "\n").encode()
    with open(run / "shards" / "worker0.jsonl", "ab") as fh:
        fh.write(line)
    result = invoke(rmsearch_main, ["collect", run])
    assert_clean_exit(result, variant)
    assert result.exit_code == 0, result.output[-2000:]
    skipped = [ln for ln in result.output.splitlines() if ln.startswith("skipped:")]
    assert len(skipped) == 1, result.output[-2000:]  # the one bad record, under Problems
    assert "worker0.jsonl" in skipped[0] or "run 900" in skipped[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", ["zero-cell", "count-mismatch", "unknown-element"])
def test_analyze_reports_bad_records_under_problems(variant, hostile_inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hostile_inputs / "run", run)
    rec = {**BAD_RECORDS[variant](_good_record(hostile_inputs)), "run_id": 900}
    with open(run / "shards" / "worker0.jsonl", "ab") as fh:
        fh.write((json.dumps(rec) + "\n").encode())
    result = invoke(rmsearch_main, ["analyze", run, "--no-metrics", "--workers", "1"])
    assert_clean_exit(result, variant)
    assert result.exit_code == 0, result.output[-2000:]
    report = json.loads((run / "report" / "report.json").read_text())
    assert any("900" in p or "worker0.jsonl" in p for p in report["problems"]), report["problems"]
    from helpers.hostile import expected_mode

    assert (run / "report" / "index.html").stat().st_mode & 0o777 == expected_mode()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("config", [b"", b"{not json", b"[1]", b"\xff\xfe"])
def test_garbage_config_json_does_not_crash_collect(config, hostile_inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hostile_inputs / "run", run)
    (run / "config.json").write_bytes(config)
    result = invoke(rmsearch_main, ["collect", run])
    assert_clean_exit(result, config)
    assert result.exit_code == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["collect", "analyze", "status"])
@pytest.mark.parametrize("damage", ["no-shards", "shards-a-file", "rundir-a-file"])
def test_broken_run_directory_is_refused(command, damage, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    if damage == "rundir-a-file":
        run.write_text("not a folder\n")
    else:
        shutil.copytree(hostile_inputs / "run", run)
        shutil.rmtree(run / "shards")
        if damage == "shards-a-file":
            (run / "shards").write_text("x\n")
    if command == "status" and damage != "rundir-a-file":
        (run / "config.json").write_text("{not json")
    check_refused(rmsearch_main, [command, run], names=("run",), watch=(tmp_path,))
