"""Dependencies the routes receive through FastAPI's `Depends`, and the threads their blocking
work runs in."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, UploadFile

from imgsearch.api.kept import Kept, KeptAnswers
from imgsearch.service import ImageSearch

T = TypeVar("T")
# Threads for the routes' blocking work (storage, numpy, the model), as many as anyio's pool.
BLOCKING_THREADS = 40
_blocking = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="imgsearch-api")


async def off_the_loop(work: Callable[[], T]) -> T:
    """`work` (it blocks: storage, numpy, the model) in a thread, not on the event loop.

    A plain executor, not the anyio pool FastAPI runs `def` routes in: for an answer of a
    millisecond (a keyword search, "more like this") that pool's bookkeeping (a capacity
    limiter, cancel scopes, per-thread state) cost a quarter of the server's CPU per request
    (bench/http_throughput.py)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_blocking, context.run, work)


def get_service(request: Request) -> ImageSearch:
    service: ImageSearch = request.app.state.service
    return service


Service = Annotated[ImageSearch, Depends(get_service)]


def kept_under(request: Request, service: ImageSearch) -> Kept | None:
    """What this process keeps of its answers under the engine's current answers version
    (api/kept.py); None if nothing may be kept. Read before what is kept is used."""
    kept: KeptAnswers = request.app.state.kept
    return kept.under(service.answers_version())


def get_client(request: Request, service: Service) -> str:
    """The request's client id: its source address by the one rule of clients.py, hashed."""
    peer = request.client.host if request.client else None
    return service.client_id(peer, request.headers.getlist("x-forwarded-for"))


Client = Annotated[str, Depends(get_client)]


async def read_upload(file: UploadFile, service: ImageSearch) -> bytes:
    """The uploaded bytes, refusing oversized files without reading all of them."""
    limit = service.settings.max_image_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"file is larger than the limit of {limit:,} bytes")
    return data
