from __future__ import annotations

from fastapi import APIRouter, HTTPException

from imgsearch.api.deps import Client, Service
from imgsearch.api.limits import limit_votes
from imgsearch.api.schemas import VoteRequest, VoteResponse
from imgsearch.service import NotIndexed

router = APIRouter(prefix="/feedback", tags=["feedback"])


@router.post("", response_model=VoteResponse)
def vote(service: Service, client: Client, body: VoteRequest) -> dict:
    """Say whether an image is relevant to a query; the session's last vote counts.

    The vote changes the session's own results at once; others' only when independent clients
    (source addresses) agree. Bounded per session and per client, per minute (429).
    """
    limit_votes(service, client, body.session)
    try:
        term = service.vote(body.query, body.image_id, body.vote, body.session, client)
    except NotIndexed:
        raise HTTPException(404, detail=f"no image {body.image_id}") from None
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None
    return {"status": "ok", "term": term}
