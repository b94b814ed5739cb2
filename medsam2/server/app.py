"""The app factory: `create_app(settings)` builds the web app and REST API of `medsam2 serve`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medsam2 import __version__
from medsam2.server import api
from medsam2.server.errors import install_error_handlers
from medsam2.server.security import install_security
from medsam2.server.settings import ServerSettings
from medsam2.server.state import ServerState

STATIC_DIR = Path(__file__).parent / "static"
# /docs (Swagger UI 5, which renders FastAPI's OpenAPI 3.1) loads its scripts from the fastapi-offline
# wheel's files, not from a CDN, so it works offline. Only the files are used, not its FastAPI subclass.
# (No /redoc: ReDoc's bundle fetches its logo from its CDN.)
DOCS_ASSETS = "/docs-assets"
DOCS_ASSETS_DIR = Path(find_spec("fastapi_offline").origin).parent / "static"
# The page loads only its own scripts and styles and draws slices fetched from this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
DESCRIPTION = """\
Promptable segmentation of 3D medical images and videos over HTTP.

Open a case (`POST /api/sessions`), prompt an object on a slice (`POST .../prompts` with a box,
clicks or a mask), propagate (`POST .../propagate`), then fetch the masks (`GET .../masks` as RLE,
`GET .../mask-file` as NIfTI and other formats) or save them next to the case (`POST .../save`).
With a token, send `Authorization: Bearer TOKEN` on every request. Sessions belong to the client
that opened them: a script keeps the cookie the first answer sets (as an httpx or requests session
does) or sends `X-Medsam2-Client: ID` (16 to 64 letters, digits, '-' or '_', an id of its own) on
every request. Errors are `{"error": "..."}`.
"""


class HeadAsGet:
    """Answers a HEAD request as the GET of its route, without the body (its headers, Content-Length
    included, stay): FastAPI's routes take only the methods they name, and `curl -I` or a link
    checker got a 405 from every page and GET endpoint. One middleware, not a HEAD on each route."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.pathsend":  # a file sent by the server itself
                message = {"type": "http.response.body", "body": b""}
            elif message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


def create_app(settings: ServerSettings, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The app for `settings`. `routers` are included after the core API, under the same security
    and error handling: the place for further groups of routes (annotation projects, say).

    Models load on first use, on their device's worker; `app.state.server.inference.load()` loads
    them up front."""
    settings.check()
    state = ServerState.from_settings(settings)

    async def sweep_expired_sessions() -> None:
        # Look-ups close expired sessions too; this frees their memory on a server no one uses.
        while True:
            await asyncio.sleep(min(60.0, settings.session_idle_seconds / 2))
            state.sessions.close_expired()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep_expired_sessions())
        try:
            yield
        finally:
            sweeper.cancel()
            state.close()

    app = FastAPI(
        title="medsam2", version=__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.server = state
    install_security(app, settings)
    app.add_middleware(HeadAsGet)  # added last, so outermost: the security checks see the GET too
    install_error_handlers(app)
    app.include_router(api.router)
    for router in routers:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        # Asked for by browsers on pages without an icon of their own (a PNG opened in a tab).
        return FileResponse(DOCS_ASSETS_DIR / "favicon.png", media_type="image/png")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="medsam2 API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    return app
