"""Where an upload is stored: its key under `uploads/`, named after the uploaded file so that
the bucket stays readable. The one naming scheme for both ways in:
- through the API (bytes in hand): `uploads/<name>`, or `uploads/<stem>-<content id>.<ext>`
  when other bytes hold that name already (the same bytes keep their key: re-uploading a
  photo changes nothing);
- straight into the bucket (a signed form; the bytes are not known yet):
  `uploads/<stem>-<random>.<ext>`, fresh for every form.
"""

from __future__ import annotations

import secrets
from pathlib import PurePosixPath

from imgsearch.catalog import Catalog
from imgsearch.ingest import content_id

UPLOADS_PREFIX = "uploads/"
MAX_NAME_CHARS = 120


def safe_file_name(filename: str) -> str:
    """The last part of a file name, reduced to characters safe in keys and URLs."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    safe = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip(" .")
    return safe[:MAX_NAME_CHARS] or "upload"


def upload_key(catalog: Catalog, filename: str, data: bytes) -> str:
    """The key for uploaded bytes: the file's name, made unique if other bytes hold it."""
    name = safe_file_name(filename)
    key = UPLOADS_PREFIX + name
    held = catalog.key(key)
    if held is None or held.status != "present" or held.image_id == content_id(data):
        return key
    return _with_suffix(name, content_id(data)[:8])


def direct_upload_key(filename: str) -> str:
    """A fresh key for a file a browser will upload into the bucket itself."""
    return _with_suffix(safe_file_name(filename), secrets.token_hex(6))


def _with_suffix(name: str, suffix: str) -> str:
    path = PurePosixPath(name)
    return f"{UPLOADS_PREFIX}{path.stem}-{suffix}{path.suffix}"
