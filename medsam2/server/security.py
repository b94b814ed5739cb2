"""What every request passes before it reaches a route: the Host check, the token, the client id.

- Token (when the server has one): ``Authorization: Bearer TOKEN``, the ``X-Medsam2-Token`` header,
  ``?token=TOKEN`` (the URL `medsam2 serve` prints; it also sets an HttpOnly cookie so the page's own
  requests carry it) or that cookie. Compared in constant time.
- Host: a loopback server without a token answers only requests addressed to a loopback name (see
  `ServerSettings.checks_host_header`).
- Client id: sessions belong to the client that opened them. Browsers get an HttpOnly SameSite cookie;
  scripts keep that cookie (an httpx/requests client does) or send ``X-Medsam2-Client``.
"""

from __future__ import annotations

import hmac
import html
import re
import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from medsam2.server.errors import MAX_JSON_BODY, declared_length, error_response, json_body_too_large
from medsam2.server.settings import ServerSettings, is_loopback

CLIENT_COOKIE = "medsam2_client"
CLIENT_HEADER = "x-medsam2-client"
TOKEN_COOKIE = "medsam2_token"
TOKEN_HEADER = "x-medsam2-token"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# The routes that take a file as their body (streamed to disk under --max-upload-mb); every other
# body is JSON, parsed whole in memory, and may hold at most MAX_JSON_BODY.
_UPLOAD_ROUTE = re.compile(r"^(POST /api/cases|PUT /api/sessions/[^/]+/mask-file)$")


def declared_too_large(request: Request) -> bool:
    """Whether a request other than an upload declares a body over MAX_JSON_BODY. The JSON routes'
    own limit (`max_body_size`) stops a body that grows past it unannounced; one announced by its
    Content-Length it answers in plain text, so that one is refused here, as JSON."""
    declared = declared_length(request)
    return declared is not None and declared > MAX_JSON_BODY and not _UPLOAD_ROUTE.match(f"{request.method} {request.url.path}")


def host_name(host_header: str) -> str:
    """The name part of a Host header: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def presented_token(request: Request) -> tuple[str | None, bool]:
    """The token the request carries and whether it came in the query string."""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip(), False
    if TOKEN_HEADER in request.headers:
        return request.headers[TOKEN_HEADER], False
    if "token" in request.query_params:
        return request.query_params["token"], True
    return request.cookies.get(TOKEN_COOKIE), False


def install_security(app: FastAPI, settings: ServerSettings) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if settings.checks_host_header and not is_loopback(host_name(request.headers.get("host", ""))):
            return error_response(
                403, "this server answers only requests to localhost / 127.0.0.1 (start it with --token to serve other names)"
            )
        token, from_query = presented_token(request)
        if settings.token is not None and not (
            token is not None and hmac.compare_digest(token.encode(), settings.token.encode())
        ):
            refused = (
                "missing or wrong token: open the URL `medsam2 serve` printed (it ends in ?token=...) "
                "or send the header 'Authorization: Bearer TOKEN'"
            )
            if "text/html" in request.headers.get("accept", ""):  # a browser opening the page: a page that says so
                page = f"<!doctype html><meta charset=utf-8><title>medsam2: token needed</title><p>{html.escape(refused)}</p>"
                return HTMLResponse(page, 401, {"WWW-Authenticate": "Bearer"})
            return error_response(401, refused, {"WWW-Authenticate": "Bearer"})
        header = request.headers.get(CLIENT_HEADER)
        if header is not None and not _CLIENT_ID.match(header):
            # Replaced silently, it would open sessions the script could never reach again.
            return error_response(400, f"{CLIENT_HEADER}: give 16 to 64 letters, digits, '-' or '_' (a random id of your own)")
        client = header or request.cookies.get(CLIENT_COOKIE)
        fresh = client is None or not _CLIENT_ID.match(client)
        if fresh:
            client = secrets.token_urlsafe(18)
        if declared_too_large(request):
            return json_body_too_large()
        request.state.client_id = client
        response = await call_next(request)
        if fresh:
            response.set_cookie(CLIENT_COOKIE, client, httponly=True, samesite="strict")
        if settings.token is not None and from_query:
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
