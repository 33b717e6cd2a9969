"""Dependencies the routes receive through FastAPI's `Depends`."""

from __future__ import annotations

import re
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


def get_client(request: Request, service: Service) -> str:
    """The request's client id: its source address by the one rule of clients.py, hashed."""
    peer = request.client.host if request.client else None
    return service.client_id(peer, request.headers.getlist("x-forwarded-for"))


Client = Annotated[str, Depends(get_client)]

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
    """The URLs of an image's bytes and thumbnail (see `url_base`)."""
    image = f"{url_base(request)}/api/images/{image_id}"
    return f"{image}/file", f"{image}/thumbnail"


_HOST = re.compile(r"^(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")


def url_base(request: Request) -> str:
    """What result URLs start with: the configured public URL; else the request's own scheme
    and Host when the Host names a trusted host (a client on this machine gets absolute URLs
    it can follow); else nothing (paths from the root, with the server's root path). Never an
    arbitrary Host header, which any client may set: a poisoned cache, or a page pointing
    elsewhere, would follow it."""
    settings = request.app.state.service.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    root = request.scope.get("root_path", "")
    host = _HOST.match(request.headers.get("host", ""))
    if host and host["name"].strip("[]") in settings.trusted_hosts:
        return f"{request.url.scheme}://{host[0]}{root}"
    return root


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
