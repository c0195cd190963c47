"""The operator console: a static page served by the control plane next to the Admin API.

:func:`add_console_routes` adds, to an aiohttp application (the Admin API's):

- ``GET /console``: ``console/index.html``; ``GET /console/`` redirects (301) to it;
- ``GET /console/console.js`` and ``GET /console/console.css``: the script and the
  style sheet;
- ``GET /console/<anything else>``: **404** with Kong's body ``{"message": "Not found"}``.

``HEAD`` is answered for each as well. Every answer carries ``Cache-Control:
no-cache`` (a browser revalidates, so an upgraded control plane serves its new
console at once) and a ``Content-Security-Policy`` that allows only this
origin's scripts, styles and connections and no inline script or style: the
page renders API data with DOM building and ``textContent`` only. The files are
package data under ``control_plane/console/``, read once when the routes are
added. If they are missing (a package built without them), the control plane
still starts: the error is logged once and the console's paths answer **503**
``{"message": "the console is not installed: ..."}``; the Admin API is unaffected.

The page and its assets need no admin token; the script sends the operator's
token (``Ferry-Admin-Token``) on every Admin API call it makes. ``docs/console.md``
describes the console for operators.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "CONSOLE_PATH", "add_console_routes"]

#: Where the console is served.
CONSOLE_PATH = "/console"

#: Same-origin everything; no inline script or style, no plugins, no framing, no <base>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

#: Asset name under ``/console/`` → its content type (``index.html`` is ``/console``).
ASSETS: dict[str, str] = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

_INDEX = "index.html"
_INDEX_TYPE = "text/html; charset=utf-8"
_NOT_FOUND = b'{"message":"Not found"}'


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str


def _read(name: str) -> bytes:
    """The bytes of ``control_plane/console/<name>`` (package data)."""
    return resources.files("control_plane").joinpath("console", name).read_bytes()


def _headers(content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _respond(asset: _Asset) -> web.Response:
    return web.Response(body=asset.body, headers=_headers(asset.content_type))


def _not_found() -> web.Response:
    return web.Response(status=404, body=_NOT_FOUND, headers=_headers("application/json; charset=utf-8"))


def _unavailable(reason: str) -> web.Response:
    body = json.dumps({"message": f"the console is not installed: {reason}"}).encode()
    return web.Response(status=503, body=body, headers=_headers("application/json; charset=utf-8"))


def add_console_routes(app: web.Application) -> None:
    """Serve the console on ``app``: ``/console``, ``/console/`` and ``/console/{asset}``.

    Reads ``index.html``, ``console.js`` and ``console.css`` now. When one cannot
    be read, logs an error and serves 503 on the console's paths instead of
    failing: the Admin API must not depend on the console. Adds GET (and HEAD)
    routes only; ``app`` must not be frozen yet. No token is needed for these
    paths (the Admin API's access control exempts ``/console``).
    """
    missing: str | None = None
    index = _Asset(b"", _INDEX_TYPE)
    assets: dict[str, _Asset] = {}
    try:
        index = _Asset(_read(_INDEX), _INDEX_TYPE)
        assets = {name: _Asset(_read(name), content_type) for name, content_type in ASSETS.items()}
    except OSError as exc:
        missing = f"{exc.strerror or exc}: {getattr(exc, 'filename', None) or 'control_plane/console'}"
        log.error("the console is unavailable: cannot read its files (%s); the package was "
                  "built without control_plane/console/*", missing)

    async def serve_index(request: web.Request) -> web.StreamResponse:
        return _unavailable(missing) if missing is not None else _respond(index)

    async def redirect_to_index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(CONSOLE_PATH, headers={"Cache-Control": "no-cache"})

    async def serve_asset(request: web.Request) -> web.StreamResponse:
        if missing is not None:
            return _unavailable(missing)
        asset = assets.get(request.match_info["asset"])
        return _respond(asset) if asset is not None else _not_found()

    app.router.add_get(CONSOLE_PATH, serve_index)
    app.router.add_get(f"{CONSOLE_PATH}/", redirect_to_index)
    app.router.add_get(CONSOLE_PATH + "/{asset}", serve_asset)
