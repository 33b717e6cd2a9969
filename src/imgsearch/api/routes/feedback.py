from __future__ import annotations

from fastapi import APIRouter, HTTPException

from imgsearch.api.deps import Service
from imgsearch.api.schemas import VoteRequest, VoteResponse
from imgsearch.service import NotIndexed

router = APIRouter(prefix="/feedback", tags=["feedback"])


@router.post("", response_model=VoteResponse)
def vote(service: Service, body: VoteRequest) -> dict:
    """Say whether an image is relevant to a query; the session's last vote counts."""
    try:
        term = service.vote(body.query, body.image_id, body.vote, body.session)
    except NotIndexed:
        raise HTTPException(404, detail=f"no image {body.image_id}") from None
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None
    return {"status": "ok", "term": term}
