"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), from assets the app
serves itself: no CDN next to a page where someone types the API key, and they work offline.

The scripts come from the `fastapi-offline` package (Swagger UI and ReDoc bundles); the pages
hold no inline script, so the Content-Security-Policy allows only the app's own scripts.
"""

from __future__ import annotations

import os
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_PATHS = {"/docs", "/redoc"}

# Relative URLs: the pages work under any root path (a stage prefix, a proxy's sub-path).
_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>imgsearch API</title>
  <link rel="stylesheet" href="docs-assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs-assets/swagger-ui-bundle.js"></script>
  <script src="docs-assets/swagger-init.js"></script>
</body>
</html>
"""
_SWAGGER_INIT = """window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  showExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
"""
_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>imgsearch API</title>
</head>
<body>
  <redoc spec-url="openapi.json"></redoc>
  <script src="docs-assets/redoc.standalone.js"></script>
</body>
</html>
"""


class WholeFiles(StaticFiles):
    """Static files served whole, whatever Range asks: Starlette answers a Range it cannot
    honour in plain text, not as the API's JSON, and these few files are small enough to
    send whole (a client may always ignore Range)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
            scope = {**scope, "headers": headers}
        await super().__call__(scope, receive, send)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        del response.headers["accept-ranges"]  # ranges are not offered
        return response


def add_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets (the app must be made with docs_url=None and
    redoc_url=None, so that FastAPI's CDN-based pages are not served)."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(_SWAGGER_PAGE)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC_PAGE)

    @app.get(f"{ASSETS_URL}/swagger-init.js", include_in_schema=False)
    def swagger_init() -> Response:
        return Response(_SWAGGER_INIT, media_type="text/javascript")

    app.mount(ASSETS_URL, WholeFiles(directory=ASSETS_DIR), name="docs-assets")
