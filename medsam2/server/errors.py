"""Errors as clients see them: JSON ``{"error": "one line"}`` with a fitting status, never a traceback.

The server's own input errors subclass `InputError` with the HTTP status they stand for; any other
`InputError` (from reading a scan, a prompt the model cannot use...) is a 400. Anything else is a
bug: the client gets a 500 with a generic line and the traceback goes to the server's log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException

from medsam2.errors import InputError

log = logging.getLogger("medsam2.server")


class NotFound(InputError):
    status_code = 404


class Conflict(InputError):
    status_code = 409


class StaleRevision(InputError):
    status_code = 412  # Precondition Failed: the request's If-Match names an older revision


class PayloadTooLarge(InputError):
    status_code = 413


class UnsupportedMedia(InputError):
    status_code = 415


class Busy(InputError):
    status_code = 503


class OutOfMemory(InputError):
    status_code = 503


@contextmanager
def memory_for_case(name: str) -> Iterator[None]:
    """Reading case `name` running out of memory is a 503 naming it, not a bug's 500: a scan under
    the voxels an upload may declare can still need more memory than this machine has, and the
    arrays it got are freed as the error unwinds, so the server goes on serving."""
    try:
        yield
    except MemoryError:
        raise OutOfMemory(f"{name}: the scan needs more memory than the server has; open it on a machine with more memory") from None


# Messages quote what the client sent; a long value is cut, not echoed back whole.
MAX_MESSAGE = 500


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    line = message.splitlines()[0] if message else "error"
    if len(line) > MAX_MESSAGE:
        line = line[: MAX_MESSAGE - 1] + "…"
    return JSONResponse({"error": line}, status_code, headers=headers)


# The most a JSON request body may hold (the largest slice's mask prompt, as RLE, is far less): the
# body is parsed whole in memory, at some 20 times its size, before any field is checked. Uploads
# stream to a file under --max-upload-mb instead.
MAX_JSON_BODY = 64 * 2**20
# What Starlette's body limit raises (a 413) once a body goes past it.
STARLETTE_TOO_LARGE = "Content Too Large"

# What FastAPI answers (a 400) for a JSON body it could not decode other than by a JSONDecodeError.
FASTAPI_BODY_ERROR = "There was an error parsing the body"


def sent_unparsed_body(error: RequestValidationError) -> bool:
    """Whether the body was refused as the raw bytes FastAPI passes on when no Content-Type names JSON."""
    return any(
        tuple(problem.get("loc", ())) == ("body",) and isinstance(problem.get("input"), bytes) for problem in error.errors()
    )


def declared_length(request: Request) -> int | None:
    """The body size a request declares in its Content-Length, or None where it declares none
    (or something that is no size: "²" passes str.isdigit but not int)."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def json_body_too_large() -> JSONResponse:
    return error_response(413, f"request body: over the {MAX_JSON_BODY // 2**20} MiB a JSON request may have")


def validation_message(error: RequestValidationError) -> str:
    """The first problem pydantic found, as "where: what"."""
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":  # its location is a character position, not a field
        reason = first.get("ctx", {}).get("error", "JSON decode error")
        return f"request body: not valid JSON ({reason}, at character {first['loc'][-1]})"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
    return f"{where}: {first.get('msg', 'invalid value')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return error_response(getattr(error, "status_code", 400), str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == FASTAPI_BODY_ERROR:
            # FastAPI's line for a JSON body json.loads refused other than as a syntax error (bytes
            # that are not UTF-8, arrays nested past Python's recursion limit): malformed as well.
            return error_response(422, "request body: not valid JSON (not UTF-8 text, or nested too deeply)")
        if error.status_code == 413 and error.detail == STARLETTE_TOO_LARGE:
            return json_body_too_large()
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body_refused = any(tuple(problem.get("loc", ()))[:1] == ("body",) for problem in error.errors())
        if body_refused and content_type not in ("", "application/json"):
            return error_response(415, f"send the request body as JSON with Content-Type: application/json, not {content_type}")
        if body_refused and content_type == "" and sent_unparsed_body(error):
            # A body without a Content-Type is not parsed as JSON: pydantic saw bytes, and its line
            # ("Input should be a valid dictionary") blamed a body that may well be valid JSON.
            return error_response(415, "send the request body as JSON with Content-Type: application/json (the request had no Content-Type)")
        return error_response(422, validation_message(error))

    # A handler of its own: Starlette re-raises what the catch-all handler answers, and the server
    # logged a client gone mid-upload as a traceback.
    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error_response(400, "the client disconnected before the request was complete")

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (the server's log has the details)")
