"""Quiet start of a command-line tool: a stop signal while it loads ends in one line.

Loading a command line imports click, numpy, ASE (up to seconds on a busy machine). A SIGINT
or SIGTERM in that window would print Python's traceback; nothing has been written yet, so
the process says so in one line and exits (130 / 143). Once loaded, the command's own
handling takes over (:class:`rmdata.cliutils.RMGroup`: temporaries removed, one line).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def _starting(signum, _frame) -> None:
    os.write(2, f"error: {STOP_WORDS[signum]} by {signal.Signals(signum).name} while starting; nothing "
                "was written\n".encode())
    os._exit(128 + signum)


def quiet_start() -> Callable[[], None]:
    """Until the returned function is called, SIGINT and SIGTERM end the process at once with
    one ``error:`` line (exit status 130 / 143); call it when the command is loaded."""
    old = {s: signal.signal(s, _starting) for s in STOP_WORDS}

    def loaded() -> None:
        for s, handler in old.items():
            signal.signal(s, handler)

    return loaded
