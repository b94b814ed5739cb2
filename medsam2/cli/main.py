"""The `medsam2` command."""

from __future__ import annotations

import typer

from medsam2 import __version__
from medsam2.allocator import keep_large_allocations
from medsam2.cli.annotate import app as annotate_app
from medsam2.cli.batch import batch
from medsam2.cli.evaluate import eval_command
from medsam2.cli.demo import demo
from medsam2.cli.info import info
from medsam2.cli.one_prompt import one_prompt
from medsam2.cli.segment import segment
from medsam2.cli.serve import serve
from medsam2.cli.train import train_command

app = typer.Typer(
    name="medsam2",
    help=(
        "Promptable segmentation of 3D medical images and medical videos.\n\n"
        "Give one prompt (a box, clicks or a mask) on one slice and get the object through the whole "
        "volume. Run `medsam2 COMMAND --help` for each command's options and an example."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # paragraphs rewrapped to the terminal, `code` shown as such
    pretty_exceptions_enable=False,
    add_completion=False,
)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"medsam2 {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """medsam2: promptable segmentation of 3D medical images and videos."""
    keep_large_allocations()


app.command("info")(info)
app.command("eval")(eval_command)
app.command("segment")(segment)
app.command("one-prompt")(one_prompt)
app.command("demo")(demo)
app.command("serve")(serve)
app.command("batch")(batch)
app.command("train")(train_command)
app.add_typer(annotate_app, name="annotate")
