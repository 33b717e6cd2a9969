"""The FastAPI application: the same app serves locally (uvicorn) and on Lambda (Mangum)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from imgsearch.api.limits import BodyLimit
from imgsearch.api.routes import feedback, health, images, search, uploads
from imgsearch.index.manifest import IndexFormatError
from imgsearch.service import ImageSearch

log = logging.getLogger(__name__)

ROUTERS = {
    "health": health.router,
    "images": images.router,
    "search": search.router,
    "feedback": feedback.router,
    "uploads": uploads.router,
}


def create_app(
    service: ImageSearch,
    *,
    routers: tuple[str, ...] = tuple(ROUTERS),
    web_dir: Path | None = None,
) -> FastAPI:
    """An app serving `routers` under /api, and the web page at / if `web_dir` is given."""
    app = FastAPI(
        title="imgsearch",
        summary="Find images without metadata: by words, by example, by feedback.",
        version="1.0",
    )
    app.state.service = service
    for name in routers:
        app.include_router(ROUTERS[name], prefix="/api")
    # Multipart framing on top of the largest image we accept.
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_image_bytes + 64 * 1024)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=service.settings.allowed_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["*"],
    )

    @app.exception_handler(IndexFormatError)
    async def unreadable_index(request: Request, error: IndexFormatError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged with its traceback; the client learns only that it was our fault.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    if web_dir is not None:
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app
