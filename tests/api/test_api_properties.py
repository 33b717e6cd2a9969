"""Property-based tests of the HTTP API from its own OpenAPI document: whatever a client
sends, the answer is never a server error, and every refusal says why."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.demo import demo_image
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, make_service

from imgsearch.api.app import create_app


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, colour_embedder, vocabulary):
    service = make_service(tmp_path_factory.mktemp("props") / "data", colour_embedder, vocabulary)
    for category in ("elephant", "pizza", "chair"):
        service.add(f"{category}.jpg", demo_image(category))
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


def test_no_input_makes_a_server_error(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        # With and without the key: mutating routes must refuse strangers cleanly too.
        @given(case=operation.as_strategy(), with_key=st.booleans())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def no_server_error(case, with_key: bool) -> None:
            response = case.call(headers={API_KEY_HEADER: API_KEY} if with_key else {})
            assert response.status_code < 500, (case.method, case.path, response.text)
            if response.status_code >= 400:
                assert response.json()["detail"], (case.method, case.path)

        no_server_error()
