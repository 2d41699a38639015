"""The NOC web console: static files served by the gateway at `/` (index.html) and `/console/...`
(ES modules, CSS, the vendored uPlot), every asset local, no build step (docs/console.md).

The console is not an API: its paths are no routes of the transcoder, so they appear neither in
the OpenAPI document nor to the fuzzer. Every console response carries a Content-Security-Policy
that allows only this origin (scripts, styles, images, fetch and WebSocket), so an injected
string can neither run inline script nor send data elsewhere.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

PREFIX = "/console"
ROOT = resources.files("gateway") / "static" / "console"

# 'self' in connect-src covers ws:// and wss:// of the same host (CSP level 3).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_console(path: str) -> bool:
    """Whether a request path belongs to the console (the page itself or one of its assets)."""
    return path == "/" or path.startswith(PREFIX + "/")


def mount(app: FastAPI) -> None:
    """Add the console's page and assets to the gateway's inner FastAPI app."""
    app.mount(PREFIX, StaticFiles(directory=str(ROOT)), name="console")
    index = str(ROOT / "index.html")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def console_index() -> FileResponse:
        # the page is tiny and names its assets by path: always revalidate it
        return FileResponse(index, media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})
