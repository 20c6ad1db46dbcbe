"""Open an rmsearch report in headless Chromium and list what the browser really loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Path of a Chromium binary (the test fails, never skips, when there is none)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium not found: run 'bash tests/helpers/ensure_system_packages.sh' (Debian package 'chromium')")


_CHECK_JS = """<script>
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img').forEach(function (i) {
    out.push(i.id + '=' + (i.complete ? i.naturalWidth : 0) + 'x' + i.naturalHeight); });
  document.querySelectorAll('a.cif').forEach(function (a) { out.push('cif=' + a.href); });
  var p = document.createElement('pre'); p.id = 'rmcheck'; p.textContent = out.join('\\n');
  document.body.appendChild(p);
});
</script>"""


def load_report(report: Path, profile: Path) -> tuple[dict[str, tuple[int, int]], list[Path]]:
    """Load ``report/index.html`` in headless Chromium.

    Returns the rendered size of every image by id and the CIF files the page links.
    A deliberately broken control image is added to prove the check can fail.
    """
    html = (report / "index.html").read_text()
    probe = html.replace("</body>", "<img id='broken-control' src='plots/missing.png'>" + _CHECK_JS + "</body>")
    (report / "_probe.html").write_text(probe)
    try:
        out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--virtual-time-budget=10000", "--dump-dom", (report / "_probe.html").as_uri()],
                             capture_output=True, text=True, timeout=120, check=False)
    finally:
        (report / "_probe.html").unlink()
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'<pre id="rmcheck">(.*?)</pre>', out.stdout, re.DOTALL)
    assert m, "the report did not finish loading in chromium"
    lines = m.group(1).split("\n")
    imgs = {}
    for line in lines:
        if not line.startswith("cif="):
            key, size = line.split("=", 1)
            imgs[key] = tuple(map(int, size.split("x")))
    assert imgs.pop("broken-control") == (0, 0)
    cifs = [Path(line[4:].removeprefix("file://")) for line in lines if line.startswith("cif=")]
    return imgs, cifs
