"""Shared pieces of the ``rmdata`` and ``rmsearch`` command lines.

Every command line of the project reports bad input the same way: one line
``error: ...`` naming the option or file and what to do, exit status 2, never a
traceback (README "Failure behaviour"). The parameter types below validate numbers
once for all commands: non-finite values (nan, inf) are always refused, and each
option names its valid range.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from rmdata.errors import RMError
from rmdata.utils import check_finite, range_text

#: Longest file name (bytes) of the common file systems (ext4, xfs, btrfs, tmpfs).
NAME_MAX = 255


#: click >= 8.2 signals "no arguments: show the help" with this usage error.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


_STOPPED = ("temporary files removed, no partial output left; run the command again to finish "
            "(a run directory resumes where it stopped)")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM, so that ``finally`` blocks remove temporaries."""


def _terminate(signum, _frame):
    raise Terminated(signal.Signals(signum).name)


class RMGroup(click.Group):
    """A click group whose errors are one line ``error: ...`` (exit status 2), never a traceback.

    Usage errors (a bad option value) are printed as ``error: <what> (see '<command> --help')``
    instead of click's multi-line usage block; :class:`RMError` and operating-system errors
    (a folder that cannot be written, a file name too long) as ``error: <message>``.
    SIGTERM is turned into an exception while a command runs, so that temporaries are
    removed as on Ctrl-C (exit status 130 for SIGINT, 143 for SIGTERM).
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        import threading

        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, _terminate)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):  # a signal before or after the command ran
                _stopped(exc.__cause__)
            click.echo("error: aborted", err=True)
            sys.exit(1)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RMError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            _stopped(exc)
        except OSError as exc:
            click.echo(f"error: {os_error_message(exc)}", err=True)
            sys.exit(2)
        except Exception as exc:
            stop = _stop_behind(exc)
            if stop is None:
                raise
            _stopped(stop)  # e.g. an extension module's import turned Ctrl-C into ImportError


def _stop_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop signal (KeyboardInterrupt) among an exception's causes and contexts, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _stopped(exc: KeyboardInterrupt) -> None:
    """One line for a stop signal, then exit 143 (SIGTERM, :class:`Terminated`) or 130 (SIGINT)."""
    if isinstance(exc, Terminated):
        click.echo(f"error: terminated by {exc.args[0] if exc.args else 'SIGTERM'}; {_STOPPED}", err=True)
        sys.exit(143)
    click.echo(f"error: interrupted; {_STOPPED}", err=True)
    sys.exit(130)


def one_line(text: str) -> str:
    """``text`` on one line (newlines and runs of blanks become one space)."""
    return " ".join(text.split())


def os_error_message(exc: OSError) -> str:
    """A one-line message naming the file of an ``OSError`` and what to do."""
    import errno

    name = exc.filename if exc.filename is not None else "file"
    what = exc.strerror or type(exc).__name__
    hint = {errno.EISDIR: "give a file name, not a folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EACCES: "check the permissions or choose another location",
            errno.EPERM: "check the permissions or choose another location",
            errno.EROFS: "choose a writable location",
            errno.ENAMETOOLONG: f"use a file name of at most {NAME_MAX} bytes",
            errno.ENOENT: "check the path",
            errno.ENOSPC: "free some space and run again"}.get(exc.errno, "check the path and run again")
    return one_line(f"{name}: {what}; {hint}")


def setup_logging(verbose: int) -> None:
    """Configure logging for a CLI run (-v info, -vv debug)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


# ---------------------------------------------------------------------------------------
# parameter types shared by all commands


