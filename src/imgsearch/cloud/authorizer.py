"""The API key check in front of the routes that change the collection, in the cloud.

API Gateway (HTTP API) calls this Lambda REQUEST authorizer, with simple responses, for the
routes infra/template.yaml gives `Auth: {Authorizer: ApiKeyAuthorizer}`: those that change the
collection (POST /api/images, DELETE /api/images/{id}, POST /api/uploads) and the owner's view
of votes (GET and DELETE /api/terms/{term}, DELETE /api/clients/{client}/votes). The app
behind it then runs with IMGSEARCH_AUTH=gateway, which checks no key itself. API Gateway
answers 401 itself when the X-API-Key header is missing, and caches each key's answer for a
few minutes.

The key is an SSM SecureString parameter named by IMGSEARCH_API_KEY_PARAMETER, read through
Powertools' parameter cache: a rotated key takes effect within minutes, without a redeploy.
This module imports neither numpy nor the rest of the core, so the authorizer starts fast.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerResponseV2,
)

API_KEY_HEADER = "X-API-Key"
API_KEY_PARAMETER_ENV = "IMGSEARCH_API_KEY_PARAMETER"
KEY_CACHE_SECONDS = 300


def expected_api_key() -> str:
    """The current API key, from SSM at most every KEY_CACHE_SECONDS."""
    name = os.environ[API_KEY_PARAMETER_ENV]
    key = parameters.get_parameter(name, decrypt=True, max_age=KEY_CACHE_SECONDS)
    return str(key).strip()


def is_authorized(request: APIGatewayAuthorizerEventV2, expected: str) -> bool:
    given = request.headers.get(API_KEY_HEADER, "")
    # Constant time, so the comparison leaks nothing about how much of a guess was right.
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())


def authorize(event: dict[str, Any]) -> dict[str, Any]:
    """A simple response for API Gateway: {"isAuthorized": true|false}."""
    allowed = is_authorized(APIGatewayAuthorizerEventV2(event), expected_api_key())
    return APIGatewayAuthorizerResponseV2(authorize=allowed).asdict()
