"""Uploads straight from the browser to the bucket (cloud only), and their progress.

1. `POST /api/uploads` {filename, content_type} with the API key -> a presigned POST form for
   a fresh key under images/uploads/ (keys.py), valid for a few minutes, for one image of at
   most `max_image_bytes`.
2. The browser POSTs the form's `fields` plus the file (as the last field, `file`) to `url`.
3. S3 tells the embed function, which ingests the image; `GET /api/uploads/status?key=KEY`
   says how far it got: pending (nothing recorded yet), present (ingested, `image_id`),
   refused (`reason`), removed, or failed (`reason`).

Files never pass through the API (API Gateway and Lambda cap request bodies at a few MB).
Locally there is no bucket to upload into: POST /api/uploads answers 404, and POST /api/images
takes the file instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from imgsearch.api.auth import ApiKey
from imgsearch.api.deps import Service
from imgsearch.api.schemas import UploadForm, UploadRequest, UploadStatus, problems

router = APIRouter(prefix="/uploads", tags=["uploads"], responses=problems(401, 403, 404, 422))


@router.post("", status_code=201, response_model=UploadForm)
def create_upload(service: Service, _: ApiKey, body: UploadRequest) -> UploadForm:
    """A presigned form to upload one image straight into the bucket."""
    form = service.upload_form(body.filename, body.content_type)
    return UploadForm(url=form.url, fields=form.fields, key=form.key, expires_in=form.expires_in)


@router.get("/status", response_model=UploadStatus)
def upload_status(
    service: Service,
    key: Annotated[str, Query(min_length=1, max_length=1024, description="From POST /uploads")],
) -> UploadStatus:
    """What became of an upload: pending until the embed function has recorded its key."""
    status = service.upload_status(key)
    return UploadStatus(
        key=status.key, status=status.status, image_id=status.image_id, reason=status.reason
    )
