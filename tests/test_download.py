"""Dataset downloads against a loopback HTTP server serving the shipped MP-20 subset."""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

import rmdata
from rmdata import datasets
from rmdata.cli import main
from rmdata.download import fetch
from rmdata.errors import RMError
from rmdata.utils import sha256_file


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root`` with Range support and scripted faults."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.truncate_next:
            srv.truncate_next = False
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if srv.stall_s:
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(srv.stall_s)
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www" / "mp_20"
    root.mkdir(parents=True)
    for split in ("train", "val"):
        src = resources.files("rmdata") / "data" / f"mp20_subset_{split}.csv.gz"
        with src.open("rb") as fh:
            (root / f"{split}.csv").write_bytes(gzip.decompress(fh.read()))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.root = root.parent
    httpd.files = root
    httpd.requests = []
    httpd.ranges = True
    httpd.truncate_next = False
    httpd.stall_s = 0.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/mp_20"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("RMDATA_CACHE", str(c))
    return c


def test_shipped_subset_matches_the_shared_checksums(server):
    for split, digest in datasets.MP20_SUBSET_SHA256.items():
        assert sha256_file(server.files / f"{split}.csv") == digest


def test_rmdata_make_mp20_downloads_and_verifies(server, cache, monkeypatch, tmp_path):
    monkeypatch.setenv("RMDATA_MP20_URL", server.url)
    monkeypatch.setitem(datasets.MP20_SHA256, "train", datasets.MP20_SUBSET_SHA256["train"])
    out = tmp_path / "mp20.xyz"
    res = CliRunner().invoke(main, ["make", "--dataset", "mp20", "--k", "1.0", "--limit", "3",
                                    "-o", str(out), "-j", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(rmdata.read(out)) == 3 * 121
    assert (cache / "mp20" / "train.csv").exists()
    n_requests = len(server.requests)
    # second run: served from the verified cache, no new request
    CliRunner().invoke(main, ["make", "--dataset", "mp20", "--limit", "1", "-o", str(out), "-j", "1"])
    assert len(server.requests) == n_requests


def test_checksum_recorded_on_first_download_then_verified(server, cache, monkeypatch):
    monkeypatch.setenv("RMDATA_MP20_URL", server.url)
    path = datasets.download_mp20("val")
    recorded = (path.parent / "val.csv.sha256").read_text().split()[0]
    assert recorded == datasets.MP20_SUBSET_SHA256["val"]
    # the cached copy gets corrupted on disk: it is detected and downloaded again
    path.write_bytes(path.read_bytes()[:-10] + b"corrupted!")
    datasets.download_mp20("val")
    assert sha256_file(path) == recorded


def test_corrupted_file_on_server_is_rejected(server, cache, monkeypatch):
    monkeypatch.setenv("RMDATA_MP20_URL", server.url)
    monkeypatch.setitem(datasets.MP20_SHA256, "val", datasets.MP20_SUBSET_SHA256["val"])
    f = server.files / "val.csv"
    f.write_bytes(f.read_bytes().replace(b"mp-", b"mq-", 1))
    with pytest.raises(RMError, match="checksum mismatch"):
        datasets.download_mp20("val")
    assert not any(p.suffix in (".csv", ".part") for p in (cache / "mp20").iterdir())


def test_missing_file_gives_http_error(server, cache, monkeypatch):
    monkeypatch.setenv("RMDATA_MP20_URL", server.url)
    with pytest.raises(RMError, match="HTTP 404"):
        datasets.download_mp20("test")  # the subset has no test split
    assert not (cache / "mp20" / "test.csv").exists()


def test_offline_names_the_subset(cache, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port with nobody listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RMDATA_MP20_URL", f"http://127.0.0.1:{port}/mp_20")
    out = tmp_path / "o.xyz"
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["make", "--dataset", "mp20", "-o", str(out)])
    assert time.perf_counter() - t0 < 20
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "mp20-subset" in res.output
    assert not out.exists()


def test_truncated_download_resumes_with_range(server, cache):
    server.truncate_next = True
    url = f"{server.url}/val.csv"
    dest = cache / "x" / "val.csv"
    with pytest.raises(RMError, match="run again to resume"):
        fetch(url, dest, sha256=datasets.MP20_SUBSET_SHA256["val"], progress=False)
    part = dest.with_name("val.csv.part")
    assert part.exists() and not dest.exists()
    fetch(url, dest, sha256=datasets.MP20_SUBSET_SHA256["val"], progress=False)
    assert sha256_file(dest) == datasets.MP20_SUBSET_SHA256["val"]
    assert (server.requests[-1][1] or "").startswith("bytes=")  # the second request resumed
    assert not part.exists()


def test_resume_without_range_support_restarts_cleanly(server, cache):
    server.truncate_next = True
    server.ranges = False
    url = f"{server.url}/val.csv"
    dest = cache / "y" / "val.csv"
    with pytest.raises(RMError):
        fetch(url, dest, sha256=datasets.MP20_SUBSET_SHA256["val"], progress=False)
    fetch(url, dest, sha256=datasets.MP20_SUBSET_SHA256["val"], progress=False)
    assert sha256_file(dest) == datasets.MP20_SUBSET_SHA256["val"]


def test_slow_server_times_out(server, cache):
    server.stall_s = 3.0
    dest = cache / "z" / "val.csv"
    t0 = time.perf_counter()
    with pytest.raises(RMError, match="stopped sending"):
        fetch(f"{server.url}/val.csv", dest, sha256=None, timeout=0.5, progress=False)
    assert time.perf_counter() - t0 < 3.0
    assert not dest.exists()


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("RMDATA_CACHE", raising=False)
    from rmdata.download import cache_dir

    assert cache_dir() == Path.home() / ".cache" / "rmdata"
