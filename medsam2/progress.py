"""Progress bars that end well both in a terminal and in a log file."""

from __future__ import annotations

import sys


def leave_finished_bar() -> bool:
    """tqdm's `leave` for a bar of one step of a longer job: cleared when done in a terminal, but
    kept in a log (standard error not a terminal), where clearing writes no line break and the next
    message would continue the bar's line."""
    return not sys.stderr.isatty()
