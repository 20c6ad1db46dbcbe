"""docs/api.md works as written: every ``python`` code block of the page, in order, runs as
one script in a scratch folder, under ``if __name__ == "__main__":`` as the page tells
scripts to (the search's worker processes are spawned and import the script)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def code_blocks(text: str) -> list[str]:
    """The ``python`` fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def test_api_page_examples_run(tmp_path):
    blocks = code_blocks(DOC.read_text())
    assert len(blocks) == 6
    body = "".join(f"    {line}\n" if line.strip() else "\n" for line in "\n".join(blocks).splitlines())
    script = tmp_path / "example.py"
    script.write_text(f"def main():\n{body}\n\nif __name__ == \"__main__\":\n    main()\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "121 frames from 1 structure(s)" in out and "(8, 3) (3, 3)" in out
    assert "20 runs done" in out and "20 records; the search asked for 20" in out
    assert re.search(r"distinct structures; the best: C\d+, -\d\.\d{4} eV/atom, space group \d+", out)
    assert "converged" in out and "uf3 ['C'] cutoff" in out
    assert (tmp_path / "c_run" / "report" / "index.html").is_file()
    assert (tmp_path / "carbon_potential" / "potential.json").is_file()
