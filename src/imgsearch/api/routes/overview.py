"""What the collection holds: things in the photos (a start view), and near-duplicates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from imgsearch.api import presenters
from imgsearch.api.deps import Service
from imgsearch.api.schemas import Duplicates, Explore, problems

# Plain functions: FastAPI runs them off the event loop.
router = APIRouter(tags=["overview"], responses=problems(422, 503))


@router.get("/explore", response_model=Explore)
def explore(
    request: Request, service: Service, limit: Annotated[int, Query(ge=1, le=50)] = 12
) -> Response:
    """Things in the photos: the words votes taught and the classes most photos show (from
    the index's posting lists), each with how many photos and a cover photo."""
    return presenters.json_bytes(presenters.explore_body(request, service, service.explore(limit)))


@router.get("/duplicates", response_model=Duplicates)
def duplicates(
    request: Request,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """Stacks of near-copies of one photo (resized, re-encoded, cropped a little), newest
    first."""
    stacks, total = service.duplicates(limit, offset)
    return presenters.json_bytes(presenters.duplicates_body(request, service, stacks, total))
