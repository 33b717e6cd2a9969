"""The owner's view of what votes taught, and controls over it (API key): see a term's learned
images and how many independent clients agree on each, reset a term, drop one client's votes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from imgsearch.api import presenters
from imgsearch.api.auth import ApiKey
from imgsearch.api.deps import Service
from imgsearch.api.schemas import ClientDropped, LearnedTerm, TermReset, problems

# Plain functions: FastAPI runs them off the event loop.
router = APIRouter(tags=["votes"], responses=problems(401, 403, 422))

Term = Annotated[str, Path(min_length=1, max_length=200, description="A query, as typed")]
ClientName = Annotated[
    str, Path(min_length=1, max_length=64, description="A client id, or an IP address")
]


@router.get("/terms/{term}", response_model=LearnedTerm)
def learned_term(_: ApiKey, service: Service, term: Term) -> LearnedTerm:
    """What votes taught about a term: per image, how many clients agree, and its weight for
    visitors other than the voters."""
    return presenters.learned_term(service.learned(term))


@router.delete("/terms/{term}", response_model=TermReset)
def reset_term(_: ApiKey, service: Service, term: Term) -> TermReset:
    """Forget every vote on a term: everyone sees it as before anyone voted."""
    reset, removed = service.reset_term(term)
    return TermReset(term=reset, votes_removed=removed)


@router.delete("/clients/{client}/votes", response_model=ClientDropped)
def drop_client(_: ApiKey, service: Service, client: ClientName) -> ClientDropped:
    """Remove every vote one client cast, on every term, and its voices from what terms
    learned; name it by its id (as `GET /api/terms/{term}` lists voters) or its IP address."""
    dropped, removed = service.drop_client(client)
    return ClientDropped(client=dropped, votes_removed=removed)
