"""The routes answered without FastAPI's routing (api/fast.py): the same answers, and every
request they do not read plainly left to the app."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.responses import Response
from fastapi.testclient import TestClient

from imgsearch.api.app import create_app
from imgsearch.api.fast import FastRoute, FastRoutes, IntParam
from imgsearch.api.routes import images


def _answer(client: TestClient, path: str, **headers: str) -> tuple[int, list, bytes]:
    response = client.get(path, headers=headers)
    kept = [(name, value) for name, value in response.headers.items() if name != "date"]
    return response.status_code, kept, response.content


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_more_like_this_answers_as_through_fastapi(demo_service, encoding) -> None:
    """Each app answers afresh (pages are kept per app): the fast route's answers against
    FastAPI's (a parameter the fast route does not know sends a request through FastAPI,
    which ignores it), headers and bytes, for pages, errors and refusals."""
    ids = [record.id for record in demo_service.browse(6, 0)[0]]
    queries = ["", "?limit=5", "?limit=7&offset=3", "?offset=190", "?limit=200&offset=10000"]
    paths = [f"/api/images/{i}/similar{q}" for i in ids for q in queries]
    paths += [
        "/api/images/ffffffffffffffff/similar",  # no such image: 404
        "/api/images/ffffffffffffffff/similar?limit=3",
    ]
    refused = ["?limit=0", "?limit=201", "?offset=10001", "?limit=-1", "?limit=x"]
    paths += [f"/api/images/{ids[0]}/similar{q}" for q in refused]
    with TestClient(create_app(demo_service)) as fast, TestClient(create_app(demo_service)) as slow:
        for path in paths:
            through_fastapi = path + ("&" if "?" in path else "?") + "unknown=1"
            expected = _answer(slow, through_fastapi, **{"Accept-Encoding": encoding})
            assert _answer(fast, path, **{"Accept-Encoding": encoding}) == expected, path
    assert expected[0] == 422


def test_the_guard_still_sees_what_the_fast_route_answers(demo_client, demo_service) -> None:
    image_id = demo_service.browse(1, 0)[0][0].id
    response = demo_client.get(
        f"/api/images/{image_id}/similar",
        headers=[("x-api-key", "a"), ("x-api-key", "b")],  # type: ignore[arg-type]
    )
    assert response.status_code == 400 and "repeated headers" in response.json()["detail"]
    answered = demo_client.get(f"/api/images/{image_id}/similar")
    assert answered.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" in answered.headers


def _dispatch(
    path: str, query: bytes, *, method: str = "GET", fails: Exception | None = None
) -> str:
    """Who answered a request: "fast" (with its arguments), "handler" (an error the fast
    answer raised, by the app's handler of its type) or "app"."""
    answered: list[str] = []

    async def answer(request, image_id: str, limit: int, offset: int) -> Response:
        if fails is not None:
            raise fails
        answered.append(f"fast {image_id} {limit} {offset}")
        return Response(b"{}", media_type="application/json")

    async def app(scope, receive, send) -> None:
        answered.append("app")

    async def handler(request, error) -> Response:
        answered.append("handler")
        return Response(b"{}", status_code=404, media_type="application/json")

    route = FastRoute(
        "/things/(?P<image_id>[0-9a-f]{4})",
        {"limit": IntParam(20, 1, 200), "offset": IntParam(0, 0, 9)},
        answer,
    )
    handlers = {LookupError: handler, Exception: handler}  # (the app has a catch-all too)
    routes = FastRoutes(app, prefix="/api", routes=(route,), handlers=handlers)

    async def send(message) -> None:
        pass

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}
    try:
        asyncio.run(routes(scope, receive, send))
    except Exception:  # raised on, to the server-error middleware
        answered.append("raised")
    (who,) = answered
    return who


