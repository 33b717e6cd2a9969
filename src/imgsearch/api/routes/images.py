"""The collection: adding (API key), browsing, an image's details, bytes and thumbnail,
"more like this", and removing (API key)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response

from imgsearch.api import presenters
from imgsearch.api.auth import ApiKey
from imgsearch.api.deps import Service, get_service, kept_under, off_the_loop, read_upload
from imgsearch.api.fast import FastRoute, IntParam
from imgsearch.api.schemas import (
    IMAGE_ID,
    IMAGE_ID_PATTERN,
    MAX_RANKED_OFFSET,
    ImageDetail,
    Page,
    Results,
    Uploaded,
    problems,
)
from imgsearch.results import Hit, NotFound, NotIndexed, Original
from imgsearch.service import TILE_SIDE

router = APIRouter(
    prefix="/images", tags=["images"], responses=problems(401, 403, 404, 415, 422, 503, 507)
)

ImageId = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="An image id")]
MAX_LIMIT = 200
MAX_OFFSET = 100_000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
RankedOffset = Annotated[int, Query(ge=0, le=MAX_RANKED_OFFSET)]
# "More like this": its query parameters' defaults and bounds, for both of its routes.
SIMILAR_QUERY = {
    "limit": IntParam(20, 1, MAX_LIMIT),
    "offset": IntParam(0, 0, MAX_RANKED_OFFSET),
}
# Sides a thumbnail is also served at (a few, so caches hold them): TILE_SIDE is the tile
# thumbnail made at ingest (a WebP).
SMALL_THUMBNAILS = (192, TILE_SIDE)
# An image id names its content (a hash of the bytes): what it answers never changes.
_IMAGE_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}


@router.post("", status_code=201, response_model=Uploaded)
async def upload_image(
    service: Service,
    _: ApiKey,
    file: Annotated[UploadFile, File(description="An image file")],
    key: Annotated[str | None, Form(max_length=512, description="Store under this key")] = None,
) -> Uploaded:
    """Add an image; answers once it is searchable, or with the reason it was refused."""
    data = await read_upload(file, service)

    # Storage and the model block: off the event loop. The thread waits until the image is
    # searchable; settings.http_max_bodies keeps such waits to a share of the threads.
    def add() -> Uploaded:
        outcome = service.upload(file.filename or "upload", data, key=key)
        return Uploaded(id=outcome.id, key=outcome.key, status=outcome.status)

    return await off_the_loop(add)


@router.get("", response_model=Page)
def list_images(
    request: Request,
    service: Service,
    limit: Limit = 50,
    offset: Offset = 0,
    key: Annotated[str | None, Query(max_length=1024, description="Find by key")] = None,
) -> Response:
    """Browse the collection, newest first, or find the image stored under a key."""
    if key is not None:
        record = service.find_key(key)
        records, total = ([record], 1) if record else ([], 0)
    else:
        records, total = service.browse(limit, offset)
    listed = (Hit(record.id, 1.0, "listed") for record in records)
    results = presenters.results_json(request, service, listed)
    return presenters.json_bytes(presenters.results_body(results, Page(results=[], total=total)))


@router.get("/{image_id}", response_model=ImageDetail)
def get_image(request: Request, service: Service, image_id: ImageId) -> ImageDetail:
    record = service.image(image_id)
    if record is None:
        raise NotIndexed(image_id)
    return presenters.image_detail(request, service, record)


@router.delete("/{image_id}", status_code=204, response_class=Response)
def delete_image(service: Service, _: ApiKey, image_id: ImageId) -> Response:
    """Remove an image: every key holding it is forgotten and its bytes deleted."""
    service.remove_image(image_id)
    return Response(status_code=204)


@router.get("/{image_id}/file", name="image_file", response_class=Response)
def image_file(service: Service, image_id: ImageId) -> Response:
    """The image's original bytes."""
    return _bytes(service.original, image_id, missing="the bytes of image {} are gone")


@router.get("/{image_id}/thumbnail", name="image_thumbnail", response_class=Response)
def image_thumbnail(
    service: Service,
    image_id: ImageId,
    size: Annotated[
        int | None,
        Query(
            ge=1,
            le=10_000,
            description=f"192: a JPEG at most 192 pixels; {TILE_SIDE}: a WebP at most "
            f"{TILE_SIDE} pixels, made at ingest, for grid tiles",
        ),
    ] = None,
) -> Response:
    """A JPEG at most 384 pixels on its longer side (or `size`: see there)."""
    if size is not None and size not in SMALL_THUMBNAILS:
        raise HTTPException(422, detail=f"size: {', '.join(map(str, SMALL_THUMBNAILS))} or none")
    return _bytes(
        lambda i: service.thumbnail(i, size), image_id, missing="no thumbnail for image {}"
    )


@router.get("/{image_id}/duplicates", response_model=Results)
def image_duplicates(request: Request, service: Service, image_id: ImageId) -> Response:
    """The near-copies of this image (resized, re-encoded, cropped a little), nearest first."""
    results = presenters.results_json(request, service, service.near_copies(image_id))
    return presenters.json_bytes(presenters.results_body(results))


@router.get("/{image_id}/similar", response_model=Results)
async def similar_images(
    request: Request,
    image_id: ImageId,
    limit: Limit = SIMILAR_QUERY["limit"].default,
    offset: RankedOffset = SIMILAR_QUERY["offset"].default,
) -> Response:
    """Images most like this one ("more like this")."""
    return await similar_page(request, image_id, limit, offset)


async def similar_page(request: Request, image_id: str, limit: int, offset: int) -> Response:
    """The "more like this" answer, through FastAPI (above) or its fast route (api/fast.py)."""
    service = get_service(request)  # not a dependency: each costs a fast answer its share

    def answer() -> Response:  # storage and numpy block: off the event loop
        kept = kept_under(request, service)
        page = ("similar", presenters.url_base(request), image_id, limit, offset)
        body = kept.pages.get(page) if kept else None
        if body is None:
            hits = service.similar(image_id, limit=limit, offset=offset)
            body = presenters.results_body(presenters.results_json(request, service, hits, kept))
            if kept:
                kept.pages.put_many({page: body})
        return presenters.json_bytes(body)

    return await off_the_loop(answer)


# The same route without FastAPI's routing and validation, for requests it reads plainly.
FAST_ROUTES = (
    FastRoute(
        f"{re.escape(router.prefix)}/(?P<image_id>{IMAGE_ID})/similar", SIMILAR_QUERY, similar_page
    ),
)


def _bytes(fetch: Callable[[str], Original], image_id: str, *, missing: str) -> Response:
    """The bytes `fetch` finds, or a redirect to a signed link to them (the bucket serves
    them); 404 saying `missing` if the image is known but they are gone."""
    try:
        found = fetch(image_id)
    except NotFound:
        raise HTTPException(404, detail=missing.format(image_id)) from None
    if found.url:
        return RedirectResponse(found.url, status_code=307)
    return Response(found.data, media_type=found.media_type, headers=_IMAGE_HEADERS)