class FiniteFloat(click.ParamType):
    """A finite float in an optional range (nan and inf are refused)."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False):
        self.bounds = (min, max, min_open, max_open)

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            text = value
        else:
            text = str(value).strip()
        try:
            return check_finite(text, "", *self.bounds)
        except RMError:
            self.fail(f"{value!r} is not a finite number {range_text(*self.bounds)}", param, ctx)

    def get_metavar(self, param, ctx=None):
        return "FLOAT"


class FloatList(click.ParamType):
    """Comma-separated finite floats in a range, e.g. ``0,1,2``; ``none`` is an empty list
    where ``allow_empty``. Empty items (``1,,2``) and an empty value are refused."""

    name = "floats"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False, allow_empty: bool = False, max_items: int = 1000):
        self.bounds = (min, max, min_open, max_open)
        self.allow_empty = allow_empty
        self.max_items = max_items

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        text = str(value).strip()
        if text.lower() == "none" and self.allow_empty:
            return []
        if text.lower() in ("", "none"):
            self.fail(f"{value!r}: give at least one number, e.g. 0,1,2"
                      + (" (or 'none')" if self.allow_empty else ""), param, ctx)
        items = [v.strip() for v in text.split(",")]
        if any(not v for v in items):
            self.fail(f"{value!r} has an empty item; give comma-separated numbers, e.g. 0,1,2", param, ctx)
        if len(items) > self.max_items:
            self.fail(f"{len(items)} values; give at most {self.max_items}", param, ctx)
        out = []
        for v in items:
            try:
                out.append(check_finite(v, "", *self.bounds))
            except RMError:
                self.fail(f"{v!r} in {value!r} is not a finite number {range_text(*self.bounds)}", param, ctx)
        return out

    def get_metavar(self, param, ctx=None):
        return "X,Y,..."


#: Seeds: non-negative and below 2^32 (numpy, torch and LAMMPS all take them).
SEED = click.IntRange(0, 2**32 - 1)
#: Worker processes.
WORKERS = click.IntRange(1, 4096)


def output_option(help: str, required: bool = False, **kwargs):
    """The output option of every command: ``-o`` and ``--output`` (plus ``--out``, an alias)."""
    return click.option("-o", "--output", "--out", "output", required=required, help=help, **kwargs)


def overwrite_option(what: str = "output"):
    """``--overwrite``: replace an existing output (refused otherwise)."""
    return click.option("--overwrite", is_flag=True, help=f"Replace an existing {what} (refused otherwise).")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False, option: str = "-o/--output", folder: bool = False) -> Path:
    """Refuse an output that would destroy an input or an existing file, or cannot be written.

    Raises a one-line :class:`RMError` naming ``option`` when ``path`` is one of ``inputs``
    (or inside one, or holds one), exists and ``overwrite`` is false, is a folder where a file
    goes (or a file where a folder goes), has a name longer than the file-system limit, or
    lies under a folder that is a file.
    """
    path = Path(path)
    if not str(path).strip():
        raise RMError(f"{option}: empty path; give a file name")
    for given in inputs:
        if given is None:
            continue
        given = Path(given)
        if _same(path, given) or path.resolve() == given.resolve():
            raise RMError(f"{option} {path}: that is the input {given}; choose another output name "
                          "(inputs are never overwritten)")
        if folder and given.exists() and path.resolve() in given.resolve().parents:
            raise RMError(f"{option} {path}: the input {given} is inside it; choose another output name")
    for part in (path.name, *(p.name for p in path.parents)):
        if len(os.fsencode(part)) > NAME_MAX:
            raise RMError(f"{option} {path}: a name of {len(os.fsencode(part))} bytes; use at most "
                          f"{NAME_MAX} bytes per file or folder name")
    if path.exists() or path.is_symlink():
        if not folder and path.is_dir():
            raise RMError(f"{option} {path}: is a folder; give a file name")
        if folder and not path.is_dir():
            raise RMError(f"{option} {path}: is a file; give a folder name")
        if not overwrite:
            raise RMError(f"{option} {path}: already exists; pass --overwrite to replace it or choose "
                          "another name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RMError(f"{option} {path}: {parent} is a file, not a folder; choose another location")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RMError(f"{option} {path}: folder {parent} is not writable; choose another location")
            break
    return path
