"""The one-shot diamond workflow (``make demo``) at quick size: cubic diamond comes out lowest.

The workflow's data and training steps are the session fixtures' (same command, and the
fixtures take their recipe from the workflow's ``SIZES["quick"]``), so the trained model
is reused instead of trained twice; the workflow skips steps whose outputs exist and runs
export, search, analysis and its report for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ase.io import read
from helpers.browser import load_report

ROOT = Path(__file__).resolve().parent.parent


def test_diamond_quick_finds_cubic_diamond_lowest(diamond_training, tmp_path):
    out = tmp_path / "diamond"
    (out / "data").mkdir(parents=True)
    (out / "train").mkdir()
    shutil.copy(diamond_training["dataset"], out / "data" / "diamond.xyz")
    shutil.copy(diamond_training["model"], out / "train" / "diamond.model")
    proc = subprocess.run([sys.executable, str(ROOT / "workflows" / "diamond.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # the lowest-energy valid cluster is cubic diamond, space group 227
    assert summary["lowest_spacegroup"] == 227, summary["lowest_cluster"]
    assert summary["lowest_is_cubic_diamond"]
    assert "cubic diamond (Fd-3m, 227)" in summary["polymorphs_found"]
    # the report exists, with the workflow figure and the analysis report it links
    assert (out / "report.html").exists() and (out / "diamond_polymorphs.png").stat().st_size > 10_000
    assert f"report: {out / 'report.html'}" in proc.stdout
    # the analysis report of this real run opens in a browser with every plot shown
    imgs, cifs = load_report(out / "run" / "report", tmp_path / "profile")
    assert {"plot-energy_volume", "plot-energy_histogram", "plot-hits"} <= set(imgs)
    for key, (w, h) in imgs.items():
        assert w > 300 and h > 200, f"{key} not shown ({w}x{h})"
    assert cifs and all(len(read(path)) >= 2 for path in cifs)
