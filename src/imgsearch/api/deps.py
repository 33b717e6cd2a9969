"""Dependencies the routes receive through FastAPI's `Depends`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, UploadFile

from imgsearch.service import ImageSearch


def get_service(request: Request) -> ImageSearch:
    service: ImageSearch = request.app.state.service
    return service


Service = Annotated[ImageSearch, Depends(get_service)]


def get_client(request: Request, service: Service) -> str:
    """The request's client id: its source address by the one rule of clients.py, hashed."""
    peer = request.client.host if request.client else None
    return service.client_id(peer, request.headers.getlist("x-forwarded-for"))


Client = Annotated[str, Depends(get_client)]


async def read_upload(file: UploadFile, service: ImageSearch) -> bytes:
    """The uploaded bytes, refusing oversized files without reading all of them."""
    limit = service.settings.max_image_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"file is larger than the limit of {limit:,} bytes")
    return data
