"""The one-shot diamond workflow (``make demo``) at quick size: cubic diamond comes out lowest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_diamond_quick_finds_cubic_diamond_lowest(tmp_path):
    out = tmp_path / "diamond"
    proc = subprocess.run([sys.executable, str(ROOT / "workflows" / "diamond.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # the lowest-energy valid cluster is cubic diamond, space group 227
    assert summary["lowest_spacegroup"] == 227, summary["lowest_cluster"]
    assert summary["lowest_is_cubic_diamond"]
    assert "cubic diamond (Fd-3m, 227)" in summary["polymorphs_found"]
    # the report exists, with the workflow figure and the analysis report it links
    assert (out / "report.html").exists() and (out / "diamond_polymorphs.png").stat().st_size > 10_000
    assert (out / "run" / "report" / "index.html").exists()
    assert f"report: {out / 'report.html'}" in proc.stdout
