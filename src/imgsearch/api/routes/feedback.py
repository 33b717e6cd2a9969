from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from imgsearch.api.deps import Service
from imgsearch.api.limits import limit_votes
from imgsearch.api.schemas import VoteRequest, VoteResponse
from imgsearch.service import NotIndexed

router = APIRouter(prefix="/feedback", tags=["feedback"])


@router.post("", response_model=VoteResponse)
def vote(request: Request, service: Service, body: VoteRequest) -> dict:
    """Say whether an image is relevant to a query; the session's last vote counts.

    Votes are anonymous but bounded: per session and per client address, per minute (429).
    """
    limit_votes(service, request.client.host if request.client else "unknown", body.session)
    try:
        term = service.vote(body.query, body.image_id, body.vote, body.session)
    except NotIndexed:
        raise HTTPException(404, detail=f"no image {body.image_id}") from None
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None
    return {"status": "ok", "term": term}
