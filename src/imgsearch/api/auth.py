"""Credentials for changing the collection. Reading (search, browse) is open; uploading and
deleting need the API key, sent as the `X-API-Key` header."""

from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import APIKeyHeader

from imgsearch.api.deps import Service
from imgsearch.config import Settings
from imgsearch.integrity import UnusableFile, secret_file

log = logging.getLogger(__name__)

API_KEY_FILE = "api-key"
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed to change the collection"
)


def local_api_key(settings: Settings) -> tuple[str, bool]:
    """The local API key and whether it was just created: from the settings, else the data
    directory's key file, else a new random key written there (readable by its owner only).

    Raises UnusableFile for a key file that is empty or cannot be read: a silent lock-out
    (or a new key nobody was shown) would be worse than refusing to start.
    """
    if settings.api_key:
        return settings.api_key, False
    return secret_file(
        Path(settings.data_dir) / API_KEY_FILE,
        lambda: secrets.token_urlsafe(24),
        what="the API key file",
        fix="put a key in it, or delete it to have a new one made, or set IMGSEARCH_API_KEY",
    )


def require_api_key(service: Service, given: Annotated[str | None, Security(_header)]) -> None:
    settings = service.settings
    if settings.auth == "gateway":
        return
    try:
        expected, _ = local_api_key(settings)
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
