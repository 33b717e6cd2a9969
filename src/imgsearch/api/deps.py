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


async def quick_or_off_the_loop(service: ImageSearch, work: Callable[[], T]) -> T:
    """`work`, a read-only answer from this machine's files (a millisecond: "more like
    this"), on the event loop when nothing it may do waits on more than those files
    (`ImageSearch.answers_at_once`: the local backend, no look for a new publication due);
    else in a thread (`off_the_loop`). The hop to a thread and back cost such an answer a
    sixth of its server CPU (bench/http_throughput.py, every image once); each answer made
    at once holds the loop, and every other connection of this process, that long."""
    if service.answers_at_once():
        return work()
    return await off_the_loop(work)


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
