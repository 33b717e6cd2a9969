"""Votes: whether an image is relevant to a query."""

from __future__ import annotations

from fastapi import APIRouter

from imgsearch.api.deps import Client, Service
from imgsearch.api.schemas import VoteRequest, VoteResponse, problems

router = APIRouter(prefix="/feedback", tags=["feedback"], responses=problems(404, 422, 429))


@router.post("", response_model=VoteResponse)
def vote(service: Service, client: Client, body: VoteRequest) -> VoteResponse:
    """Say whether an image is relevant to a query; the session's last vote counts.

    The vote changes the session's own results at once; others' only when independent clients
    (source addresses) agree. Bounded per session and per client, per minute (429).
    """
    service.check_vote_rate(client, body.session)
    term = service.vote(body.query, body.image_id, body.vote, body.session, client)
    return VoteResponse(status="ok", term=term)
