"""Credentials for changing the collection. Reading (search, browse) is open; uploading and
deleting need the API key, sent as the `X-API-Key` header."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import APIKeyHeader

from imgsearch.api.deps import Service
from imgsearch.results import UnusableFile

log = logging.getLogger(__name__)

_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed to change the collection"
)


def require_api_key(service: Service, given: Annotated[str | None, Security(_header)]) -> None:
    settings = service.settings
    if settings.auth == "gateway":
        return
    try:
        expected, _ = service.api_key()
    except UnusableFile as error:
        log.error("%s", error)
        raise HTTPException(503, detail="the server's API key is not set up: see its log") from None
    if not given:
        raise HTTPException(
            401,
            detail="this needs the API key: send it as the X-API-Key header (locally, "
            "`imgsearch serve` prints it on first start and keeps it in the data directory's "
            "api-key file)",
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, detail="wrong API key")


ApiKey = Annotated[None, Depends(require_api_key)]
