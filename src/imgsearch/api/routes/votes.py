"""The owner's view of what votes taught, and controls over it (API key): see a term's learned
images and how many independent clients agree on each, reset a term, drop one client's votes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from imgsearch.api.auth import ApiKey
from imgsearch.api.deps import Service
from imgsearch.api.schemas import ClientDropped, LearnedTerm, TermReset
from imgsearch.learning import trust

router = APIRouter(tags=["votes"])  # plain functions: FastAPI runs them off the event loop

Term = Annotated[str, Path(min_length=1, max_length=200, description="A query, as typed")]
ClientName = Annotated[
    str, Path(min_length=1, max_length=64, description="A client id, or an IP address")
]


@router.get("/terms/{term}", response_model=LearnedTerm)
def learned_term(_: ApiKey, service: Service, term: Term) -> dict:
    """What votes taught about a term: per image, how many clients agree, and its weight for
    visitors other than the voters."""
    try:
        summary = service.learned(term)
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None
    images = []
    for agreement in summary.images:
        record = service.image(agreement.image_id)
        images.append(
            {
                "id": agreement.image_id,
                "key": record.key if record else None,
                "up_clients": agreement.up_clients,
                "down_clients": agreement.down_clients,
                "up": round(agreement.up, 4),
                "down": round(agreement.down, 4),
                "weight": round(trust(agreement), 4),
            }
        )
    images.sort(key=lambda i: (-abs(i["weight"]), -i["up_clients"], i["id"]))
    voters = sorted(service.feedback.voters(summary.term).items(), key=lambda v: (-sum(v[1]), v[0]))
    return {
        "voters": [{"client": c, "up": up, "down": down} for c, (up, down) in voters[:100]],
        "term": summary.term,
        "votes": summary.votes,
        "sessions": summary.sessions,
        "clients": summary.clients,
        "images": images,
    }


@router.delete("/terms/{term}", response_model=TermReset)
def reset_term(_: ApiKey, service: Service, term: Term) -> dict:
    """Forget every vote on a term: everyone sees it as before anyone voted."""
    try:
        reset, removed = service.reset_term(term)
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None
    return {"term": reset, "votes_removed": removed}


@router.delete("/clients/{client}/votes", response_model=ClientDropped)
def drop_client(_: ApiKey, service: Service, client: ClientName) -> dict:
    """Remove every vote one client cast, on every term, and its voices from what terms
    learned; name it by its id (as `GET /api/terms/{term}` lists voters) or its IP address."""
    try:
        dropped, removed = service.drop_client(client)
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None
    return {"client": dropped, "votes_removed": removed}
