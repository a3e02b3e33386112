"""The cost console: a browser client of the worker's own HTTP API, served at /ui.

Everything it shows comes from /model/allocation, /model/gpu, /api/budgets, /api/alerts and
/api/advice, fetched by the page itself; the worker only serves files (``static/``, ours,
and uPlot from an installed wheel), so the console needs nothing from the internet.
"""

from __future__ import annotations

from typing import Any, cast

import faust
from aiohttp import web

from costflux.agents.ui.assets import Asset, Assets, load_assets

__all__ = ["register_ui"]


def register_ui(app: faust.App) -> Assets:
    """Serve the console: /ui/ (the page) and /ui/static/<file>."""
    assets = load_assets()
    index = assets.files["index.html"]

    @app.page("/ui")
    async def to_console(view: faust.web.View, request: faust.web.Request) -> Any:
        # The page's own URLs are relative to /ui/ (so a path prefix in front still works).
        return web.Response(status=302, headers={"Location": "/ui/"})

    @app.page("/ui/")
    async def console(view: faust.web.View, request: faust.web.Request) -> Any:
        return _serve(index, cast(web.Request, request))

    @app.page("/ui/static/{name:.+}")
    class StaticFile(faust.web.View):
        async def get(self, request: faust.web.Request, name: str) -> Any:
            asset = assets.files.get(name)
            if asset is None:
                return web.json_response({"code": 404, "message": f"no file {name!r}"},
                                         status=404)
            return _serve(asset, cast(web.Request, request))

    return assets


def _serve(asset: Asset, request: web.Request) -> web.Response:
    """The file, or 304 when the browser holds this version; gzip when it accepts that.

    ``no-cache`` (revalidate every load, then 304 without a body) rather than a long max-age:
    a new costflux version must never run against an old cached script.
    """
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff"}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    if asset.content_type == "text/html":
        # The page runs our scripts only, from this worker; no frames, no inline script.
        headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return web.Response(body=body, headers=headers, content_type=asset.content_type,
                        charset="utf-8")
