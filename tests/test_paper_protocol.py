"""tools/paper_protocol.py, the reference notebook's molecule protocol with any calculator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.io import read

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "paper_protocol.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=600, check=False)


def test_shipped_model_through_the_papers_fire_protocol(tmp_path):
    """Two C2H6O starts with the shipped molecules model: a start counted converged has
    max |F| < 0.0002 eV/A at its written structure (recomputed), each structure's validity is
    rmsearch's rule of that structure, and the summary counts what the structures say."""
    import rmsearch
    from rmsearch.analysis.molecules import check_molecule

    out = tmp_path / "pp"
    proc = _run("--out", str(out), "--calculator", "rmsearch:model:molecules-mace",
                "--compositions", "C2H6O", "--nstarts", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = read(out / "C2H6O.extxyz", index=":")
    summary = json.loads((out / "summary.json").read_text())
    assert [f.info["run_id"] for f in frames] == [0, 1]
    assert all(np.isfinite(f.get_potential_energy()) and "failed" not in f.info for f in frames)
    with rmsearch.Calculator("model:molecules-mace") as calc:
        for atoms in frames:
            check = check_molecule(atoms)
            assert bool(atoms.info["valid"]) == check.valid
            if atoms.info["converged"]:
                atoms.calc = calc
                assert np.abs(atoms.get_forces()).max() < 2e-4
    figures = summary["per_composition"]["C2H6O"]
    assert figures["starts"] == 2
    assert figures["valid"] == sum(bool(f.info["valid"]) for f in frames)
    assert figures["converged"] == sum(bool(f.info["converged"]) for f in frames)
    again = _run("--out", str(out), "--calculator", "rmsearch:model:molecules-mace", "--compositions", "C2H6O")
    assert again.returncode != 0 and again.stderr.startswith("error:") and "summary.json" in again.stderr


def test_bad_calculator_and_formula_are_one_line_errors(tmp_path):
    for args in (("--calculator", "lj:x", "--compositions", "C2H6O"),
                 ("--calculator", "rmsearch:model:molecules-mace", "--compositions", "C2Xx6"),
                 ("--calculator", "rmsearch:model:molecules-mace", "--compositions", "C2H6O", "--seed", "-1")):
        proc = _run("--out", str(tmp_path / "o"), *args)
        assert proc.returncode != 0 and proc.stderr.startswith("error:"), proc.stderr[-500:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "o" / "summary.json").exists()


def test_a_calculator_error_ends_only_that_start():
    """A calculator that fails mid-relaxation (as LAMMPS does on fused atoms) ends the start
    as failed and not converged; the next start runs."""
    import importlib.util

    from ase import Atoms
    from ase.calculators.lj import LennardJones

    spec = importlib.util.spec_from_file_location("paper_protocol", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    class Failing(LennardJones):
        def calculate(self, *args, **kwargs):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls > 5:
                raise RuntimeError("Pair distance < table inner cutoff")
            super().calculate(*args, **kwargs)

    atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.0, 0, 0], [0, 3.2, 0]])
    row = tool.run_protocol(atoms, Failing(sigma=3.4, epsilon=0.01), np.random.default_rng(0))
    assert row["failed"].startswith("Pair distance") and not row["converged"]
    ok = tool.run_protocol(atoms.copy(), LennardJones(sigma=3.4, epsilon=0.01, rc=10.0), np.random.default_rng(0))
    assert ok["failed"] == "" and ok["first_converged"]
