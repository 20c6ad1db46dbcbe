"""rmdata under faults: SIGKILL at random points, a full disk, and fuzzed malformed input."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rmdata
from rmdata.errors import RMError
from rmdata.make import make_dataset

MAKE = [sys.executable, "-m", "rmdata.cli", "make", "--dataset", "mp20-subset", "--split", "val",
        "--limit", "30", "--seed", "5", "-j", "1"]


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ crash and rerun


def _kill_once_writing(proc: subprocess.Popen, folder: Path, before: set[Path], delay_s: float) -> None:
    """SIGKILL ``proc`` ``delay_s`` after a new temporary output (one not in ``before``)
    appears in ``folder``, or at once if it exits first: the kill point follows the
    writer's progress, not the clock."""
    while proc.poll() is None and not set(_leftovers(folder)) - before:
        time.sleep(0.001)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("suffix", [".xyz", ".h5"])
def test_sigkill_at_random_points_then_rerun_gives_identical_output(tmp_path, suffix):
    ref = tmp_path / f"ref{suffix}"
    t0 = time.perf_counter()
    subprocess.run([*MAKE, "-o", str(ref)], check=True, capture_output=True)
    full = time.perf_counter() - t0
    rng = np.random.default_rng(11)
    out = tmp_path / f"out{suffix}"
    killed_mid_write = 0
    # seven kills a few ms into the write (whatever the machine's load), three at random
    # times of the whole run (mostly before the write starts)
    plan = [("writing", d) for d in rng.uniform(0.0, 0.01, size=7)]
    plan += [("clock", t) for t in rng.uniform(0.05, 0.95, size=3) * full]
    for kind, when in plan:
        before = set(_leftovers(tmp_path))  # earlier killed writers' temporaries
        proc = subprocess.Popen([*MAKE, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kind == "writing":
            _kill_once_writing(proc, tmp_path, before, when)
        else:
            time.sleep(when)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        killed_mid_write += bool(set(_leftovers(tmp_path)) - before)
        # never a truncated output under the final name
        assert not out.exists() or out.read_bytes() == ref.read_bytes()
        out.unlink(missing_ok=True)
    assert killed_mid_write >= 5  # the kills planned inside the write really interrupted it
    subprocess.run([*MAKE, "-o", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == ref.read_bytes()
    assert not _leftovers(tmp_path)  # the rerun removed the killed writers' temporaries


# ------------------------------------------------------------------ full disk


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int = 300):
    """A tmpfs of ``size_kb`` mounted at ``path`` (needs root; else the test fails loudly)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.parametrize("suffix", [".xyz", ".h5"])
def test_full_disk_gives_clear_error_and_keeps_previous_output(tmp_path, suffix):
    with small_filesystem(tmp_path / "small") as fs:
        out = fs / f"data{suffix}"
        out.write_text("previous output\n")
        proc = subprocess.run([*MAKE, "-o", str(out), "--overwrite"], capture_output=True, text=True)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert lines == [f"error: {out}: no space left on device; free some space and run again "
                         "(previous outputs were left intact)"], proc.stderr[-2000:]
        assert out.read_text() == "previous output\n"
        assert not _leftovers(fs)


def test_enospc_injected_at_the_write_call(tmp_path, monkeypatch):
    """Where no filesystem can be mounted: the same guarantee with the error injected."""
    out = tmp_path / "d.xyz"
    out.write_text("previous\n")
    import rmdata.io as rio

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rio.ExtxyzWriter, "write", full)
    with pytest.raises(RMError, match="no space left on device"):
        make_dataset(out, "diamond")
    assert out.read_text() == "previous\n" and not _leftovers(tmp_path)


# ------------------------------------------------------------------ fuzzed bad input

CIF_OK = """data_C
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   3.567
_cell_length_b   3.567
_cell_length_c   3.567
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  C  C0  0.00  0.00  0.00  1
  C  C1  0.25  0.25  0.25  1
  C  C2  0.00  0.50  0.50  1
  C  C3  0.25  0.75  0.75  1
  C  C4  0.50  0.00  0.50  1
  C  C5  0.75  0.25  0.75  1
  C  C6  0.50  0.50  0.00  1
  C  C7  0.75  0.75  0.25  1
"""

symbols = st.sampled_from(["C", "Si", "O", "Xx", "Qq", "H", "", "12", "c"])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from(["nan", "inf", "-0", "1e999", "abc", ""]))


@st.composite
def broken_extxyz(draw):
    n = draw(st.integers(0, 4))
    claimed = draw(st.one_of(st.just(n), st.integers(-2, 7), st.just("x")))
    lattice = draw(st.one_of(
        st.just('Lattice="4 0 0 0 4 0 0 0 4" '),
        st.just('Lattice="0 0 0 0 0 0 0 0 0" '),
        st.just('Lattice="1 0 0 1 0 0 0 0 1" '),
        st.just('Lattice="4 0 0 0 4 0" '),
        st.just("")))
    props = draw(st.sampled_from(["Properties=species:S:1:pos:R:3 ", "Properties=species:S:1:pos:R:2 ",
                                  "Properties=pos:R:3 ", "", "Properties=species:S:1:pos:R:3:forces:R:3 "]))
    pbc = draw(st.sampled_from(['pbc="T T T"', 'pbc="F F F"', 'pbc="T F T"', ""]))
    lines = [str(claimed), lattice + props + pbc]
    for _ in range(n):
        cols = [draw(symbols)] + [str(draw(numbers)) for _ in range(draw(st.integers(1, 6)))]
        lines.append(" ".join(cols))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@st.composite
def broken_cif(draw):
    lines = CIF_OK.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "garbage", "element", "number"]))
        if action == "drop":
            lines.pop(i)
        elif action == "garbage":
            lines[i] = draw(st.text(min_size=0, max_size=20))
        elif action == "element" and i >= len(lines) - 8:
            lines[i] = lines[i].replace("C ", draw(st.sampled_from(["Xx ", "Zz ", "? "])), 1)
        else:
            lines[i] = lines[i].replace("3.567", str(draw(numbers)))
    return "\n".join(lines) + "\n"


def _check_one_line_error_or_ok(src: Path, tmp: Path) -> None:
    out = tmp / "out.xyz"
    out.unlink(missing_ok=True)
    try:
        summary = make_dataset(out, input_path=src, seed=0, workers=1)
    except RMError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(src.name) in msg, msg
        assert not out.exists() and not _leftovers(tmp)
        return
    # accepted input must have produced a complete, readable dataset with finite labels
    frames = rmdata.read(out)
    assert len(frames) == summary.n_frames > 0
    assert all(np.isfinite(f.arrays["REF_forces"]).all() for f in frames)


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("name,strategy", [("input.xyz", broken_extxyz()), ("input.cif", broken_cif())])
def test_fuzzed_structure_files(tmp_path_factory, name, strategy, data):
    tmp = tmp_path_factory.mktemp("fz")
    src = tmp / name
    src.write_text(data.draw(strategy))
    _check_one_line_error_or_ok(src, tmp)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(n_atoms=st.integers(0, 5), shape=st.sampled_from(["ok", "pos2", "forces_short", "no_offsets", "cell2",
                                                            "count_mismatch", "not_rmdata"]))
def test_fuzzed_hdf5(tmp_path_factory, n_atoms, shape):
    tmp = tmp_path_factory.mktemp("fh")
    path = tmp / "data.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "other" if shape == "not_rmdata" else "rmdata"
        h5["numbers"] = np.full(n_atoms, 6)
        h5["positions"] = np.zeros((n_atoms, 2 if shape == "pos2" else 3))
        h5["REF_forces"] = np.zeros((max(n_atoms - (shape == "forces_short"), 0), 3))
        h5["n_atoms"] = np.array([n_atoms + (shape == "count_mismatch")])
        if shape != "no_offsets":
            h5["offsets"] = np.array([0])
        h5["cell"] = np.zeros((1, 2, 2) if shape == "cell2" else (1, 3, 3))
        h5["pbc"] = np.zeros((1, 3), bool)
        h5["REF_stress"] = np.zeros((1, 3, 3))
        for key in ("REF_pseudo_energy", "noise_level", "strain"):
            h5[key] = np.zeros(1)
        for key in ("config_type", "source_id"):
            h5[key] = np.array(["x"], dtype=h5py.string_dtype())
    try:
        frames = rmdata.read(path)
    except RMError as exc:
        assert "\n" not in str(exc) and "data.h5" in str(exc)
        return
    consistent = shape == "ok" or (shape == "forces_short" and n_atoms == 0)
    assert consistent and len(frames) == 1 and len(frames[0]) == n_atoms


def test_empty_file_gives_one_line_error(tmp_path):
    for name in ("empty.xyz", "empty.cif", "empty.h5"):
        src = tmp_path / name
        src.write_text("")
        with pytest.raises(RMError, match=f"{name}: the file is empty"):
            if name.endswith(".h5"):
                rmdata.read(src)
            else:
                make_dataset(tmp_path / "o.xyz", input_path=src)


def test_cli_never_shows_a_traceback_for_bad_input(tmp_path):
    src = tmp_path / "bad.xyz"
    src.write_text("3\nLattice=\"4 0 0 0 4 0 0 0 4\" Properties=species:S:1:pos:R:3\nC 0 0 0\nC nan 0 0\n")
    proc = subprocess.run([sys.executable, "-m", "rmdata.cli", "make", "--input", str(src), "-o",
                           str(tmp_path / "o.xyz")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
