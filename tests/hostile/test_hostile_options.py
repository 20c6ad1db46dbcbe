"""Hostile numbers for every numeric option of every command: nan, inf, negative, zero where
it is meaningless, huge, non-numeric, empty list items. Each is refused before anything is
read or written, with one line naming the option.

Cases are generated from one table (command, option, valid range); the values are the
range's edges pushed out plus the always-bad ones, so every bound is checked from outside.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.hostile import check_ok, check_refused
from rmdata.cli import main as rmdata_main
from rmsearch.cli import main as rmsearch_main

ALWAYS_BAD_FLOATS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "abc", "", "1,2", "0x10"]
ALWAYS_BAD_INTS = ["nan", "inf", "1.5", "abc", "", "1e3", "--"]


def _outside(low, high, low_open, high_open, integer):
    """Values just outside and far outside [low, high]."""
    out = []
    if low is not None:
        out += [low if low_open else (low - 1 if integer else low - 1e-9 - abs(low) * 1e-6), low - 1e6, -1e300]
    if high is not None:
        out += [high if high_open else (high + 1 if integer else high * (1 + 1e-6) + 1e-9), high * 1e6 + 1, 1e300]
    if integer:
        out = [int(v) if abs(v) < 1e30 else (10**40 if v > 0 else -(10**40)) for v in out]
    return [repr(v) if not integer else str(v) for v in out]


# (cli, leading args, option, (low, high, low_open, high_open), integer?)
MAKE = ["make", "--input", "{inp}/cell.xyz", "-j", "1", "-o", "out.xyz"]
MACE = ["mace-command", "{inp}/data.xyz"]
ANALYZE = ["analyze", "{inp}/run", "--no-metrics"]
LAUNCH = ["launch", "-o", "newrun", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S"]
SLURM = [*LAUNCH, "--scheduler", "slurm", "--dry-run"]
FIT = ["fit-native", "{inp}/data.xyz", "-o", "newpot"]
SHARD = ["run-shard", "{inp}/run", "--task", "0", "--ntasks", "1"]
RELAX = ["relax", "{inp}/cell.xyz", "--potential", "model:carbon-uf3", "-o", "out.xyz", "--no-progress"]

TABLE = [
    (rmdata_main, MAKE, "--k", (0, 1e4, True, False), False),
    (rmdata_main, MAKE, "--step-size", (0, 1, False, False), False),
    (rmdata_main, MAKE, "--rc", (0, 3, False, False), False),
    (rmdata_main, MAKE, "--youngs", (0, 1e3, True, False), False),
    (rmdata_main, MAKE, "--levels", (0, 1000, False, False), False),
    (rmdata_main, MAKE, "--strains", (-0.5, 0.5, False, False), False),
    (rmdata_main, MAKE, "--copies", (1, 1000, False, False), True),
    (rmdata_main, MAKE, "--limit", (1, None, False, False), True),
    (rmdata_main, MAKE, "--seed", (0, 2**32 - 1, False, False), True),
    (rmdata_main, MAKE, "--workers", (1, 4096, False, False), True),
    (rmdata_main, MACE, "--epochs", (1, 100000, False, False), True),
    (rmdata_main, MACE, "--r-max", (0, None, True, False), False),
    (rmdata_main, MACE, "--channels", (1, 1024, False, False), True),
    (rmdata_main, MACE, "--max-L", (0, 4, False, False), True),
    (rmdata_main, MACE, "--correlation", (1, 5, False, False), True),
    (rmdata_main, MACE, "--batch-size", (1, 100000, False, False), True),
    (rmdata_main, MACE, "--lr", (0, None, True, False), False),
    (rmdata_main, MACE, "--lr-gamma", (0, 1, True, False), False),
    (rmdata_main, MACE, "--ema-decay", (0, 1, True, True), False),
    (rmdata_main, MACE, "--forces-weight", (0, None, True, False), False),
    (rmdata_main, MACE, "--stress-weight", (0, None, True, False), False),
    (rmdata_main, MACE, "--eval-interval", (1, 100000, False, False), True),
    (rmdata_main, MACE, "--seed", (0, 2**32 - 1, False, False), True),
    (rmsearch_main, ANALYZE, "--frac", (0, 2, True, True), False),
    (rmsearch_main, ANALYZE, "--energy-bin", (1e-6, 10, False, False), False),
    (rmsearch_main, ANALYZE, "--volume-bin", (1e-6, 10, False, False), False),
    (rmsearch_main, ANALYZE, "--top", (1, None, False, False), True),
    (rmsearch_main, ANALYZE, "--workers", (1, 4096, False, False), True),
    (rmsearch_main, ANALYZE, "--match-top-k", (1, None, False, False), True),
    (rmsearch_main, ANALYZE, "--fp-radius", (0, 100, False, False), False),
    (rmsearch_main, ANALYZE, "--snap-top", (1, None, False, False), True),
    (rmsearch_main, LAUNCH, "--nruns", (1, 10**7, False, False), True),
    (rmsearch_main, LAUNCH, "--workers", (1, 4096, False, False), True),
    (rmsearch_main, LAUNCH, "--seed", (0, 2**32 - 1, False, False), True),
    (rmsearch_main, LAUNCH, "--minsep-factor", (0, 3, False, False), False),
    (rmsearch_main, LAUNCH, "--fmax", (0, None, True, False), False),
    (rmsearch_main, LAUNCH, "--smax", (0, None, True, False), False),
    (rmsearch_main, LAUNCH, "--max-steps", (1, 10**7, False, False), True),
    (rmsearch_main, LAUNCH, "--kick", (0, 5, False, False), False),
    (rmsearch_main, LAUNCH, "--kick-fmax", (0, None, True, False), False),
    (rmsearch_main, LAUNCH, "--volume-steps", (0, 10**6, False, False), True),
    (rmsearch_main, LAUNCH, "--volume-fmax", (0, None, True, False), False),
    (rmsearch_main, LAUNCH, "--run-timeout", (0, None, False, False), False),
    (rmsearch_main, SLURM, "--array-size", (1, None, False, False), True),
    (rmsearch_main, SLURM, "--cpus-per-task", (1, None, False, False), True),
    (rmsearch_main, SLURM, "--max-concurrent", (1, None, False, False), True),
    (rmsearch_main, FIT, "--twojmax", (0, 12, False, False), True),
    (rmsearch_main, FIT, "--rcut", (0, 10, True, False), False),
    (rmsearch_main, FIT, "--rounds", (0, 100, False, False), True),
    (rmsearch_main, FIT, "--distil-starts", (1, 100000, False, False), True),
    (rmsearch_main, FIT, "--energy-weight", (0, None, False, False), False),
    (rmsearch_main, FIT, "--rc2", (0, 10, True, False), False),
    (rmsearch_main, FIT, "--rc3", (0, 10, True, False), False),
    (rmsearch_main, FIT, "--n2", (1, 1000, False, False), True),
    (rmsearch_main, FIT, "--n3", (1, 100, False, False), True),
    (rmsearch_main, FIT, "--alpha", (0, None, False, False), False),
    (rmsearch_main, FIT, "--stress-weight", (0, None, False, False), False),
    (rmsearch_main, FIT, "--holdout", (0, 1, False, True), False),
    (rmsearch_main, FIT, "--seed", (0, 2**32 - 1, False, False), True),
    (rmsearch_main, SHARD, "--run-timeout", (0, None, False, False), False),
    (rmsearch_main, LAUNCH, "--batch", (1, 100000, False, False), True),
    (rmsearch_main, RELAX, "--fmax", (0, None, True, False), False),
    (rmsearch_main, RELAX, "--smax", (0, None, True, False), False),
    (rmsearch_main, RELAX, "--max-steps", (1, 10**7, False, False), True),
    (rmsearch_main, RELAX, "--kick", (0, 5, False, False), False),
    (rmsearch_main, RELAX, "--kick-fmax", (0, None, True, False), False),
    (rmsearch_main, RELAX, "--seed", (0, 2**32 - 1, False, False), True),
]


def _cases():
    for cli, lead, option, bounds, integer in TABLE:
        bad = ALWAYS_BAD_INTS if integer else ALWAYS_BAD_FLOATS
        if option in ("--levels", "--strains"):  # lists: "1,2" is a list of two numbers
            bad = [v for v in bad if v != "1,2"]
        for value in dict.fromkeys(bad + _outside(*bounds, integer)):
            yield pytest.param(cli, lead, option, value, id=f"{lead[0]}{option}={value}")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cli, lead, option, value", list(_cases()))
def test_bad_number_is_refused(cli, lead, option, value, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in lead] + [f"{option}={value}"]
    check_refused(cli, args, names=(option,), watch=(tmp_path, hostile_inputs))


# comma lists: empty items, non-finite members, one bad member among good ones
LIST_CASES = ["1,,2", ",1", "1,", ",", "0,1,nan", "inf,1", "0,1,-1", "1e9", "0;1", "0 1 x", "1,2,3,4e400",
              "0," * 200 + "0", "--"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("option", ["--levels", "--strains"])
@pytest.mark.parametrize("value", LIST_CASES)
def test_bad_number_list_is_refused(option, value, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in MAKE] + [f"{option}={value}"]
    check_refused(rmdata_main, args, names=(option,), watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["nan", "1,nan", "inf,2", "2,1", "0,1", "-1,1", "1", "1,2,3", "a,b", ",", "1,20"])
def test_bad_zbl_is_refused(value, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in FIT] + [f"--zbl={value}"]
    check_refused(rmsearch_main, args, names=("--zbl",), watch=(tmp_path, hostile_inputs))


CORE_CASES = ["m=nan", "m=inf", "m=0", "m=-1", "rc=0", "rc=-0.5", "rc=1e999", "rc=4", "scale=nan", "scale=0",
              "scale=1.5", "m=1,m=2", "x=1", "m=", "m", "1,0.75", "m=1;rc=0.75", "scale=0.7,", "zbl,zbl", "zbl=1",
              "zbl,m=nan"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lead", [LAUNCH, RELAX], ids=["launch", "relax"])
@pytest.mark.parametrize("value", CORE_CASES)
def test_bad_core_repulsion_is_refused(lead, value, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in lead] + [f"--core-repulsion={value}"]
    check_refused(rmsearch_main, args, names=("--core-repulsion",), watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("levels, step", [("0,1000", "0.01"), ("0,100", "0.1"), ("6", "1")])
def test_noise_amplitude_over_five_angstrom_is_refused(levels, step, hostile_inputs, tmp_path, monkeypatch):
    """Each value is in range but together they displace atoms by more than 5 A."""
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in MAKE] + ["--levels", levels, "--step-size", step]
    check_refused(rmdata_main, args, names=("--levels",), watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(60)
def test_noise_amplitude_is_checked_with_the_step_of_the_structures_kind(hostile_inputs, tmp_path, monkeypatch):
    """--levels 0,80 is 4 A of noise for a crystal (0.05 A step, labelled) but 8 A for a
    molecule (0.1 A step, refused): the limit follows the preset of what is labelled."""
    import ase.io
    from ase.build import molecule

    monkeypatch.chdir(tmp_path)
    crystal = [a.format(inp=hostile_inputs) for a in MAKE] + ["--levels", "0,80", "--strains", "0"]
    check_ok(rmdata_main, crystal)
    from ase.geometry import find_mic

    frames = ase.io.read(tmp_path / "out.xyz", ":")
    ref = frames[0].get_scaled_positions()  # level 0: the reference, carried into each noisy cell
    shift = max(abs(find_mic(f.positions - ref @ f.cell.array, f.cell, pbc=True)[0]).max() for f in frames)
    assert 0.5 < shift <= 80 * 0.05 / 2 + 1e-9  # uniform noise of amplitude level x step / 2
    ase.io.write(tmp_path / "mol.xyz", molecule("CH4"))
    check_refused(rmdata_main, ["make", "--input", str(tmp_path / "mol.xyz"), "-o", "mol_out.xyz",
                                "--levels", "0,80"], names=("--levels",), watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [
    ["make", "--dataset", "diamond", "--format", "hdf5", "-o", "x.xyz"],
    ["make", "--dataset", "diamond", "--format", "extxyz", "-o", "x.h5"],
    ["make", "--dataset", "diamond", "-o", "x.txt"],
    ["make", "--dataset", "nope"],
    ["make", "--dataset", "diamond", "--split", "val"],
    ["make", "--dataset", "mp20-subset", "--split", "nope", "-o", "x.xyz"],
    ["make", "--dataset", "diamond", "--input", "{inp}/cell.xyz"],
    ["make", "--input", "{inp}/" + "a" * 300 + ".xyz"],
    ["make", "--input", "/dev/null", "-o", "x.xyz"],
    ["make", "--input", "{inp}/missing.xyz"],
    ["make"],
    ["make", "--dataset", "diamond", "--elements", "Xx"],
    ["make", "--dataset", "diamond", "--containing", "C,Qq"],
    ["make", "--dataset", "diamond", "--also-stoichiometry", "Li2S"],
    ["make", "--dataset", "molecules", "--exclude-formulas", "C2?!"],
    ["make", "--dataset", "molecules", "--exclude-formulas", "@{inp}/missing.txt"],
    ["make", "--dataset", "diamond", "--preset", "nope"],
    ["mace-command", "{inp}/data.xyz", "--device", "tpu"],
    ["mace-command", "{inp}/data.xyz", "--dtype", "float16"],
    ["mace-command", "{inp}/data.xyz", "--readout", "cubic"],
    ["mace-command", "{inp}/data.xyz", "--readout-width", "32"],
    ["convert", "{inp}/data.xyz", "x.zzz"],
    ["convert", "{inp}/data.xyz"],
    ["info"],
])
def test_bad_choice_or_combination_is_refused(args, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(inp=hostile_inputs) for a in args] + (["-j", "1"] if args[0] == "make" else [])
    names = tuple(a for a in args if a.startswith("-")) + ("x.", "nope", "DEST", "PATH", "--dataset", "Xx",
                                                          "Qq", "C2?!", "missing", "--input", "/dev/null")
    check_refused(rmdata_main, args, names=names, watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Xx-S"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--natoms", "0"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--natoms", "5-2"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--natoms", "nan"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--volume-factor", "nan-1"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--volume-factor", "-1-2"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--spacegroup", "231"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--spacegroups", "random",
     "--spacegroup-weights", "{inp}/missing.json"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--spacegroups", "mixed",
     "--spacegroup-weights", "{inp}/data.xyz"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--spacegroups", "random",
     "--wyckoff", "Li:4a,S:4b"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--composition", "Li2S", "--natoms", "12",
     "--spacegroup", "225", "--wyckoff", "Li:8c,S:4z"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--composition", "Li2S", "--natoms", "12",
     "--spacegroup", "225", "--wyckoff", "Li:4a,S:4b"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--composition", "Li2S", "--natoms", "12",
     "--spacegroup", "225", "--wyckoff", "{inp}/data.xyz"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--composition", "Li2Q"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2"],
    ["launch", "-o", "r", "--potential", "{inp}/nope", "--nruns", "2", "--system", "Li-S"],
    ["launch", "-o", "r", "--potential", "model:nope", "--nruns", "2", "--system", "Li-S"],
    ["launch", "-o", "r", "--nruns", "2", "--system", "Li-S"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--resume"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S", "--partition", "x"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--scheduler", "slurm", "--time", "soon"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--scheduler", "slurm", "--profile", "no-such-profile"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--scheduler", "slurm", "--mem", "lots"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--scheduler", "slurm", "--partition", "a b"],
    ["launch", "-o", "r", "--potential", "{inp}/pot", "--nruns", "2", "--system", "Li-S",
     "--scheduler", "slurm", "--workers", "2"],
    ["analyze", "{inp}/run", "--no-metrics", "--reference", "nope:val"],
    ["analyze", "{inp}/run", "--no-metrics", "--reference", "{inp}/missing.cif"],
    ["analyze", "{inp}/nope"],
    ["collect", "{inp}/nope"],
    ["status", "{inp}/nope"],
    ["export", "{inp}/missing.model", "-o", "p"],
    ["export", "model:nope", "-o", "p"],
    ["models", "show", "nope"],
    ["fit-native", "{inp}/missing.xyz", "-o", "p"],
    ["fit-native", "{inp}/data.xyz", "-o", "p", "--kind", "ace"],
    ["fit-native", "{inp}/data.xyz", "-o", "p", "--distil-natoms", "8-2"],
    ["run-shard", "{inp}/run", "--task", "0"],
    ["slurm", "submit", "{inp}/nope", "--dry-run"],
])
def test_bad_search_option_is_refused_and_creates_nothing(args, hostile_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RMSEARCH_CONFIG", str(tmp_path / "config-home"))
    args = [a.format(inp=hostile_inputs) for a in args]
    names = tuple(a for a in args if a.startswith("-")) + tuple(args[1:2]) + (
        "nope", "Xx", "Li2Q", "missing", "slurm options", "profile", "run directory", "RUNDIR", "--ntasks", "model",
        "--system")
    check_refused(rmsearch_main, args, names=names, watch=(tmp_path, hostile_inputs))


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(k=st.floats(allow_nan=True, allow_infinity=True), rc=st.floats(allow_nan=True, allow_infinity=True))
def test_any_k_and_rc_is_refused_or_in_range(k, rc, hostile_inputs, tmp_path_factory):
    """Property: --k/--rc outside their ranges (or non-finite) are refused at parse time."""
    import os

    folder = tmp_path_factory.mktemp("krc")
    k_ok = math.isfinite(k) and 0 < k <= 1e4
    rc_ok = math.isfinite(rc) and 0 <= rc <= 3
    if k_ok and rc_ok:
        return
    old = os.getcwd()
    os.chdir(folder)
    try:
        args = [a.format(inp=hostile_inputs) for a in MAKE] + [f"--k={k!r}", f"--rc={rc!r}"]
        check_refused(rmdata_main, args, names=("--k", "--rc"), watch=(folder, hostile_inputs))
    finally:
        os.chdir(old)


@pytest.mark.timeout(120)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.one_of(st.floats(), st.sampled_from(["", "x", "nan", " "])), min_size=1, max_size=6))
def test_any_levels_list_is_refused_or_valid(values, hostile_inputs, tmp_path_factory):
    """Property: a --levels list is labelled only if every item is a finite number in [0, 1000]
    and the noise stays within 5 A; everything else is one clean error."""
    import os

    text = ",".join(v if isinstance(v, str) else repr(v) for v in values)
    try:
        numbers = [float(v) for v in text.split(",")]
        ok = all(math.isfinite(x) and 0 <= x <= 1000 for x in numbers) and max(numbers) * 0.05 <= 5
    except ValueError:
        ok = False
    folder = tmp_path_factory.mktemp("levels")
    old = os.getcwd()
    os.chdir(folder)
    try:
        args = [a.format(inp=hostile_inputs) for a in MAKE] + [f"--levels={text}", "--strains", "0"]
        if ok:
            check_ok(rmdata_main, args)
        else:
            check_refused(rmdata_main, args, names=("--levels",), watch=(folder, hostile_inputs))
    finally:
        os.chdir(old)
