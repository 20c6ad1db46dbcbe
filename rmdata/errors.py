"""Exceptions shown to users as one-line messages by the command-line tools."""


class RMError(Exception):
    """A problem with user input or the environment, reported in one line.

    The message names the file or field at fault and what to do about it. The CLIs
    print ``error: <message>`` and exit with status 2, never a traceback.
    """
