"""The one error type users see.

Every problem caused by the user's input (a missing file, a bad prompt, mismatched geometry) raises
``InputError`` with a one-line message naming the file or value and the problem. Front ends print
that line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: the message is one line, fit to show as is."""
