"""The one error type users see.

Every problem caused by the user's input (a missing file, a bad prompt, mismatched geometry) raises
``InputError`` with a one-line message naming the file or value and the problem. Front ends print
that line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: the message is one line, fit to show as is."""


class UnavailableError(InputError):
    """A service medsam2 works through did not answer (an annotation project's database): not a
    mistake in the request, yet told in one line as bad input is; a server answers it with 503,
    as a request to try again later, not to change."""

    status_code = 503


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty: what a
    one-line report of an unexpected error shows."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__
