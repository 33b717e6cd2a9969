"""What the collection holds: things in the photos (a start view), and near-duplicates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from imgsearch.api import presenters
from imgsearch.api.deps import Service
from imgsearch.api.schemas import Duplicates, Explore, Stack, Topic, problems
from imgsearch.results import Hit

# Plain functions: FastAPI runs them off the event loop.
router = APIRouter(tags=["overview"], responses=problems(422, 503))


@router.get("/explore", response_model=Explore)
def explore(
    request: Request, service: Service, limit: Annotated[int, Query(ge=1, le=50)] = 12
) -> Explore:
    """Things in the photos: the words votes taught and the classes most photos show (from
    the index's posting lists), each with how many photos and a cover photo."""
    found = service.explore(limit)
    hits = [Hit(topic.cover, 1.0, "listed") for topic, _ in found]
    covers = presenters.results(request, service, hits, {r.id: r for _, r in found})
    topics = [
        Topic(kind=t.kind, label=t.label, query=t.query, count=t.count, cover=cover)
        for (t, _), cover in zip(found, covers, strict=True)
    ]
    return Explore(topics=topics)


@router.get("/duplicates", response_model=Duplicates)
def duplicates(
    request: Request,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Duplicates:
    """Stacks of near-copies of one photo (resized, re-encoded, cropped a little), newest
    first."""
    stacks, total = service.duplicates(limit, offset)
    shown = []
    for stack in stacks:
        hits = (Hit(record.id, 1.0, "similar") for record in stack)
        found = presenters.results(request, service, hits, {r.id: r for r in stack})
        shown.append(Stack(count=len(found), results=found))
    return Duplicates(stacks=shown, total=total)
