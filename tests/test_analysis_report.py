"""End to end: a real (EMT-relaxed) Cu-Au run directory with broken shards -> results.db, report.

The report must open in headless Chromium with every plot loaded and the CIFs linked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import ase.db
import ase.io
import pytest
from click.testing import CliRunner
from helpers.analysis_rundir import make_rundir, prototypes
from helpers.browser import load_report
from pymatgen.core import Structure

from rmsearch.analysis import analyze
from rmsearch.cli import main

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("analysis")
    rundir = make_rundir(base / "run", seed=0, copies=2, n_random=2)
    ref = base / "prototypes.extxyz"
    ase.io.write(ref, list(prototypes().values()))
    data = analyze(rundir, reference=ref, top=10, workers=1)
    return rundir, data


def test_broken_shards_reported_and_skipped(run):
    rundir, data = run
    problems = "\n".join(data["problems"])
    assert "truncated last record skipped" in problems
    assert "unreadable record skipped" in problems
    assert re.search(r"run \d+: status converged but energy_per_atom=nan", problems)
    assert len(data["problems"]) == 3
    # 10 prototype runs + 2 random + invalid + not_converged + exploded + NaN
    assert data["n_records"] == 16
    assert data["status_counts"] == {"converged": 14, "exploded": 1, "not_converged": 1}
    assert data["n_usable"] == 13 and data["n_invalid"] == 1
    assert "0.40 A apart" in data["invalid"][0]["reason"]
    md = (rundir / "report" / "report.md").read_text()
    assert "truncated last record skipped" in md and "Invalid structures (1, not ranked)" in md
    # the invalid run is nowhere among the ranked clusters
    ranked = {rid for c in data["top_clusters"] for rid in c["members"]}
    assert data["invalid"][0]["run_id"] not in ranked and len(ranked) == 12


def test_results_db_and_extxyz(run):
    rundir, data = run
    db = ase.db.connect(rundir / "results.db")
    assert db.count() == data["n_records"]
    assert db.count(status="converged") == 14 and db.count(valid=False) == 1
    best = db.get(cluster_id=0, representative=True)
    assert best.energy_per_atom == pytest.approx(data["top_clusters"][0]["energy_per_atom"])
    assert best.spacegroup == data["top_clusters"][0]["spacegroups"]["0.01"][0]
    assert db.metadata["provenance"]["package"] == "response-matching"
    out = subprocess.run([sys.executable, "-m", "ase", "db", str(rundir / "results.db"), "cluster_id=0",
                          "-c", "run_id,energy_per_atom,pressure_gpa,spacegroup"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "energy_per_atom" in out.stdout, out.stderr
    frames = ase.io.read(rundir / "final_structures.extxyz", ":")
    assert len(frames) == data["n_usable"]
    assert {f.info["run_id"] for f in frames} == {r.run_id for r in db.select(status="converged")
                                                 if r.get("energy_per_atom") is not None}


def test_hull_ranking_and_match(run):
    _, data = run
    vertices = {v["formula"] for v in data["hull_vertices"]}
    assert {"Cu", "Au", "Cu3Au", "CuAu"} <= vertices  # EMT orders Cu-Au: L1_2 and L1_0 on the hull
    assert data["top_clusters"][0]["e_hull"] == pytest.approx(0.0, abs=1e-9)
    e_hull = [c["e_hull"] for c in data["top_clusters"]]
    assert e_hull == sorted(e_hull)
    hits = {c["formula"]: c["hits"] for c in data["top_clusters"] if c["formula"] in ("Cu", "Au", "Cu3Au")}
    assert hits == {"Cu": 2, "Au": 2, "Cu3Au": 2}  # two starts each, merged
    assert data["match"]["summary"]["n_references"] == 5
    assert data["match"]["summary"]["match_rate"] == 1.0  # every prototype is found again
    assert data["match"]["summary"]["n_searched"] == 5
    assert data["metrics"]["cov_r"] == 1.0
    assert data["dedupe"]["n_matcher_calls"] < data["dedupe"]["n_all_pairs"]


def test_report_opens_in_headless_chromium(run, tmp_path):
    rundir, data = run
    report = rundir / "report"
    imgs, cifs = load_report(report, tmp_path / "profile")
    assert set(imgs) == {f"plot-{k}" for k in ("hull", "energy_volume", "energy_histogram", "hits")}
    for key, (w, h) in imgs.items():
        assert w > 300 and h > 200, f"{key} not shown ({w}x{h})"
    assert len(cifs) == min(10, data["n_clusters"])
    for path in cifs:
        s = Structure.from_file(path)
        assert len(s) == 4 and path.parent == report / "cifs"


def test_cli_analyze_and_collect(run, tmp_path):
    rundir, data = run
    copy = tmp_path / "run"
    shutil.copytree(rundir / "shards", copy / "shards")
    shutil.copy(rundir / "config.json", copy / "config.json")
    runner = CliRunner()
    res = runner.invoke(main, ["collect", str(copy)])
    assert res.exit_code == 0 and (copy / "results.db").exists() and "skipped" in res.output
    res = runner.invoke(main, ["analyze", str(copy), "--top", "10"])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "clusters" in res.output
    again = json.loads((copy / "report" / "report.json").read_text())
    assert again["top_clusters"] == data["top_clusters"]  # deterministic
    res = runner.invoke(main, ["analyze", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "error:" in res.output and "no such run directory" in res.output
