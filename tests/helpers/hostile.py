"""Checks shared by the hostile-input suite (tests/hostile/).

Every case runs a command the way a user types it (in-process through click's CliRunner,
or as a subprocess for signals and hangs) and checks the promises of README "Failure
behaviour": a non-zero exit status, exactly one line starting ``error:`` that names the
option or file, no traceback, no new or partial file (hidden temporaries included) and
inputs left byte-identical.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from click.testing import CliRunner


def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """Every file, link and folder under ``folders`` (hidden ones too): path -> (sha256, mode)."""
    out: dict[str, tuple[str, int]] = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = Path(root) / name
                if p.is_symlink():
                    out[str(p)] = ("link:" + os.readlink(p), 0)
                elif p.is_dir():
                    out[str(p)] = ("dir", p.stat().st_mode)
                else:
                    out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


def invoke(cli, args: list[str]):
    """Run a click command in-process; returns the click ``Result`` (stdout and stderr separate)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_clean_exit(result, args) -> None:
    """No exception other than SystemExit, and no traceback in the output."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (args, repr(exc), result.output[-2000:])
    assert "Traceback" not in result.output, (args, result.output[-2000:])


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def check_refused(cli, args: list, *, names: tuple[str, ...], watch: tuple[Path, ...]) -> str:
    """Run ``args``; assert a refusal: exit status != 0, one ``error:`` line naming one of
    ``names`` (an option or a file), no traceback, and nothing under ``watch`` changed.
    Returns the error line."""
    before = snapshot(*watch)
    result = invoke(cli, args)
    assert_clean_exit(result, args)
    assert result.exit_code != 0, (args, result.output[-2000:])
    errors = error_lines(result.output)
    assert len(errors) == 1, (args, result.output[-2000:])
    assert any(str(n) in errors[0] for n in names), (args, names, errors[0])
    after = snapshot(*watch)
    assert after == before, (args, sorted(set(after) ^ set(before)) or "contents changed", errors[0])
    return errors[0]


def check_ok(cli, args: list) -> str:
    """Run ``args``; assert exit status 0, no ``error:`` line and no traceback; return the output."""
    result = invoke(cli, args)
    assert_clean_exit(result, args)
    assert result.exit_code == 0, (args, result.output[-3000:])
    assert not error_lines(result.output), (args, result.output[-2000:])
    return result.output


def expected_mode() -> int:
    """The permission bits a plainly created file gets under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
