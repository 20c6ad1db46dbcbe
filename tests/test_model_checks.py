"""tools/model_checks.py, the recipe-selection checks, on the shipped carbon potential."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "model_checks.py"


def test_carbon_potential_holds_diamond_and_is_searchable(diamond_dataset, tmp_path):
    """model:carbon-uf3 (fitted on one diamond cell's frames): its own level-0 frames are
    near-minima (force RMSE < 0.1 eV/A where the labels are zero, growing with the noise),
    it learnt part of the stress labels (pressure slope 0.2-1.5), cubic diamond relaxed
    from itself stays diamond within 2 % of its volume, and random carbon cells converge into
    valid cells, some of them ordered (6 starts, seed 0: 2 with a space group above P-1)."""
    ref = tmp_path / "diamond.xyz"
    write(ref, bulk("C", "diamond", a=3.567, cubic=True))
    out = tmp_path / "checks.json"
    proc = subprocess.run([sys.executable, str(TOOL), "model:carbon-uf3", "--frames", str(diamond_dataset),
                           "--relax", str(ref), "--systems", "C", "--natoms", "2-8", "--nruns", "6",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads(out.read_text())
    assert json.loads(proc.stdout) == checks
    by_level = checks["frames"]["force_rmse_by_level_eV_per_A"]
    assert by_level["0"] < 0.1 and by_level["0"] < by_level["4"] < by_level["16"]
    assert 0.2 < checks["frames"]["pressure_slope"] < 1.5
    relaxed = checks["relaxed_from_reference"]
    assert relaxed["converged"] == relaxed["matched_themselves"] == 1
    assert relaxed["median_abs_volume_error"] < 0.02
    search = checks["searchability"]["C"]
    assert search["converged"] >= 5 and search["valid"] >= 5
    assert 1 <= search["ordered"] <= search["valid"]


@pytest.mark.parametrize("options", [["--frames", "none.xyz"], ["--systems", "C", "--nruns", "-1"],
                                     ["--relax", "in.xyz", "--out", "in.xyz"]])
def test_bad_input_is_one_error_line(options, tmp_path):
    """A missing file, a negative count, or --out onto an input: one error line, input intact."""
    src = tmp_path / "in.xyz"
    write(src, bulk("C", "diamond", a=3.567, cubic=True))
    before = src.read_bytes()
    proc = subprocess.run([sys.executable, str(TOOL), "model:carbon-uf3", *options], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert src.read_bytes() == before
