"""Searching: by words (with what votes taught), and by a photo (reverse image search)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from imgsearch.api import presenters
from imgsearch.api.deps import Service, get_service, kept_under, off_the_loop, read_upload
from imgsearch.api.schemas import (
    MAX_RANKED_OFFSET,
    SESSION_PATTERN,
    ImageSearchResponse,
    SearchResponse,
    problems,
)

router = APIRouter(prefix="/search", tags=["search"], responses=problems(415, 422, 503))


@router.get("", response_model=SearchResponse)
async def search(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words to search for")],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_RANKED_OFFSET)] = 0,
    session: Annotated[str | None, Query(pattern=SESSION_PATTERN)] = None,
    exclude: Annotated[
        list[int],
        Query(max_length=50, description="Class ids (from `interpretation`) to leave out"),
    ] = (),  # type: ignore[assignment]  # FastAPI takes any sequence as a list's default
) -> Response:
    """Images for words, best first; `interpretation` says how the words were understood."""
    service = get_service(request)  # not a dependency: each costs a fast answer its share

    def answer() -> Response:  # storage and numpy block: off the event loop
        kept = kept_under(request, service)
        found = service.search_text(
            q, limit=limit, offset=offset, session=session, exclude_classes=set(exclude)
        )
        rest = SearchResponse(
            query=found.interpretation.query,
            interpretation=presenters.interpretation(
                service.class_names, found.interpretation, found.learned, photos=found.class_photos
            ),
            results=[],
            matches=found.matches,
            did_you_mean=found.did_you_mean,
        )
        results = presenters.results_json(request, service, found.hits, kept)
        return presenters.json_bytes(presenters.results_body(results, rest))

    return await off_the_loop(answer)


@router.post("/image", response_model=ImageSearchResponse)
async def search_by_image(
    request: Request,
    service: Service,
    file: Annotated[UploadFile, File(description="A photo to find similar images to")],
    limit: Annotated[int, Form(ge=1, le=200)] = 20,
    offset: Annotated[int, Form(ge=0, le=MAX_RANKED_OFFSET)] = 0,
    query: Annotated[
        str | None,
        Form(
            max_length=200, description="A word to teach by example: vote on the results under it"
        ),
    ] = None,
    session: Annotated[str | None, Form(pattern=SESSION_PATTERN)] = None,
) -> Response:
    """Reverse image search: images most like an uploaded photo (which is not stored).

    With `query`, the photo is an example of that word: the response gives the word as votes
    must name it, and leaves out what this session already voted not relevant for it.
    """
    data = await read_upload(file, service)

    def search() -> Response:  # storage and the model block: off the event loop
        kept = kept_under(request, service)
        found = service.search_image(data, limit=limit, offset=offset, query=query, session=session)
        results = presenters.results_json(request, service, found.hits, kept)
        rest = ImageSearchResponse(query=found.term, results=[])
        return presenters.json_bytes(presenters.results_body(results, rest))

    return await off_the_loop(search)
