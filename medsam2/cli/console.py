"""rich's console for tables on standard output."""

from __future__ import annotations

from rich.console import Console


class StdoutConsole(Console):
    """A `Console` on standard output that leaves a closed pipe (`medsam2 eval ... | head -1`) to
    the command group, which ends as a Unix tool does (status 141 and a line saying why): rich's
    own handling exits with status 1 without a word, which `batch` uses for "some case failed".

    Markup is off: these tables hold data (file names, case names, error messages), and rich read
    a bracketed word in them as a style tag and dropped it (an error's "under [models] in" came
    out as "under  in")."""

    def __init__(self, **options) -> None:
        options.setdefault("markup", False)
        super().__init__(**options)

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError
