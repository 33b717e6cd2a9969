from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from imgsearch.api.deps import Service, busy_error, read_upload, refusal_error, results
from imgsearch.api.schemas import SESSION_PATTERN, ImageSearchResponse, SearchResponse
from imgsearch.decode_pool import DecoderBusy
from imgsearch.images import ImageRefused

router = APIRouter(prefix="/search", tags=["search"])


@router.get("", response_model=SearchResponse)
def search(
    request: Request,
    service: Service,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words to search for")],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    session: Annotated[str | None, Query(pattern=SESSION_PATTERN)] = None,
    exclude: Annotated[
        list[int],
        Query(max_length=50, description="Class ids (from `interpretation`) to leave out"),
    ] = (),
) -> dict:
    """Images for words, best first; `interpretation` says how the words were understood."""
    if any(not 0 <= c < 1000 for c in exclude):
        raise HTTPException(422, detail="exclude: class ids are 0..999")
    found = service.search_text(
        q, limit=limit, offset=offset, session=session, exclude_classes=set(exclude)
    )
    interpretation = found.interpretation.to_dict(service.vocabulary.class_names)
    taught = found.taught
    interpretation["learned"] = None
    if taught is not None:
        interpretation["learned"] = {
            "votes": taught.votes,
            "sessions": taught.sessions,
            "clients": taught.clients,
            "strength": round(taught.strength(), 3),
            "method": service.settings.feedback_method,
        }
        if found.interpretation.confidence == 0:  # a word only users taught
            interpretation["terms"].append(
                {
                    "phrase": found.interpretation.query,
                    "source": "learned",
                    "confidence": round(taught.strength(), 3),
                    "note": f"taught by {taught.votes} votes from {taught.sessions} sessions "
                    f"and {taught.clients} clients",
                    "classes": [],
                }
            )
    return {
        "query": found.interpretation.query,
        "interpretation": interpretation,
        "results": results(request, service, found.hits),
    }


@router.post("/image", response_model=ImageSearchResponse)
async def search_by_image(
    request: Request,
    service: Service,
    file: Annotated[UploadFile, File(description="A photo to find similar images to")],
    limit: Annotated[int, Form(ge=1, le=200)] = 20,
    offset: Annotated[int, Form(ge=0, le=10_000)] = 0,
    query: Annotated[
        str | None,
        Form(
            max_length=200, description="A word to teach by example: vote on the results under it"
        ),
    ] = None,
    session: Annotated[str | None, Form(pattern=SESSION_PATTERN)] = None,
) -> dict:
    """Reverse image search: images most like an uploaded photo (which is not stored).

    With `query`, the photo is an example of that word: the response gives the word as votes
    must name it, and leaves out what this session already voted not relevant for it.
    """
    data = await read_upload(file, service)

    def search() -> dict:  # storage and the model block: off the event loop
        term = service.vocabulary.normalise(query) if query else None
        hidden = set()
        if term and session:
            votes = service.feedback.session_votes(term, session)
            hidden = {image_id for image_id, vote in votes.items() if vote < 0}
        try:
            hits = service.search_image(data, limit=limit, offset=offset, exclude=hidden)
        except ImageRefused as refusal:
            raise refusal_error(refusal) from None
        except DecoderBusy as busy:
            raise busy_error(busy) from None
        return {"query": term, "results": results(request, service, hits)}

    return await run_in_threadpool(search)
