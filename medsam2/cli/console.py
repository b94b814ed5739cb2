"""rich's console for tables on standard output."""

from __future__ import annotations

from rich.console import Console


class StdoutConsole(Console):
    """A `Console` on standard output that leaves a closed pipe (`medsam2 eval ... | head -1`) to
    the command group, which ends as a Unix tool does (status 141 and a line saying why): rich's
    own handling exits with status 1 without a word, which `batch` uses for "some case failed"."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError
