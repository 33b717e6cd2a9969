"""The FastAPI application: the same app serves locally (uvicorn) and on Lambda (Mangum)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from imgsearch.api.docs import DOCS_PATHS, add_docs
from imgsearch.api.fast import FastRoutes
from imgsearch.api.guard import RequestGuard, SecurityHeaders, page_policy
from imgsearch.api.kept import KeptAnswers
from imgsearch.api.methods import HeadAsGet, allowed
from imgsearch.api.page import Page, PageServer
from imgsearch.api.routes import feedback, health, images, overview, search, uploads, votes
from imgsearch.api.schemas import problems
from imgsearch.results import (
    DecoderBusy,
    DirectUploadsUnavailable,
    ImageRefused,
    IndexFormatError,
    InvalidKey,
    NotIndexed,
    NotUnderstood,
    StorageFull,
    TooMany,
    UnusableFile,
)
from imgsearch.service import ImageSearch

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 16 * 1024  # a vote is a few hundred bytes
ECHOED_INPUT_CHARS = 100  # of an invalid input, in a 422: never a mirror of the request
GZIP_MIN_BYTES = 500  # smaller answers gain less than the header costs
MAX_DETAIL_CHARS = 300  # of a refusal's reason, which may quote what was sent (a key)
# Refusal codes of an image that have their own HTTP status; the rest are 422 (unusable).
REFUSAL_STATUS = {"too_large": 413, "not_an_image": 415}

API_PREFIX = "/api"
ROUTERS = {
    "health": health.router,
    "images": images.router,
    "search": search.router,
    "feedback": feedback.router,
    "uploads": uploads.router,
    "votes": votes.router,
    "overview": overview.router,
}
# Routes also answered without FastAPI's routing (api/fast.py), by router.
FAST_ROUTES = {"images": images.FAST_ROUTES}


def create_app(
    service: ImageSearch,
    *,
    routers: tuple[str, ...] = tuple(ROUTERS),
    web_dir: Path | None = None,
) -> FastAPI:
    """An app serving `routers` under /api, and the web page at / if `web_dir` is given."""
    settings = service.settings
    app = FastAPI(
        title="imgsearch",
        summary="Find images without metadata: by words, by example, by feedback.",
        version="1.0",
        docs_url=None,  # served from the app's own assets by add_docs, not from a CDN
        redoc_url=None,
        responses=problems(400, 413, 431),  # any request may meet these (guard.py)
        # FastAPI's OpenTelemetry hooks: nothing here configures a provider, and asking
        # whether one is configured cost every request ~6% of a fast answer's CPU.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.state.kept = KeptAnswers(settings.http_kept_page_bytes, settings.http_kept_results)
    for name in routers:
        app.include_router(ROUTERS[name], prefix=API_PREFIX)
    add_docs(app)
    # Innermost of the middleware: what it answers passes the guard and gets the headers.
    fast = tuple(route for name in routers for route in FAST_ROUTES.get(name, ()))
    if fast:
        # (the app's handlers, added below into this same mapping)
        app.add_middleware(
            FastRoutes, prefix=API_PREFIX, routes=fast, handlers=app.exception_handlers
        )
    # Forms: multipart framing on top of the largest image we accept; JSON: a vote.
    app.add_middleware(
        RequestGuard,
        max_form_bytes=settings.max_image_bytes + 64 * 1024,
        max_other_bytes=MAX_JSON_BYTES,
        max_bodies=settings.http_max_bodies,
        max_client_bodies=settings.http_max_client_bodies,
        client_of=service.client_address,  # as votes count clients, without the secret
    )
    if settings.allowed_origins:  # none: browsers allow only the page's own origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["content-type", "x-api-key"],
        )
    app.add_middleware(SecurityHeaders, page_origins=settings.page_origins, docs_paths=DOCS_PATHS)
    # JSON and the page's text files, compressed for clients that accept it (JPEGs are not:
    # Starlette leaves images alone); outside the rest, so every answer passes through it.
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=6)
    # Outside compression: a HEAD's headers are the compressed GET's (its length, its encoding).
    app.add_middleware(HeadAsGet)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, error: HTTPException) -> Response:
        if isinstance(error.detail, str) and len(error.detail) > MAX_DETAIL_CHARS:
            cut = f"{error.detail[:MAX_DETAIL_CHARS]}... ({len(error.detail):,} characters)"
            error = HTTPException(error.status_code, cut, error.headers)
        if error.status_code == 405 and (allow := allowed(app.routes, request.scope)):
            error = HTTPException(405, error.detail, {**(error.headers or {}), "Allow": allow})
        return await http_exception_handler(request, error)

    # What the engine refuses, as HTTP: one answer for each, whichever route met it.
    async def refuse(
        request: Request, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> Response:
        return await refused(request, HTTPException(status, detail, headers))

    @app.exception_handler(ImageRefused)
    async def unusable_image(request: Request, error: ImageRefused) -> Response:
        return await refuse(request, REFUSAL_STATUS.get(error.reason, 422), str(error))

    @app.exception_handler(DecoderBusy)
    async def decoders_busy(request: Request, error: DecoderBusy) -> Response:
        # Every decoder is taken and the queue before them is full: come back later.
        retry = {"Retry-After": str(error.retry_after)}
        return await refuse(request, 503, str(error), retry)

    @app.exception_handler(NotIndexed)
    async def no_such_image(request: Request, error: NotIndexed) -> Response:
        return await refuse(request, 404, f"no image {error}")

    @app.exception_handler(NotUnderstood)
    async def not_understood(request: Request, error: NotUnderstood) -> Response:
        return await refuse(request, 422, str(error))

    @app.exception_handler(InvalidKey)
    async def invalid_key(request: Request, error: InvalidKey) -> Response:
        return await refuse(request, 422, f"invalid key: {error}")

    @app.exception_handler(TooMany)
    async def too_many(request: Request, error: TooMany) -> Response:
        return await refuse(request, 429, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(DirectUploadsUnavailable)
    async def no_direct_uploads(request: Request, error: DirectUploadsUnavailable) -> Response:
        # 404, not 501: there is no such resource here, and a 5xx would read as our fault.
        detail = "direct uploads need the cloud backend; here, POST the file to /api/images"
        return await refuse(request, 404, detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's answer, with each echoed input cut short (never mirror a large body) and
        # a validator's own error as its message rather than an empty object.
        errors = [_readable(e) for e in error.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(IndexFormatError)
    async def unreadable_index(request: Request, error: IndexFormatError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(UnusableFile)
    async def damaged_data(request: Request, error: UnusableFile) -> JSONResponse:
        # Found while serving (a start refuses): an operator must repair it; say so, not 500.
        log.error("%s", error)
        return JSONResponse(
            {"detail": "the server's stored data needs repair: see its log"}, status_code=503
        )

    @app.exception_handler(StorageFull)
    async def storage_full(request: Request, error: StorageFull) -> JSONResponse:
        # Nothing half-written stays (ingest undoes its steps); freeing space heals it.
        log.error("storage full on %s %s: %s", request.method, request.url.path, error)
        return JSONResponse(
            {"detail": "the server's storage is full: try again once space is freed"},
            status_code=507,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged with its traceback; the client learns only that it was our fault.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    if web_dir is not None:
        origins = settings.page_origins

        def policy(page: Page) -> str:
            return page_policy(origins, page.inline_scripts, page.inline_styles)

        # What no route takes: a path some route takes with another method gets that route's
        # 405, not the page's (a mount at / would match every path first). No redirect to
        # the path with or without its final slash either: the page answers it.
        app.router.default = PageServer(app, web_dir, policy)
        app.router.redirect_slashes = False
    return app


def _readable(error: dict[str, Any]) -> dict[str, Any]:
    readable = {**error}
    if "input" in error:
        readable["input"] = _shortened(error["input"])
    if "ctx" in error:
        readable["ctx"] = {
            k: str(v) if isinstance(v, Exception) else v for k, v in error["ctx"].items()
        }
    return readable


def _shortened(value: object) -> object:
    """`value` if it is short and JSON can hold it; else the start of it, as a string, with its
    length (a list, a dict or a body cut as well as a string; NaN and lone surrogates
    written out so the answer can be encoded)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode()
    except (TypeError, ValueError):  # NaN, a lone surrogate (UnicodeEncodeError), an object
        text = None
    if text is not None and len(text) <= ECHOED_INPUT_CHARS:
        return value
    shown = value if isinstance(value, str) else text or repr(value)
    start = shown[:ECHOED_INPUT_CHARS].encode("utf-8", "backslashreplace").decode()
    return f"{start}... ({len(shown):,} characters)"
