"""Whether the server is up, and how many images it serves."""

from __future__ import annotations

from fastapi import APIRouter

from imgsearch.api.deps import Service
from imgsearch.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(service: Service) -> Health:
    return Health(
        status="ok",
        images=service.count(),
        recovering=service.recovering,
        class_counts_known=service.class_counts_known,
    )
