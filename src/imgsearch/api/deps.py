"""Dependencies the routes receive through FastAPI's `Depends`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, UploadFile

from imgsearch.catalog import ImageRecord
from imgsearch.decode_pool import DecoderBusy
from imgsearch.images import ImageRefused
from imgsearch.ranking import Hit
from imgsearch.service import ImageSearch


def get_service(request: Request) -> ImageSearch:
    return request.app.state.service


Service = Annotated[ImageSearch, Depends(get_service)]

# Refusal codes that have their own HTTP status; the rest are 422 (unusable content).
REFUSAL_STATUS = {"too_large": 413, "not_an_image": 415}


def refusal_error(refusal: ImageRefused) -> HTTPException:
    return HTTPException(REFUSAL_STATUS.get(refusal.reason, 422), detail=str(refusal))


def busy_error(busy: DecoderBusy) -> HTTPException:
    """Every decoder is taken and the queue before them is full: come back later."""
    return HTTPException(503, detail=str(busy), headers={"Retry-After": str(busy.retry_after)})


async def read_upload(file: UploadFile, service: ImageSearch) -> bytes:
    """The uploaded bytes, refusing oversized files without reading all of them."""
    limit = service.settings.max_image_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"file is larger than the limit of {limit:,} bytes")
    return data


def image_urls(request: Request, image_id: str) -> tuple[str, str]:
    return (
        str(request.url_for("image_file", image_id=image_id)),
        str(request.url_for("image_thumbnail", image_id=image_id)),
    )


def results(request: Request, service: ImageSearch, hits: list[Hit]) -> list[dict]:
    """API result objects for hits, skipping images removed since they were ranked."""
    names = service.vocabulary.class_names
    out = []
    for hit in hits:
        record: ImageRecord | None = service.image(hit.image_id)
        if record is None:
            continue
        url, thumbnail = image_urls(request, hit.image_id)
        out.append(
            {
                "id": hit.image_id,
                "key": record.key,
                "url": url,
                "thumbnail": thumbnail,
                "score": round(hit.score, 6),
                "learned": hit.learned,
                "reason": hit.reason,
                "width": record.width,
                "height": record.height,
                "label": names[record.classes[0][0]] if record.classes else None,
            }
        )
    return out
