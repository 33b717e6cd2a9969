"""Uploads straight from the browser to the bucket (cloud only), and their progress.

1. `POST /api/uploads` {filename, content_type} with the API key -> a presigned POST form for
   a fresh key under images/uploads/, valid for UPLOAD_EXPIRES seconds, for one image of at
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

import secrets
from pathlib import PurePosixPath
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from imgsearch.api.auth import ApiKey
from imgsearch.api.deps import Service
from imgsearch.catalog import IMAGES_PREFIX
from imgsearch.service import safe_file_name
from imgsearch.storage import DirectUploads, InvalidKey

router = APIRouter(prefix="/uploads", tags=["uploads"])

UPLOAD_EXPIRES = 600  # seconds: long enough for a slow phone upload, short enough to leak little
UPLOADS_PREFIX = "uploads/"


class UploadRequest(BaseModel):
    filename: str = Field(min_length=1, max_length=255, description="The file's name")
    content_type: str = Field(
        pattern=r"^image/[A-Za-z0-9][A-Za-z0-9.+-]{0,99}$",
        description="The file's MIME type: image/...",
    )


class UploadForm(BaseModel):
    url: str = Field(description="Where to POST the form")
    fields: dict[str, str] = Field(description="Form fields to send before the `file` field")
    key: str = Field(description="The key the image will have: ask /api/uploads/status")
    expires_in: int = Field(description="Seconds the form stays valid")


class UploadStatus(BaseModel):
    key: str
    status: Literal["pending", "present", "refused", "removed", "failed"]
    image_id: str | None = None
    reason: str | None = None


def upload_key(filename: str) -> str:
    """A fresh key under uploads/ that keeps the file's name readable: name-<random>.ext."""
    name = PurePosixPath(safe_file_name(filename))
    return f"{UPLOADS_PREFIX}{name.stem}-{secrets.token_hex(6)}{name.suffix}"


@router.post("", status_code=201, response_model=UploadForm)
def create_upload(service: Service, _: ApiKey, body: UploadRequest) -> dict:
    """A presigned form to upload one image straight into the bucket."""
    store = service.storage.objects
    if not isinstance(store, DirectUploads):
        # 404, not 501: there is no such resource here, and a 5xx would read as our fault.
        raise HTTPException(
            404, detail="direct uploads need the cloud backend; here, POST the file to /api/images"
        )
    key = upload_key(body.filename)
    form = store.presigned_post(
        IMAGES_PREFIX + key,
        content_type=body.content_type,
        content_type_prefix="image/",
        max_bytes=service.settings.max_image_bytes,
        expires=UPLOAD_EXPIRES,
    )
    return {"url": form.url, "fields": form.fields, "key": key, "expires_in": UPLOAD_EXPIRES}


@router.get("/status", response_model=UploadStatus)
def upload_status(
    service: Service,
    key: Annotated[str, Query(min_length=1, max_length=1024, description="From POST /uploads")],
) -> dict:
    """What became of an upload: pending until the embed function has recorded its key."""
    try:
        record = service.catalog.key(key)
    except InvalidKey as error:
        raise HTTPException(422, detail=f"invalid key: {error}") from None
    if record is None:
        return {"key": key, "status": "pending"}
    return {
        "key": key,
        "status": record.status,
        "image_id": record.image_id,
        "reason": record.reason,
    }
