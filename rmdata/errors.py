"""Exceptions shown to users as one-line messages by the command-line tools."""


class RMError(Exception):
    """A problem with user input or the environment, reported in one line.

    The message names the file or field at fault and what to do about it. The CLIs
    print ``error: <message>`` and exit with status 2, never a traceback.
    """


def describe_exception(exc: BaseException, limit: int = 120) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty or
    repeats the type), for one-line errors about files a library could not parse."""
    text = str(exc).strip().splitlines()[0][:limit] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name