@pytest.mark.parametrize(
    ("path", "query", "who"),
    [
        ("/api/things/00af", b"", "fast 00af 20 0"),
        ("/api/things/00af", b"limit=5", "fast 00af 5 0"),
        ("/api/things/00af", b"offset=9&limit=200", "fast 00af 200 9"),
        ("/api/things/00af", b"limit=0", "app"),  # out of bounds: FastAPI's 422
        ("/api/things/00af", b"offset=10", "app"),
        ("/api/things/00af", b"limit=05", "app"),  # not written plainly
        ("/api/things/00af", b"limit=+5", "app"),
        ("/api/things/00af", b"limit=%35", "app"),
        ("/api/things/00af", b"limit=", "app"),
        ("/api/things/00af", b"limit", "app"),
        ("/api/things/00af", b"limit=5&limit=6", "app"),  # repeated
        ("/api/things/00af", b"limit=5&", "app"),
        ("/api/things/00af", b"other=1", "app"),  # unknown
        ("/api/things/00af", b"limit=\xff", "app"),
        ("/api/things/00AF", b"", "app"),  # the path parameter as FastAPI would refuse it
        ("/api/things/00af\n", b"", "app"),
        ("/api/things/00af/", b"", "app"),
        ("/things/00af", b"", "app"),  # outside the prefix
    ],
)
def test_fast_routes_answer_only_what_they_read_plainly(path, query, who) -> None:
    assert _dispatch(path, query) == who


def test_fast_routes_leave_other_methods_and_errors_to_the_app() -> None:
    assert _dispatch("/api/things/00af", b"", method="HEAD") == "app"
    assert _dispatch("/api/things/00af", b"", method="POST") == "app"
    # An error with a handler (here a KeyError, by its base class) is answered by it, not by
    # asking the engine again; one with only the catch-all is raised on, as from any route.
    assert _dispatch("/api/things/00af", b"", fails=KeyError("00af")) == "handler"
    assert _dispatch("/api/things/00af", b"", fails=RuntimeError("the engine failed")) == "raised"


def test_an_unexpected_error_on_the_fast_route_reaches_the_server_error_middleware(
    demo_client, demo_service, monkeypatch
) -> None:
    """As from FastAPI's route: raised to the test client (which raises server errors), the
    engine asked once."""
    asked: list[str] = []

    def failing(image_id, **_):
        asked.append(image_id)
        raise RuntimeError("the engine failed")

    monkeypatch.setattr(demo_service, "similar", failing)
    image_id = demo_service.browse(1, 0)[0][0].id
    with pytest.raises(RuntimeError, match="the engine failed"):
        demo_client.get(f"/api/images/{image_id}/similar?limit=7")
    assert asked == [image_id]


def test_the_app_answers_plain_similar_requests_by_its_fast_route(
    demo_client, demo_service, monkeypatch
) -> None:
    """(The equivalence test above would also pass were the fast route not wired in.) A
    missing image's 404 is answered by the handler once, not by FastAPI again."""
    read: list[bool] = []
    params = FastRoute.params

    def reading(self, found, query_string):
        arguments = params(self, found, query_string)
        read.append(arguments is not None)
        return arguments

    monkeypatch.setattr(FastRoute, "params", reading)
    through_fastapi: list[str] = []
    page = images.similar_page  # what FastAPI's route calls, by this module's name

    async def paging(request, image_id, limit, offset):
        through_fastapi.append(image_id)
        return await page(request, image_id, limit, offset)

    monkeypatch.setattr(images, "similar_page", paging)
    image_id = demo_service.browse(1, 0)[0][0].id
    assert demo_client.get(f"/api/images/{image_id}/similar?limit=5").status_code == 200
    assert demo_client.get(f"/api/images/{image_id}/similar?limit=0").status_code == 422
    missing = demo_client.get("/api/images/ffffffffffffffff/similar")
    assert missing.status_code == 404 and "no image" in missing.json()["detail"]
    assert read == [True, False, True]
    assert through_fastapi == []  # (limit=0: refused by FastAPI's validation, before it)
