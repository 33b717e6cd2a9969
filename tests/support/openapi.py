"""What the HTTP API's own OpenAPI document says: the API key's header, the routes that need
it, the bounds of parameters. Tests take these from the app rather than restate them, so that
they follow the app (the contract itself is asserted once, in tests/api/test_api.py)."""

from __future__ import annotations

import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from imgsearch.api.app import create_app
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

SECURITY_SCHEME = "APIKeyHeader"  # FastAPI's name for an APIKeyHeader dependency


@cache
def openapi() -> dict[str, Any]:
    """The app's OpenAPI document (made on a throwaway data directory: nothing is loaded)."""
    with tempfile.TemporaryDirectory() as data_dir:
        service = ImageSearch(Settings(data_dir=Path(data_dir)))
        return create_app(service).openapi()


def api_key_header() -> str:
    return openapi()["components"]["securitySchemes"][SECURITY_SCHEME]["name"]


def unnamed(path: str) -> str:
    """`path` with its parameters unnamed: /api/images/{image_id} and the template's
    /api/images/{id} are one route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def routes_needing_the_key() -> set[tuple[str, str]]:
    """(method, path with parameters unnamed) of every operation that needs the API key."""
    return {
        (method, unnamed(path))
        for path, operations in openapi()["paths"].items()
        for method, operation in operations.items()
        if {SECURITY_SCHEME} <= {name for need in operation.get("security", []) for name in need}
    }


def parameter(method: str, path: str, name: str) -> dict[str, Any]:
    """The JSON schema of a query or path parameter of an operation."""
    (found,) = [
        p for p in openapi()["paths"][path][method].get("parameters", []) if p["name"] == name
    ]
    return found["schema"]


API_KEY_HEADER = api_key_header()
