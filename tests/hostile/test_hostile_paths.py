"""Paths: blanks, non-ASCII and long names must work; an output that is the input, a folder,
too long a name or an existing file (without --overwrite) is refused before anything is
written. Outputs get the usual permissions (0666 less the umask)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import rmdata
from helpers.hostile import check_ok, check_refused, expected_mode, snapshot
from rmdata.cli import main as rmdata_main
from rmsearch.cli import main as rmsearch_main

LEGIT_NAMES = ["with space.xyz", "ünïcødé.xyz", "日本語 データ.xyz", "a'quote.xyz", "semi;colon.xyz",
               "-dash-first.xyz", "x" * 236 + ".xyz", "é" * 100 + ".xyz"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", LEGIT_NAMES)
def test_make_and_convert_work_with_odd_but_legal_names(name, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "in dir ü"
    folder.mkdir()
    src = folder / name
    shutil.copy(hostile_inputs / "cell.xyz", src)
    out = tmp_path / "out é" / name
    check_ok(rmdata_main, ["make", "--input", src, "-o", out, "-j", "1", "--levels", "0,1", "--strains", "0"])
    assert len(rmdata.read(out)) == 2
    h5 = out.with_suffix(".h5")
    check_ok(rmdata_main, ["convert", out, h5])
    assert "frames:      2" in check_ok(rmdata_main, ["info", h5])
    assert (out.stat().st_mode & 0o777) == expected_mode() == (h5.stat().st_mode & 0o777)
    hidden = [p for p in tmp_path.rglob(".*")]
    assert not hidden, hidden


@pytest.mark.timeout(30)
@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".xyz"])
def test_make_rereads_its_own_output(suffix, hostile_inputs, tmp_path, monkeypatch):
    """rmdata's own files (HDF5 included) are valid --input: every frame becomes a reference."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / f"own{suffix}"
    shutil.copy(hostile_inputs / ("data.h5" if suffix != ".xyz" else "data.xyz"), src)
    before = snapshot(src)
    out = check_ok(rmdata_main, ["make", "--input", src, "-o", "again.xyz", "-j", "1", "--levels", "0",
                                 "--strains", "0"])
    assert "from 2 structures" in out
    frames = rmdata.read("again.xyz")
    assert [f.info["source_id"] for f in frames] == [f"{src.name}:0", f"{src.name}:1"]
    assert snapshot(src) == before


