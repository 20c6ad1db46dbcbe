"""Shared pieces of the ``rmdata`` and ``rmsearch`` command lines."""

from __future__ import annotations

import logging
import sys

import click

from rmdata.errors import RMError


class RMGroup(click.Group):
    """A click group that reports :class:`RMError` as ``error: ...`` on one line, exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RMError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def setup_logging(verbose: int) -> None:
    """Configure logging for a CLI run (-v info, -vv debug)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
