"""The one error type users see.

Every problem caused by the user's input (a missing file, a bad prompt, mismatched geometry) raises
``InputError`` with a one-line message naming the file or value and the problem. Front ends print
that line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: the message is one line, fit to show as is."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty: what a
    one-line report of an unexpected error shows."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__
