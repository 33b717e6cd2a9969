"""Votes: whether an image is relevant to a query."""

from __future__ import annotations

from fastapi import APIRouter

from imgsearch.api.deps import Client, Service
from imgsearch.api.schemas import VoteRequest, VoteResponse, problems

router = APIRouter(prefix="/feedback", tags=["feedback"], responses=problems(404, 422, 429))


@router.post("", response_model=VoteResponse, response_model_exclude_none=True)
def vote(service: Service, client: Client, body: VoteRequest) -> VoteResponse:
    """Say whether an image is relevant to a query; the session's last vote counts.

    The vote changes the session's own results at once; others' only when independent clients
    (source addresses) agree. Bounded per session and per client per minute, and per client
    per UTC day (429).

    `"vote": 0` takes the session's vote on the image back, from whichever address it was
    cast; `withdrawn` says whether there was one (false: nothing changed).
    """
    service.check_vote_rate(client, body.session)
    if body.vote == 0:
        term, withdrawn = service.withdraw(body.query, body.image_id, body.session)
        return VoteResponse(status="ok", term=term, withdrawn=withdrawn)
    term = service.vote(body.query, body.image_id, body.vote, body.session, client)
    return VoteResponse(status="ok", term=term)
