"""The `medsam2` command."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType

import typer
from typer.exceptions import TyperException

from medsam2 import __version__
from medsam2.allocator import keep_large_allocations
from medsam2.cli.errors import EXIT_BAD_INPUT, say_error
from medsam2.cli.annotate import app as annotate_app
from medsam2.cli.batch import batch
from medsam2.cli.evaluate import eval_command
from medsam2.cli.demo import demo
from medsam2.cli.info import info
from medsam2.cli.one_prompt import one_prompt
from medsam2.cli.segment import segment
from medsam2.cli.serve import serve
from medsam2.cli.train import train_command

class MedsamGroup(typer.core.TyperGroup):
    """The command group, ending a command whose standard output was closed (`medsam2 batch ... | head`)
    as a Unix tool killed by SIGPIPE ends, with status 128+13 and a line saying why, instead of click's
    status 1, which `batch` uses for "some case failed"; one stopped by Ctrl-C or SIGTERM with 128+N
    and a line saying so."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # typer would end the command with status 130 and not a word
            say_error("stopped by SIGINT (Ctrl-C)")
            raise typer.Exit(128 + signal.SIGINT) from None
        except SystemExit as stop:
            if stop.code == 128 + signal.SIGTERM:  # `stop_on_signal`: say why, as Ctrl-C does
                say_error("stopped by SIGTERM")
            raise
        except BrokenPipeError:
            # Python flushes stdout again on exit, and would print a second BrokenPipeError.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            say_error("stopped: standard output was closed by the program reading it")
            raise typer.Exit(128 + signal.SIGPIPE) from None


app = typer.Typer(
    name="medsam2",
    cls=MedsamGroup,
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
def start(
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


def with_plain_value_labels(command: typer.core.TyperCommand) -> typer.core.TyperCommand:
    """`command` and its subcommands, their help labelling values as they are typed: typer labels a
    flag `<bool>` though it takes no value, a repeatable option `<list[str]>` though it takes one
    `<str>` each time, and a bounded number `<int range> [x>=1]`, whose width squeezes the help
    text at 80 columns (`<int> [x>=1]` says the same)."""
    context = typer.Context(command)
    for param in command.get_params(context):  # with --help, made (and kept) on first ask
        if isinstance(param, typer.core.TyperOption) and param.metavar is None:
            if param.is_flag:
                param.metavar = ""
            elif param.multiple:
                param.metavar = param.display_type(context).replace("list[", "").replace("]", "").lower()
            elif param.display_type(context).endswith(" range>"):
                param.metavar = param.display_type(context).replace(" range>", ">")
    for subcommand in getattr(command, "commands", {}).values():
        with_plain_value_labels(subcommand)
    return command


# Python prints and drops an exception raised in a weakref callback or a finalizer. torch frees
# tensors between its operations, and each freeing can run such callbacks: a stop signal handled in
# one was lost, and the command ran on to its end with status 0 (one stop in three on a busy machine).
DROPPING_FILES = ("weakref.py", "_weakrefset.py")
REDELIVERY_SECONDS = 0.05


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C (KeyboardInterrupt) and SIGTERM (`kill`, a job scheduler's stop, status 128+15) unwind
    the command alike, so outputs being staged are deleted instead of left behind as hidden folders.
    A signal arriving inside a callback whose exceptions are dropped comes again a moment later."""
    if frame is not None and (Path(frame.f_code.co_filename).name in DROPPING_FILES or frame.f_code.co_name == "__del__"):
        threading.Timer(REDELIVERY_SECONDS, os.kill, (os.getpid(), signum)).start()
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def main() -> None:
    """The `medsam2` command: the app, with a mistyped command line (a missing option, a value of the
    wrong type) reported in one line too, as every other bad input is."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # commands with a stop of their own (batch, serve) replace these
        signal.signal(signum, stop_on_signal)
    # pydicom warns of header quirks it reads past (a value of the wrong form, an unexpected VR
    # encoding), highdicom of values it copies into a SEG as they are (a one-part patient name,
    # common in anonymised exports), in lines naming their own source: noise to a user whose file was read.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)\.")
    try:
        status = with_plain_value_labels(typer.main.get_command(app)).main(prog_name="medsam2", standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except TyperException as error:  # typer's usage and parameter errors
        if not error.format_message():  # no arguments at all: the help
            error.show()
            sys.exit(EXIT_BAD_INPUT)
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "medsam2"
        say_error(f"{command}: {error.format_message()} (see {command} --help)")
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(status if isinstance(status, int) else 0)
