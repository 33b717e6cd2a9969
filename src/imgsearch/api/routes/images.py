from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from imgsearch.api.auth import ApiKey
from imgsearch.api.deps import (
    Service,
    busy_error,
    image_urls,
    read_upload,
    refusal_error,
    results,
)
from imgsearch.api.schemas import IMAGE_ID_PATTERN, ImageDetail, Page, Results, Uploaded
from imgsearch.catalog import ImageRecord
from imgsearch.decode_pool import DecoderBusy
from imgsearch.images import ImageRefused
from imgsearch.ingest import content_id, content_type
from imgsearch.ranking import Hit
from imgsearch.service import NotIndexed
from imgsearch.storage import InvalidKey, NotFound

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="An image id")]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=100_000)]


@router.post("", status_code=201, response_model=Uploaded)
async def upload_image(
    service: Service,
    _: ApiKey,
    file: Annotated[UploadFile, File(description="An image file")],
    key: Annotated[str | None, Form(max_length=512, description="Store under this key")] = None,
) -> dict:
    """Add an image; answers once it is searchable, or with the reason it was refused."""
    data = await read_upload(file, service)

    def add() -> dict:  # storage and the model block: off the event loop
        try:
            stored_as = key or service.unique_key(file.filename or "upload", data)
            result = service.add(stored_as, data)
        except InvalidKey as error:
            raise HTTPException(422, detail=f"invalid key: {error}") from None
        except DecoderBusy as busy:
            raise busy_error(busy) from None
        if result.status == "refused":
            raise refusal_error(ImageRefused(result.code or "refused", result.reason or "refused"))
        record = service.image(result.image_id or content_id(data))
        status = result.status if record and record.status == "indexed" else "pending"
        return {"id": result.image_id, "key": stored_as, "status": status}

    return await run_in_threadpool(add)


@router.get("", response_model=Page)
def list_images(
    request: Request,
    service: Service,
    limit: Limit = 50,
    offset: Offset = 0,
    key: Annotated[str | None, Query(max_length=1024, description="Find by key")] = None,
) -> dict:
    """Browse the collection, newest first, or find the image stored under a key."""
    if key is not None:
        record = service.find_key(key)
        hits = [record] if record else []
        return {"results": results(request, service, _as_hits(hits)), "total": len(hits)}
    records, total = service.browse(limit, offset)
    return {"results": results(request, service, _as_hits(records)), "total": total}


@router.get("/{image_id}", response_model=ImageDetail)
def get_image(request: Request, service: Service, image_id: ImageId) -> dict:
    record = service.image(image_id)
    if record is None:
        raise HTTPException(404, detail=f"no image {image_id}")
    url, thumbnail = image_urls(request, image_id)
    names = service.vocabulary.class_names
    return {
        "id": record.id,
        "key": record.key,
        "keys": list(record.keys),
        "url": url,
        "thumbnail": thumbnail,
        "width": record.width,
        "height": record.height,
        "classes": [{"label": names[c], "score": p} for c, p in record.classes],
    }


@router.delete("/{image_id}", status_code=204, response_class=Response)
def delete_image(service: Service, _: ApiKey, image_id: ImageId) -> Response:
    """Remove an image: every key holding it is forgotten and its bytes deleted."""
    record = service.image(image_id)
    if record is None:
        raise HTTPException(404, detail=f"no image {image_id}")
    for key in record.keys:
        service.remove(key)
    return Response(status_code=204)


@router.get("/{image_id}/file", name="image_file", response_class=Response)
def image_file(service: Service, image_id: ImageId) -> Response:
    """The image's original bytes."""
    record = service.image(image_id)
    if record is None:
        raise HTTPException(404, detail=f"no image {image_id}")
    url = service.catalog.original_url(record.key)
    if url:
        return RedirectResponse(url, status_code=307)
    try:
        data = service.catalog.original(record.key)
    except NotFound:
        raise HTTPException(404, detail=f"the bytes of image {image_id} are gone") from None
    return Response(data, media_type=content_type(record.format), headers=_IMAGE_HEADERS)


@router.get("/{image_id}/thumbnail", name="image_thumbnail", response_class=Response)
def image_thumbnail(service: Service, image_id: ImageId) -> Response:
    """A JPEG at most 384 pixels on its longer side."""
    if service.image(image_id) is None:
        raise HTTPException(404, detail=f"no image {image_id}")
    url = service.catalog.thumbnail_url(image_id)
    if url:
        return RedirectResponse(url, status_code=307)
    try:
        data = service.catalog.thumbnail(image_id)
    except NotFound:
        raise HTTPException(404, detail=f"no thumbnail for image {image_id}") from None
    return Response(data, media_type="image/jpeg", headers=_IMAGE_HEADERS)


@router.get("/{image_id}/similar", response_model=Results)
def similar_images(
    request: Request, service: Service, image_id: ImageId, limit: Limit = 20, offset: Offset = 0
) -> dict:
    """Images most like this one ("more like this")."""
    try:
        hits = service.similar(image_id, limit=limit, offset=offset)
    except NotIndexed:
        raise HTTPException(404, detail=f"no image {image_id}") from None
    return {"results": results(request, service, hits)}


_IMAGE_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


def _as_hits(records: list[ImageRecord]) -> list[Hit]:
    return [Hit(r.id, 1.0) for r in records]