@pytest.mark.timeout(30)
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_outputs_honour_the_umask(umask, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = os.umask(umask)
    try:
        check_ok(rmdata_main, ["make", "--input", hostile_inputs / "cell.xyz", "-o", "a.h5", "-j", "1",
                               "--levels", "0", "--strains", "0"])
        check_ok(rmdata_main, ["convert", "a.h5", "a.xyz"])
        check_ok(rmsearch_main, ["collect", _copy_run(hostile_inputs, tmp_path)])
        for path in (tmp_path / "a.h5", tmp_path / "a.xyz", tmp_path / "run" / "results.db"):
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    finally:
        os.umask(old)


def _copy_run(hostile_inputs, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(hostile_inputs / "run", run)
    return run


SAME_AS_INPUT = ["same", "dot-slash", "absolute", "dot-dot", "symlink", "hardlink"]


def _alias(kind: str, src: Path, tmp: Path) -> str:
    if kind == "same":
        return src.name
    if kind == "dot-slash":
        return f"./{src.name}"
    if kind == "absolute":
        return str(src.resolve())
    if kind == "dot-dot":
        (tmp / "sub").mkdir(exist_ok=True)
        return f"sub/../{src.name}"
    link = tmp / f"link-{kind}{src.suffix}"
    (os.symlink if kind == "symlink" else os.link)(src, link)
    return link.name


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["make", "convert", "relax"])
@pytest.mark.parametrize("kind", SAME_AS_INPUT)
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_is_the_input_is_refused(command, kind, overwrite, hostile_inputs, tmp_path, monkeypatch):
    """Never overwrite an input, not even with --overwrite and however the path is spelled."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / ("d.xyz" if command == "convert" else "g.xyz")
    shutil.copy(hostile_inputs / ("data.xyz" if command == "convert" else "cell.xyz"), src)
    dest = _alias(kind, src, tmp_path)
    args = {"make": ["make", "--input", src.name, "-o", dest, "-j", "1"],
            "convert": ["convert", src.name, dest],
            "relax": ["relax", src.name, "--potential", "model:carbon-uf3", "-o", dest]}[command]
    args += ["--overwrite"] if overwrite else []
    cli = rmsearch_main if command == "relax" else rmdata_main
    err = check_refused(cli, args, names=("input",), watch=(tmp_path,))
    assert "never overwritten" in err


@pytest.mark.timeout(30)
def test_default_output_name_never_the_input(hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(hostile_inputs / "cell.xyz", "g.xyz")
    before = Path("g.xyz").read_bytes()
    check_ok(rmdata_main, ["make", "--input", "g.xyz", "-j", "1", "--levels", "0", "--strains", "0"])
    assert Path("g.xyz").read_bytes() == before
    assert len(rmdata.read("g.rm.xyz")) == 1
    # and the second run refuses to replace that default output
    check_refused(rmdata_main, ["make", "--input", "g.xyz", "-j", "1"], names=("g.rm.xyz",), watch=(tmp_path,))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["make", "convert", "make-default"])
def test_existing_output_needs_overwrite(command, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("old.xyz").write_text("previous\n")
    Path("diamond.xyz").write_text("previous\n")
    base = {"make": ["make", "--dataset", "diamond", "-o", "old.xyz", "-j", "1", "--levels", "0"],
            "make-default": ["make", "--dataset", "diamond", "-j", "1", "--levels", "0"],
            "convert": ["convert", hostile_inputs / "data.xyz", "old.xyz"]}[command]
    target = "diamond.xyz" if command == "make-default" else "old.xyz"
    err = check_refused(rmdata_main, base, names=(target,), watch=(tmp_path,))
    assert "--overwrite" in err
    check_ok(rmdata_main, [*base, "--overwrite"])
    assert len(rmdata.read(target)) >= 1


def _unwritable_cases():
    return ["a-folder", "parent-a-file", "name-256-bytes", "name-300-unicode", "folder-name-too-long", "empty",
            "in-proc", "new-folder-in-proc"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["make", "convert"])
@pytest.mark.parametrize("case", _unwritable_cases())
def test_output_that_cannot_be_written_is_refused(command, case, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.xyz").mkdir()
    (tmp_path / "file").write_text("x\n")
    dest = {"a-folder": "folder.xyz", "parent-a-file": "file/out.xyz", "name-256-bytes": "y" * 252 + ".xyz",
            "name-300-unicode": "é" * 150 + ".xyz", "folder-name-too-long": "d" * 300 + "/out.xyz",
            "empty": "", "in-proc": "/proc/x.xyz", "new-folder-in-proc": "/proc/new/x.xyz"}[case]
    args = (["make", "--dataset", "diamond", "-o", dest, "-j", "1"] if command == "make"
            else ["convert", hostile_inputs / "data.xyz", dest])
    check_refused(rmdata_main, args, names=("-o/--output", "DEST", dest or "-o"), watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(30)
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    check_refused(rmdata_main, ["make", "--dataset", "diamond", "-o", ro / "x.xyz", "-j", "1"],
                  names=("not writable",), watch=(tmp_path,))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["z" * 236 + ".xyz", "new/sub dir/x.h5", "new é/" + "z" * 236 + ".xyz"])
def test_failed_make_leaves_no_temporary_and_no_new_folder(name, hostile_inputs, tmp_path, monkeypatch):
    """Labelling that fails late (no structure survives --elements) leaves nothing: no
    temporary, however long the name, and no folder made for the output."""
    monkeypatch.chdir(tmp_path)
    check_refused(rmdata_main, ["make", "--dataset", "diamond", "--elements", "Si", "-o", name, "-j", "1"],
                  names=(name,), watch=(tmp_path,))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("spelling", ["-o", "--output", "--out"])
def test_every_output_spelling_is_accepted(spelling, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_ok(rmdata_main, ["make", "--dataset", "diamond", spelling, "m.xyz", "-j", "1", "--levels", "0"])
    check_ok(rmsearch_main, ["export", "model:carbon-uf3", spelling, "pot"])
    assert (tmp_path / "m.xyz").is_file() and (tmp_path / "pot" / "potential.json").is_file()
    assert (tmp_path / "pot" / "potential.json").stat().st_mode & 0o777 == expected_mode()
    for command in (["launch"], ["fit-native"], ["export"], ["make"], ["relax"]):
        cli = rmdata_main if command == ["make"] else rmsearch_main
        help_text = check_ok(cli, [*command, "--help"])
        assert "-o, --output, --out" in help_text, command


# ------------------------------------------------------------------ messages


@pytest.mark.timeout(30)
def test_messages_do_not_mislead(hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = check_refused(rmdata_main, ["convert", hostile_inputs / "data.xyz", "x.zzz"], names=("x.zzz",),
                        watch=(tmp_path,))
    assert "--format" not in err  # convert has no --format
    err = check_refused(rmsearch_main, ["analyze", hostile_inputs / "run", "--reference", "nope:val"],
                        names=("--reference",), watch=(tmp_path,))
    assert "--input" not in err
    err = check_refused(rmdata_main, ["make", "--dataset", "molecules", "--exclude-formulas", "C2?!"],
                        names=("C2?!",), watch=(tmp_path,))
    assert "()" not in err
    Path("bad.cif").write_bytes(b"garbage\x01\x02 not a cif\n")
    err = check_refused(rmdata_main, ["make", "--input", "bad.cif", "-o", "o.xyz"], names=("bad.cif",),
                        watch=(tmp_path,))
    assert "AssertionError: AssertionError" not in err and "()" not in err
    assert "(0, 2)" in check_ok(rmsearch_main, ["analyze", "--help"])
    assert "4,488" in check_ok(rmdata_main, ["datasets"])
    assert "default: 1]" not in check_ok(rmsearch_main, ["analyze", "--help"]).replace("\n", " ")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args, frames", [
    (["--dataset", "diamond", "--preset", "molecule"], 11),     # a crystal with the molecule preset
    (["--dataset", "diamond", "--strains", "none"], 11),        # no strained frames
    (["--dataset", "diamond", "--levels", "0", "--strains", "0.5,-0.5"], 2),  # the strain bounds
    (["--input", "{inp}/cell.cif", "--levels", "0,100", "--step-size", "0.05"], 22),  # 5 A of noise
])
def test_legitimate_edge_values_work(args, frames, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in args]
    check_ok(rmdata_main, ["make", *args, "-o", "e.xyz", "-j", "1"])
    assert len(rmdata.read("e.xyz")) == frames
