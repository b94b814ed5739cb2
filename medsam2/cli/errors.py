"""Turn user-input errors into one line on stderr and exit status 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from tqdm import tqdm

from medsam2.errors import InputError, first_line

F = TypeVar("F", bound=Callable)

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1  # the command ran, but some of its cases failed (each reported)


def say_error(message: str) -> None:
    """Print `message` as the one-line error, on a line of its own: a progress bar the error broke
    off (left open while the exception holds its loop's frame) is closed first."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    typer.echo(f"error: {message}", err=True)


def fail(message: str) -> None:
    """Print `message` as the one-line error and exit the command with status 2."""
    say_error(message)
    raise typer.Exit(EXIT_BAD_INPUT)


def reports_input_errors(command: F) -> F:
    """Decorate a command so an `InputError` ends it with a one-line message, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as error:
            fail(first_line(error))

    return wrapper  # type: ignore[return-value]
