"""Downloading dataset files: checksum pinning, a cache directory, resume, atomic rename.

``fetch(url, dest, sha256)`` downloads into ``dest.part`` (resuming it with an HTTP
``Range`` request when a previous attempt was cut off), verifies the SHA-256 and only then
renames the file to ``dest``. A corrupt download never reaches the cache. When no checksum
is pinned, the first successful download records one beside the file
(``dest.sha256``, trust on first use) and every later use verifies against it.

The cache directory is ``$RMDATA_CACHE``, else ``~/.cache/rmdata``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from rmdata.errors import RMError
from rmdata.utils import fsync_dir, sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 16
DEFAULT_TIMEOUT_S = 30.0


def cache_dir() -> Path:
    """The dataset cache directory (``$RMDATA_CACHE`` or ``~/.cache/rmdata``)."""
    env = os.environ.get("RMDATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rmdata"


def _recorded_sha(dest: Path) -> str | None:
    rec = dest.with_name(dest.name + ".sha256")
    return rec.read_text().split()[0] if rec.exists() else None


def _record_sha(dest: Path, digest: str) -> None:
    rec = dest.with_name(dest.name + ".sha256")
    tmp = rec.with_name(rec.name + ".tmp")
    tmp.write_text(f"{digest}  {dest.name}\n")
    os.replace(tmp, rec)


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, name: str | None = None,
          timeout: float = DEFAULT_TIMEOUT_S, offline_hint: str = "", progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: http(s) or file URL.
        dest: final path of the file (in the cache directory).
        sha256: pinned hex digest; None records the digest of the first download and
            verifies later uses against it.
        name: dataset name for messages.
        timeout: seconds without data before giving up.
        offline_hint: appended to the error when the server cannot be reached
            (e.g. "use --dataset mp20-subset").
        progress: show a progress bar.

    Returns:
        ``dest``.

    Raises:
        RMError: the server cannot be reached, answers an HTTP error, stops sending, or
            the file does not match its checksum. Nothing corrupt is left at ``dest``.
    """
    dest = Path(dest)
    name = name or dest.name
    expected = sha256 or _recorded_sha(dest)
    if dest.exists():
        if expected is None or sha256_file(dest) == expected:
            return dest
        log.warning("%s: cached file %s does not match its checksum; downloading again", name, dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download(url, part, name, timeout, offline_hint, progress)
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise RMError(f"{name}: checksum mismatch for {url} (got sha256 {digest[:12]}..., expected "
                      f"{expected[:12]}...); the corrupt download was deleted, try again later")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    if expected is None:
        _record_sha(dest, digest)
        log.info("%s: recorded sha256 %s for %s", name, digest, dest.name)
    return dest


def _download(url: str, part: Path, name: str, timeout: float, offline_hint: str,
              progress: bool) -> None:
    """Stream ``url`` into ``part``, resuming an existing partial file when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "rmdata"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    hint = f"; {offline_hint}" if offline_hint else ""
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - dataset URLs
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the partial file is complete or bad
            part.unlink(missing_ok=True)
            return _download(url, part, name, timeout, offline_hint, progress)
        raise RMError(f"{name}: download failed, HTTP {exc.code} {exc.reason} for {url}{hint}") from exc
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RMError(f"{name}: cannot reach {url} ({reason}){hint}") from exc
    with response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"
        total = response.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total else None
        done = have if resumed else 0
        bar = _progress_bar(name, total, done, progress)
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (socket.timeout, TimeoutError) as exc:
                        raise RMError(f"{name}: the server stopped sending ({url}, timeout {timeout:g} s); "
                                      f"run again to resume{hint}") from exc
                    except (ConnectionError, OSError, http.client.HTTPException) as exc:
                        raise RMError(f"{name}: download of {url} broke off ({exc}); run again to resume") from exc
                    if not block:
                        break
                    fh.write(block)
                    done += len(block)
                    if bar is not None:
                        bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done < total:
        raise RMError(f"{name}: download of {url} ended early ({done} of {total} bytes); "
                      "run again to resume")


def _progress_bar(name: str, total: int | None, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=f"download {name}",
                leave=False, disable=None)


def sha256_bytes(data: bytes) -> str:
    """SHA-256 hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()
