"""HTTP that refuses politely: repeated headers, JSON Python reads but JSON forbids, echoes,
deadlines, connection and body bounds, temporary files, CORS, security headers, offline docs
and result URLs. Framing, deadlines and bounds go through a real uvicorn server (the one
`imgsearch serve` runs) over raw sockets; the rest through the app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.browser import live_server
from support.demo import demo_image
from support.hostile_files import encode, photo
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, make_service

from imgsearch.api.app import create_app
from imgsearch.api.server import LINGER_SECONDS, server_config
from imgsearch.cli import WEB_DIR
from imgsearch.clients import CLIENT_SECRET_FILE

DEADLINE = 1.0  # seconds, for headers and for bodies in these tests
SLACK = 4.0  # how much later than a deadline the server may act, on a busy machine
MAX_CONNECTIONS = 6
MAX_CLIENT_CONNECTIONS = 3
MAX_BODIES = 3
MAX_CLIENT_BODIES = 2


# Through the app ---------------------------------------------------------------------------


@pytest.fixture
def app_client(service) -> Iterator[TestClient]:
    with TestClient(create_app(service, web_dir=WEB_DIR), headers={API_KEY_HEADER: API_KEY}) as c:
        yield c


def _vote(**change: object) -> dict:
    return {"query": "rain", "image_id": "0" * 16, "vote": 1, "session": "s1", **change}


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", "multipart/form-data; boundary=x"), ("content-type", "application/json")],
        [("content-type", "application/json"), ("Content-Type", "multipart/form-data; boundary=x")],
        [(API_KEY_HEADER.lower(), API_KEY), (API_KEY_HEADER.lower(), "other")],
        [("host", "a.example"), ("host", "b.example")],
    ],
)
def test_repeated_headers_that_matter_are_refused_unread(app_client, headers) -> None:
    """Two Content-Types once let 24 MB through the 16 KB JSON limit: the limit read one, the
    parser the other. Now neither is believed."""
    body = json.dumps(_vote(query="x" * 200_000)).encode()
    response = app_client.post("/api/feedback", content=body, headers=headers)
    assert response.status_code == 400
    assert "repeated headers" in response.json()["detail"]
    assert len(response.content) < 300


def test_the_body_limit_follows_the_content_type_the_parser_reads(app_client) -> None:
    """A JSON body sent as something else is still held to the small limit, whatever the case
    or parameters of its type; only a real multipart form gets the image limit."""
    body = json.dumps(_vote(query="x" * 40_000)).encode()
    for content_type in ("application/json", "text/plain", "multipart/form-data-but-not"):
        response = app_client.post(
            "/api/feedback", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 413, content_type
        assert "16,384 bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "rain", "image_id": "0000000000000000", "vote": NaN, "session": "s"}',
        b'{"query": "rain", "image_id": "0000000000000000", "vote": Infinity, "session": "s"}',
        b'{"query": "rain", "image_id": "0000000000000000", "vote": -Infinity, "session": "s"}',
        b'{"query": "rain", "image_id": "0000000000000000", "vote": 1e999, "session": "s"}',
        b'{"query": "\\ud800", "image_id": "0000000000000000", "vote": 1, "session": "s"}',
        b'{"query": "rain", "image_id": "0", "vote": 1, "session": "s", "\\udfff": 1}',
        b"[" * 8_000 + b"]" * 8_000,
        b'{"query": "rain", "image_id": "0", "vote": ' + b"1" * 5000 + b', "session": "s"}',
    ],
)
def test_json_that_python_reads_but_json_forbids_gets_422(app_client, body) -> None:
    response = app_client.post(
        "/api/feedback", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("invalid JSON")


def test_malformed_json_still_gets_fastapis_422(app_client) -> None:
    response = app_client.post(
        "/api/feedback", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["detail"]


@pytest.mark.parametrize(
    "vote",
    [
        _vote(vote=list(range(3000))),
        _vote(vote={f"k{i}": "v" * 10 for i in range(500)}),
        _vote(vote=[[[["deep" * 100]]]]),
        _vote(query={"nested": ["x" * 5000]}),
        ["x" * 3000, "y" * 3000],
        _vote(vote="é" * 5000),
    ],
)
def test_an_error_never_echoes_more_than_a_few_hundred_bytes(app_client, vote) -> None:
    response = app_client.post("/api/feedback", json=vote)
    assert response.status_code == 422
    assert response.json()["detail"]
    assert len(response.content) < 1000, response.text


def test_a_refusal_quoting_a_long_input_is_cut_short(app_client) -> None:
    """A key is refused with the key quoted: at most a few hundred characters of it."""
    files = {"file": ("a.jpg", demo_image("chair"))}
    response = app_client.post("/api/images", files=files, data={"key": "a\\" * 250})
    assert response.status_code == 422 and "backslash" in response.json()["detail"]
    status = app_client.get("/api/uploads/status", params={"key": "/" + "x" * 1000})
    assert status.status_code == 422 and "absolute" in status.json()["detail"]
    for answer in (response, status):
        assert len(answer.json()["detail"]) < 350 and len(answer.content) < 1000


def test_long_query_lists_are_not_echoed_whole(app_client) -> None:
    exclude = [str(i) for i in range(60)]  # over the limit of 50
    response = app_client.get("/api/search", params={"q": "cat", "exclude": exclude})
    assert response.status_code == 422 and len(response.content) < 1000


def test_an_excluded_class_id_out_of_range_is_refused_with_the_range(app_client) -> None:
    response = app_client.get("/api/search", params={"q": "cat", "exclude": [3, 1000]})
    assert response.status_code == 422
    assert response.json() == {"detail": "exclude: class ids are 0..999"}


def test_the_page_and_the_api_send_a_content_security_policy(app_client) -> None:
    for path in ("/", "/api/health", "/api/images/0123456789abcdef"):
        response = app_client.get(path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert "unsafe-inline" not in policy and "*" not in policy, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"


def test_the_page_runs_no_inline_code_its_policy_does_not_name(app_client) -> None:
    """What the policy forbids must not be needed: the page's own inline script and style
    (api/page.py puts them in) are allowed by their hashes, nothing else is."""
    response = app_client.get("/")
    page = response.text
    policy = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        allowed = re.search(rf"{directive} ([^;]+)", policy)[1].split()
        for code in re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S):
            digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in allowed
    assert " style=" not in page
    assert "onclick=" not in page.lower() and "javascript:" not in page.lower()


def test_only_the_own_origin_is_allowed_by_default(service, embedder, vocabulary, tmp_path):
    with TestClient(create_app(service)) as client:
        asked = client.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in asked.headers
        preflight = client.options(
            "/api/feedback",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers
    allowed = make_service(
        tmp_path / "other", embedder, vocabulary, allowed_origins=["https://photos.example"]
    )
    with TestClient(create_app(allowed)) as client:
        asked = client.get("/api/health", headers={"Origin": "https://photos.example"})
        assert asked.headers["access-control-allow-origin"] == "https://photos.example"
        other = client.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_result_urls_do_not_follow_the_host_header(service, embedder, vocabulary, tmp_path):
    image_id = service.add("a.jpg", demo_image("chair")).image_id
    with TestClient(create_app(service)) as client:
        found = client.get("/api/images", headers={"Host": "evil.example"}).json()["results"]
        assert found[0]["url"] == f"/api/images/{image_id}/file"
        assert found[0]["thumbnail"] == f"/api/images/{image_id}/thumbnail"
        detail = client.get(f"/api/images/{image_id}", headers={"Host": "evil.example"}).json()
        assert detail["url"] == f"/api/images/{image_id}/file"
        assert client.get(detail["thumbnail"]).content[:2] == b"\xff\xd8"
        # A client on this machine gets URLs it can follow as they are.
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            found = client.get("/api/images", headers={"Host": host}).json()["results"]
            assert found[0]["url"] == f"http://{host}/api/images/{image_id}/file", host
        for spoof in ("localhost.evil.example", "localhost:80@evil.example", "127.0.0.1:x"):
            found = client.get("/api/images", headers={"Host": spoof}).json()["results"]
            assert found[0]["url"] == f"/api/images/{image_id}/file", spoof
    public = make_service(
        tmp_path / "public", embedder, vocabulary, public_url="https://photos.example/"
    )
    public.add("a.jpg", demo_image("chair"))
    with TestClient(create_app(public)) as client:
        found = client.get("/api/images", headers={"Host": "evil.example"}).json()["results"]
        assert found[0]["url"] == f"https://photos.example/api/images/{image_id}/file"


def test_thumbnails_point_where_a_cdn_serves_them_when_one_is_configured(
    embedder, vocabulary, tmp_path
) -> None:
    """Behind CloudFront (docs/deploy.md) the bucket's thumbnails/ are static content: results
    name them there, the API's thumbnail route redirects there; the originals stay the API's."""
    for base, expected in (
        ("/thumbnails", "/thumbnails/{}.jpg"),
        ("https://cdn.example/thumbnails/", "https://cdn.example/thumbnails/{}.jpg"),
    ):
        service = make_service(
            tmp_path / str(len(base)), embedder, vocabulary, thumbnail_base_url=base
        )
        image_id = service.add("a.jpg", demo_image("chair")).image_id
        with TestClient(create_app(service)) as client:
            found = client.get("/api/images", headers={"Host": "evil.example"}).json()["results"]
            assert found[0]["thumbnail"] == expected.format(image_id)
            assert found[0]["url"] == f"/api/images/{image_id}/file"
            detail = client.get(f"/api/images/{image_id}").json()
            assert detail["thumbnail"] == expected.format(image_id)
            # On this machine a path from the root becomes a URL it can follow.
            local = client.get("/api/images", headers={"Host": "localhost:8000"}).json()
            if base.startswith("/"):
                assert local["results"][0][
                    "thumbnail"
                ] == "http://localhost:8000" + expected.format(image_id)
            moved = client.get(f"/api/images/{image_id}/thumbnail", follow_redirects=False)
            assert moved.status_code == 307
            assert moved.headers["location"] == expected.format(image_id)
            unknown = "0" * len(image_id)  # no redirect for an image that is not there
            assert client.get(f"/api/images/{unknown}/thumbnail").status_code == 404


def test_bodies_are_counted_per_client_without_the_client_secret(service) -> None:
    """The body bounds group requests by address, as votes do, but only votes need the secret
    their client ids are made with: the cloud's change function may not read the feedback
    table that keeps it, and a search by photo must not wait for it. Here the secret cannot be
    read: uploads and searches by photo are served, and a vote says the data needs repair."""
    secret = Path(service.settings.data_dir) / CLIENT_SECRET_FILE
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("")  # unusable: reading it raises
    app = create_app(service)
    with TestClient(app, headers={API_KEY_HEADER: API_KEY}, raise_server_exceptions=False) as c:
        photo_file = {"file": ("a.jpg", demo_image("chair"))}
        assert c.post("/api/images", files=photo_file).status_code == 201
        assert c.post("/api/search/image", files=photo_file).status_code == 200
        assert c.post("/api/feedback", json=_vote()).status_code == 503


def test_docs_are_served_from_the_app_own_assets(app_client) -> None:
    for path in ("/docs", "/redoc"):
        page = app_client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "http://" not in page.text and "https://" not in page.text, path
        assert "<script>" not in page.text  # no inline code: the policy allows none
        for asset in ("docs-assets/",):
            assert asset in page.text
    for asset in (
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-init.js",
        "redoc.standalone.js",
    ):
        response = app_client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 100, asset


@pytest.mark.parametrize(
    "value", ["bytes=100-0", "foo=0-1", "bytes=abc", "bytes=99999999-", "bytes=0-9"]
)
def test_the_docs_assets_are_sent_whole_whatever_range_asks(app_client, value) -> None:
    """Starlette answered a Range it could not honour in plain text (400, 416), not JSON; the
    assets are small, so Range is not offered and is ignored."""
    whole = app_client.get("/docs-assets/swagger-ui.css")
    assert "accept-ranges" not in whole.headers
    response = app_client.get("/docs-assets/swagger-ui.css", headers={"Range": value})
    assert response.status_code == 200 and response.content == whole.content


@pytest.mark.parametrize("web_dir", [WEB_DIR, None], ids=["with the page", "api only"])
@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("PUT", "/api/feedback", 405, "POST"),
        ("OPTIONS", "/api/feedback", 405, "POST"),
        ("GET", "/api/feedback", 405, "POST"),
        ("HEAD", "/api/feedback", 405, "POST"),
        ("PUT", "/api/images", 405, "GET, HEAD, POST"),  # every route's methods, not the first's
        ("PATCH", "/api/images/0123456789abcdef", 405, "DELETE, GET, HEAD"),
        ("OPTIONS", "/api/health", 405, "GET, HEAD"),
        ("DELETE", "/docs", 405, "GET, HEAD"),
        ("POST", "/docs-assets/swagger-ui.css", 405, "GET, HEAD"),
        ("PUT", "/api/nope", 404, None),
        ("DELETE", "/api/images/0123456789abcdef/nope", 404, None),
    ],
)
def test_a_method_a_path_does_not_take_gets_405_naming_those_it_does(
    service, web_dir, method, path, status, allow
) -> None:
    """With the page, every such request fell through to it: 405 `Allow: GET, HEAD` whatever
    the path took, even where it took nothing (404)."""
    with TestClient(create_app(service, web_dir=web_dir)) as client:
        response = client.request(method, path)
    assert response.status_code == status
    assert response.headers.get("allow") == allow
    assert response.headers["content-type"] == "application/json"
    if method != "HEAD":
        assert response.json()["detail"]


def test_a_head_answer_carries_no_body_whoever_serves_it(service) -> None:
    """The app drops a HEAD's body itself: behind Mangum no server does it."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "HEAD",
        "scheme": "http",
        "path": "/api/health",
        "raw_path": b"/api/health",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    asyncio.run(create_app(service, web_dir=WEB_DIR)(scope, receive, send))
    start, *rest = sent
    assert start["status"] == 200
    assert int(dict(start["headers"])[b"content-length"]) > 0  # the GET answer's length
    assert b"".join(message.get("body", b"") for message in rest) == b""


# Through a real server, over raw sockets ---------------------------------------------------


@pytest.fixture
def server(request, tmp_path, embedder, vocabulary, monkeypatch) -> Iterator[tuple[str, int, Path]]:
    """A real uvicorn server as `imgsearch serve` runs it (the page too), with one-second
    deadlines and small bounds (or the settings of an indirect parameter); yields its host,
    port and the directory of its temporary files."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where multipart parts spool
    settings = dict(
        http_keep_alive_seconds=int(DEADLINE),
        http_header_seconds=DEADLINE,
        http_body_seconds=DEADLINE,
        http_answer_seconds=DEADLINE,
        http_max_connections=MAX_CONNECTIONS,
        http_max_client_connections=MAX_CLIENT_CONNECTIONS,
        http_max_bodies=MAX_BODIES,
        http_max_client_bodies=MAX_CLIENT_BODIES,
    ) | getattr(request, "param", {})
    service = make_service(tmp_path / "data", embedder, vocabulary, **settings)
    with live_server(create_app(service, web_dir=WEB_DIR)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port), spool


def _connect(server, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the server from `source`: loopback addresses are distinct clients."""
    host, port, _ = server
    return socket.create_connection(
        (host, port), timeout=DEADLINE + SLACK + 5, source_address=(source, 0)
    )


def _read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _exchange(
    server, request: bytes, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    with _connect(server, source) as connection:
        connection.sendall(request)
        return _answer(_read_all(connection))


def _json_refusal(answer: tuple[int, dict[str, str], bytes], status: int) -> str:
    got, headers, body = answer
    assert got == status, (got, body)
    assert headers["content-type"] == "application/json"
    return json.loads(body)["detail"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_framing_errors_are_answered_in_json(server, request_bytes) -> None:
    detail = _json_refusal(_exchange(server, request_bytes), 400)
    assert detail == "malformed HTTP request"


@pytest.mark.slow  # waits a second or more on a real server
@pytest.mark.parametrize("size", [20_000, 70_000, 300_000])
def test_oversized_headers_are_refused_whether_they_come_at_once_or_in_pieces(server, size):
    request = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    status, headers, body = _exchange(server, request)
    assert status in (400, 431) and headers["content-type"] == "application/json"
    assert len(body) < 300


@pytest.mark.slow  # waits a second or more on a real server
def test_repeated_content_types_over_the_wire_are_refused(server) -> None:
    body = b"x" * 100_000
    request = (
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with _connect(server) as connection:
        connection.sendall(request)
        raw = _read_all(connection)
    detail = _json_refusal(_answer(raw), 400)
    assert "content-type" in detail and len(raw) < 1000


@pytest.mark.slow  # waits a second or more on a real server
def test_a_connection_that_sends_nothing_is_closed(server) -> None:
    with _connect(server) as connection:
        started = time.monotonic()
        assert _read_all(connection) == b""
        assert time.monotonic() - started < DEADLINE + SLACK


@pytest.mark.slow  # waits a second or more on a real server
def test_headers_sent_a_byte_at_a_time_get_408(server) -> None:
    """Slowloris: each byte arrives in time to reset an idle timer, never the whole request."""
    request = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with _connect(server) as connection:
        started = time.monotonic()
        connection.settimeout(0.2)
        for byte in request:
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                break  # closed on us: what we wanted
            try:
                if connection.recv(65536, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        connection.settimeout(SLACK)
        answer = _answer(_read_all(connection))
        elapsed = time.monotonic() - started
    assert "headers" in _json_refusal(answer, 408)
    assert DEADLINE <= elapsed < DEADLINE + SLACK


@pytest.mark.slow  # waits a second or more on a real server
def test_a_body_that_trickles_in_gets_408(server) -> None:
    head = (
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with _connect(server) as connection:
        connection.sendall(head + b'{"query": ')
        started = time.monotonic()
        answer = _answer(_read_all(connection))
        elapsed = time.monotonic() - started
    assert "body" in _json_refusal(answer, 408)
    assert DEADLINE <= elapsed < DEADLINE + SLACK


@pytest.mark.slow  # waits a second or more on a real server
@pytest.mark.parametrize("server", [{"http_body_seconds": 60.0}], indirect=True)
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 100\r\n\r\n{", b"Transfer-Encoding: chunked\r\n\r\n1\r\n{"]
)
def test_a_small_body_is_owed_within_the_header_deadline(server, framing) -> None:
    """A vote begun and never finished holds a body slot for the headers' deadline, not for
    the minute an upload may take; sent chunked too, as nothing but a form may pass 16 KB."""
    head = b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing
    with _connect(server) as connection:
        connection.sendall(head)
        started = time.monotonic()
        answer = _answer(_read_all(connection))
        elapsed = time.monotonic() - started
    assert f"longer than {DEADLINE:g} s" in _json_refusal(answer, 408)
    assert DEADLINE <= elapsed < DEADLINE + SLACK


def test_a_body_not_read_after_an_early_answer_is_cut_off_too(server) -> None:
    """A 413 from the declared length answers at once; the client may go on sending, but only
    until the body deadline."""
    head = b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    with _connect(server) as connection:
        connection.sendall(head + b"x" * 10)
        started = time.monotonic()
        raw = _read_all(connection)
        elapsed = time.monotonic() - started
    assert _answer(raw)[0] == 413
    assert elapsed < DEADLINE + SLACK


HEALTH = b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_a_body_owed_after_the_answer_holds_no_connection(tmp_path, embedder, vocabulary):
    """A request answered without its body being read (a route that reads none) closes its
    connection once answered, instead of waiting for the rest of the body: a client trickling
    it must not hold the connection, which no new client could then take, for the whole body
    deadline."""
    service = make_service(tmp_path / "data", embedder, vocabulary, http_body_seconds=60)
    head = b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: 16000\r\n\r\nx"
    with live_server(create_app(service, web_dir=WEB_DIR)) as url:
        host, port = url.removeprefix("http://").split(":")
        with _connect((host, int(port), None)) as connection:
            connection.sendall(head)
            started = time.monotonic()
            answer = _trickle_until_closed(connection, seconds=LINGER_SECONDS + 2 * SLACK)
            elapsed = time.monotonic() - started
    assert _answer(answer)[0] == 200
    assert elapsed < LINGER_SECONDS + SLACK  # not the 60 s body deadline


def _trickle_until_closed(connection: socket.socket, seconds: float) -> bytes:
    """Send a byte of body a second (which keeps a connection from ever being idle) until the
    server closes the connection or `seconds` pass; returns what the server sent."""
    connection.settimeout(1.0)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            with suppress(OSError):
                connection.sendall(b"x")
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def test_head_is_answered_as_get_without_the_body(server) -> None:
    """Every path GET answers takes HEAD: the same status and headers, no body. FastAPI's
    routes take GET alone, so a HEAD fell through to the page and got its 404."""
    good = encode(photo(64, 48), "PNG")
    body_end = b"\r\n--x--\r\n"
    _, part = _upload_head("/api/images", 0)
    head, part = _upload_head("/api/images", len(part) + len(good) + len(body_end))
    status, _, body = _exchange(server, head + part + good + body_end)
    assert status == 201, body
    image = json.loads(body)["id"]
    for path in (
        "/",
        "/api/health",
        "/api/images",
        f"/api/images/{image}",
        f"/api/images/{image}/file",
        f"/api/images/{image}/thumbnail",
        f"/api/images/{image}/similar",  # the fast route (api/fast.py)
        "/api/search?q=dog",
        "/openapi.json",
        "/docs",
        "/redoc",
        "/docs-assets/swagger-init.js",
        "/docs-assets/swagger-ui.css",
    ):
        asked = (
            f"{{}} {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        got = _exchange(server, asked.format("GET").encode())
        answered = _exchange(server, asked.format("HEAD").encode())
        assert got[0] == answered[0] == 200, (path, answered)
        assert {**answered[1], "date": ""} == {**got[1], "date": ""}, path
        assert answered[2] == b"", path


def test_an_unknown_http_version_is_refused(server) -> None:
    request = b"GET /api/health HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n"
    detail = _json_refusal(_exchange(server, request), 400)
    assert "HTTP/9.9" in detail
    assert _exchange(server, HEALTH)[0] == 200


def test_connections_beyond_the_bound_get_503(server) -> None:
    """Connections all busy sending a request (none idle or stalled to close instead): a new
    one is refused."""
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    held = [_connect(server, source) for source in sources for _ in range(2)]
    try:
        for connection in held:
            connection.sendall(b"GET /api/health HTTP/1.1\r\n")  # headers begun, not late
        time.sleep(0.3)  # accepted by the server, not only by the kernel
        with _connect(server, "127.0.0.5") as extra:
            detail = _json_refusal(_answer(_read_all(extra)), 503)
        assert detail.startswith("too many connections;")
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.3)
    assert _exchange(server, HEALTH, "127.0.0.5")[0] == 200


@pytest.mark.slow  # waits a second or more on a real server
def test_idle_connections_from_many_addresses_make_room_for_a_new_client(server) -> None:
    """A full table of connections that ask nothing does not lock out the next client: the
    one idle longest is closed for it."""
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    held = [_connect(server, source) for source in sources for _ in range(2)]
    try:
        time.sleep(0.3)
        assert _exchange(server, HEALTH, "127.0.0.5")[0] == 200
        closed = 0
        for connection in held:
            connection.settimeout(0.5)
            with suppress(TimeoutError):
                closed += connection.recv(1) == b""
        assert closed >= 1  # the oldest idle one, without an answer (it asked nothing)
    finally:
        for connection in held:
            connection.close()


def test_one_address_cannot_take_every_connection(server) -> None:
    held = [_connect(server, "127.0.0.2") for _ in range(MAX_CLIENT_CONNECTIONS)]
    try:
        time.sleep(0.3)
        with _connect(server, "127.0.0.2") as extra:
            detail = _json_refusal(_answer(_read_all(extra)), 503)
        assert "from this address" in detail
        assert _exchange(server, HEALTH, "127.0.0.3")[0] == 200  # another client is served
    finally:
        for connection in held:
            connection.close()


@pytest.mark.slow  # waits a second or more on a real server
def test_bodies_in_flight_are_bounded_and_the_rest_keeps_answering(server) -> None:
    head = (
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    held = [_connect(server, f"127.0.0.{2 + number}") for number in range(MAX_BODIES)]
    try:
        for connection in held:
            connection.sendall(head)
        time.sleep(0.3)
        detail = _json_refusal(_exchange(server, head + b"}" * 999), 503)
        assert "too many requests sending bodies at once;" in detail
        status, _, _ = _exchange(server, HEALTH)
        assert status == 200  # requests without a body are not held back
    finally:
        for connection in held:
            connection.close()


def test_no_connection_leaves_the_guarded_protocol_for_a_websocket_one(tmp_path) -> None:
    """With a WebSocket library installed (uvicorn[standard] brings one), uvicorn hands an
    upgrade request to that library's protocol, which keeps none of the bounds and never
    uncounts its address: the API speaks no WebSocket, so none is taken."""
    from imgsearch.config import Settings

    async def app(scope, receive, send) -> None: ...

    settings = Settings(data_dir=tmp_path)
    config = server_config(app, settings)
    assert config.ws == "none"  # not "auto": it depends on what else is installed
    config.load()
    assert config.ws_protocol_class is None
    assert config.http_protocol_class.__name__ == "GuardedProtocol"


def _one_slot_guard(app):
    """The request guard in front of `app`, with one body slot in all and one per address."""
    from imgsearch.api.guard import RequestGuard

    return RequestGuard(
        app,
        max_form_bytes=1000,
        max_other_bytes=1000,
        max_bodies=1,
        max_client_bodies=1,
        client_of=lambda peer, forwarded: peer or "",
    )


async def _post_through(guard, body: bytes, content_type: bytes = b"application/json") -> int:
    """The status `guard` answers a POST of `body` from 127.0.0.2 with."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/feedback",
        "http_version": "1.1",
        "client": ("127.0.0.2", 1),
        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    return sent[0]["status"]


def test_a_json_body_frees_its_slot_once_read_not_once_answered() -> None:
    """The body slots bound bodies being received (a client that never finishes one holds
    it): a vote read whole and being answered holds none, so that votes answered slowly do
    not refuse the next ones with 503."""
    answering = asyncio.Event()
    release = asyncio.Event()
    seen: list[bytes] = []

    async def app(scope, receive, send) -> None:
        seen.append((await receive())["body"])
        if len(seen) == 1:
            answering.set()
            await release.wait()  # the first vote is still being answered
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = _one_slot_guard(app)

    async def both() -> list[int]:
        first = asyncio.create_task(_post_through(guard, b'{"n": 1}'))
        await answering.wait()
        second = await _post_through(guard, b'{"n": 2}')  # the one slot, the same address
        release.set()
        return [await first, second]

    assert asyncio.run(both()) == [200, 200]
    assert seen == [b'{"n": 1}', b'{"n": 2}']


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        (b"application/json", b'{"n": 1}', 200),  # answered by the app
        (b"application/json", b'{"n": NaN}', 422),  # refused by the guard
        (b"multipart/form-data; boundary=x", b"--x--\r\n", 200),  # streamed to the app
    ],
)
def test_an_address_with_no_body_in_flight_is_not_remembered(content_type, body, status) -> None:
    """The per-address count of bodies in flight forgets an address once it has none, after
    whatever kind of body: one entry left for each address that ever sent a form or a
    refused vote would grow without bound."""

    async def app(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = _one_slot_guard(app)
    assert asyncio.run(_post_through(guard, body, content_type)) == status
    assert guard.bodies == 0 and guard.client_bodies == {}


@pytest.mark.slow  # waits a second or more on a real server
def test_one_address_cannot_take_every_body_slot(server) -> None:
    """Bodies one address never finishes hold its own share of the slots, not everyone's:
    another client's vote is still read and answered."""
    head = (
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    held = [_connect(server, "127.0.0.2") for _ in range(MAX_CLIENT_BODIES)]
    try:
        for connection in held:
            connection.sendall(head)
        time.sleep(0.3)
        detail = _json_refusal(_exchange(server, head + b"}" * 999, "127.0.0.2"), 503)
        assert "from this address" in detail
        vote = (
            b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert _exchange(server, vote, "127.0.0.3")[0] == 422  # read, and found wanting
    finally:
        for connection in held:
            connection.close()


def _spooled_files(spool: Path) -> int:
    """Files under `spool` this process holds open (unnamed temporary files included)."""
    count = 0
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        count += target.startswith(str(spool))
    return count


def _upload_head(path: str, length: int) -> tuple[bytes, bytes]:
    part = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{API_KEY_HEADER}: {API_KEY}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return head, part


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_an_upload_cut_off_midway_leaves_no_temporary_file(server) -> None:
    _, _, spool = server
    head, part = _upload_head("/api/images", 3_000_000)
    with _connect(server) as connection:
        connection.sendall(head + part + b"\xff\xd8" + bytes(2_000_000))  # past 1 MB: on disk
        assert _wait_for(lambda: _spooled_files(spool) == 1, 5), "the part was not spooled"
    assert _wait_for(lambda: _spooled_files(spool) == 0, 5), "the client left; the file stayed"


@pytest.mark.slow  # waits a second or more on a real server
def test_an_upload_past_its_deadline_leaves_no_temporary_file(server) -> None:
    _, _, spool = server
    head, part = _upload_head("/api/search/image", 3_000_000)
    with _connect(server) as connection:
        connection.sendall(head + part + b"\xff\xd8" + bytes(2_000_000))
        assert _wait_for(lambda: _spooled_files(spool) == 1, 5), "the part was not spooled"
        assert _answer(_read_all(connection))[0] == 408
    assert _wait_for(lambda: _spooled_files(spool) == 0, 5)


def test_a_refused_upload_leaves_no_temporary_file(server) -> None:
    _, _, spool = server
    not_an_image = b"<html>" + bytes(2_000_000)
    body_end = b"\r\n--x--\r\n"
    _, part = _upload_head("/api/images", 0)
    head, part = _upload_head("/api/images", len(part) + len(not_an_image) + len(body_end))
    status, _, body = _exchange(server, head + part + not_an_image + body_end)
    assert status == 415, body
    good = encode(photo(64, 48), "PNG")
    head, part = _upload_head("/api/search/image", len(part) + len(good) + len(body_end))
    assert _exchange(server, head + part + good + body_end)[0] == 200
    assert _wait_for(lambda: _spooled_files(spool) == 0, 5)


_BODIES_IN_THREADS = """
import sys, threading
from imgsearch.api.server import give_back_large_blocks
if sys.argv[1] == "given back":
    give_back_large_blocks()
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
before = resident()
def body():  # a request body of 24 MB, read, copied and dropped
    data = bytearray(24_000_000)
    data[::4096] = b"x" * len(data[::4096])
    bytes(data)
for _ in range(5):
    threads = [threading.Thread(target=body) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(resident() - before)
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not Path("/proc/self/statm").exists(),
    reason="glibc's malloc, measured through /proc",
)
def test_large_bodies_read_in_threads_are_given_back_to_the_system() -> None:
    """Rounds of 16 bodies of 24 MB read at once in threads (a server's reverse searches):
    with glibc's own threshold the process keeps a hundred MB or more once they are freed;
    with the server's fixed threshold next to nothing."""
    kept = {}
    for mode in ("default", "given back"):
        done = subprocess.run(
            [sys.executable, "-c", _BODIES_IN_THREADS, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        kept[mode] = int(done.stdout)
    assert kept["given back"] < 20e6 < 50e6 < kept["default"], kept


# Answers the client does not take -----------------------------------------------------------

BUNDLE = b"GET /docs-assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n"  # 1.5 MB


def _not_reading(server, request: bytes, source: str = "127.0.0.2") -> socket.socket:
    """A connection from `source` that sends `request` and then reads nothing (its receive
    buffer as small as the kernel allows, so the answer waits in the server)."""
    host, port, _ = server
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.bind((source, 0))
    connection.connect((host, port))
    connection.sendall(request)
    return connection


def _read_until_closed(connection: socket.socket, seconds: float) -> bytes | None:
    """What the server sent if it ends the connection within `seconds`, else None."""
    connection.settimeout(seconds)
    received = bytearray()
    try:
        while chunk := connection.recv(1 << 20):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return bytes(received)


@pytest.mark.slow  # waits a second or more on a real server
def test_a_client_that_takes_none_of_its_answers_is_dropped(server) -> None:
    """Connections that ask for 12 MB of answers (pipelined) and read none of them are
    dropped after the answer deadline, with what they were sent, and their address may
    connect again. Before, the answers waited in the server's memory, and the connections
    counted against the address's bound, for as long as the client kept them open."""
    held = [_not_reading(server, BUNDLE * 8) for _ in range(MAX_CLIENT_CONNECTIONS)]
    try:
        time.sleep(DEADLINE + SLACK)
        assert _exchange(server, HEALTH, "127.0.0.2")[0] == 200
        for connection in held:
            received = _read_until_closed(connection, 0.5)
            assert received is not None and received.startswith(b"HTTP/1.1 200")
            assert received.count(b"HTTP/1.1 200") < 8  # dropped, not waited for
    finally:
        for connection in held:
            connection.close()


@pytest.mark.slow  # waits a second or more on a real server
def test_a_client_that_takes_its_answers_slowly_gets_them_whole(server) -> None:
    """64 KB or more each deadline is taking the answer: 4.5 MB at 512 KB/s all arrive,
    however much of them the kernel holds at a time."""
    expected = _exchange(server, BUNDLE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert expected[0] == 200
    with _not_reading(server, BUNDLE * 3) as connection:
        connection.settimeout(DEADLINE + SLACK)
        received = bytearray()
        chunk = b"-"
        while chunk and received.count(expected[2]) < 3:
            step = len(received) + 128 * 1024
            while len(received) < step and (chunk := connection.recv(65536)):
                received += chunk
            time.sleep(DEADLINE / 4)
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert received.count(expected[2]) == 3


@pytest.fixture
def large_original(request, tmp_path, embedder, vocabulary) -> Iterator[tuple[str, int, str, int]]:
    """A real server (one-second answer deadline, or the settings of an indirect parameter)
    whose collection holds a 14 MB original; yields its host, port, the original's path and
    its size."""
    settings = {"http_answer_seconds": DEADLINE} | getattr(request, "param", {})
    service = make_service(tmp_path / "data", embedder, vocabulary, **settings)
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=95)
    assert len(data) > 12_000_000
    image_id = service.add("large.jpg", data).image_id
    with live_server(create_app(service, web_dir=WEB_DIR)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port), f"/api/images/{image_id}/file", len(data)


@pytest.mark.slow  # waits a second or more on a real server
def test_an_answer_closed_before_it_is_taken_is_dropped_after_the_deadline(large_original):
    """`Connection: close` on a 14 MB original read by nobody: the server closes once the
    answer is taken or the deadline passes. Before, asyncio's close kept the connection and
    the unsent bytes until the client took them, and the connection no longer counted:
    one address held 140 such connections (2 GB of a 14 MB original) past its bound of 32."""
    host, port, path, size = large_original
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    held = [_not_reading((host, port, None), request) for _ in range(3)]
    try:
        time.sleep(DEADLINE + SLACK)
        for connection in held:
            received = _read_until_closed(connection, 0.5)
            assert received is not None and received.startswith(b"HTTP/1.1 200")
            assert len(received) < size  # dropped, not waited for
    finally:
        for connection in held:
            connection.close()


@pytest.mark.slow  # waits a second or more on a real server
@pytest.mark.parametrize(
    "large_original", [{"http_answer_seconds": 60, "http_answer_bytes": 12 * 2**20}], indirect=True
)
def test_answers_nobody_takes_are_bounded_in_bytes_too(large_original) -> None:
    """Within the answer deadline, answers waiting for clients that take none of them are
    kept to `http_answer_bytes`: those waiting longest are dropped first. Before, 210
    connections from 7 addresses held a 14 MB original each (2.4 GB) for the deadline."""
    host, port, path, size = large_original
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    held = []
    try:
        for number in range(3):
            held.append(_not_reading((host, port, None), request, f"127.0.0.{2 + number}"))
            time.sleep(0.5)
        answers = [_read_until_closed(connection, 0.5) for connection in held]
    finally:
        for connection in held:
            connection.close()
    dropped = [answer for answer in answers if answer is not None]
    assert len(dropped) == 2  # the first two; the third fits the 12 MB alone
    assert all(len(answer) < size for answer in dropped)


def _resident() -> int:
    """This process's resident memory (the live servers' threads run in it), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow  # waits a second or more on a real server
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measured through /proc")
@pytest.mark.parametrize("large_original", [{"http_answer_seconds": 30}], indirect=True)
def test_what_a_client_sends_while_its_close_waits_for_the_answer_is_dropped(large_original):
    """A close waiting for the client to take its answer reads what the client still sends
    and drops it, as a lingering close does. Before, h11 kept it in its buffer, without
    bound, for as long as the client took 64 KB of its answer a deadline: 96 MB sent
    behind a `Connection: close` request were 96 MB more in the server."""
    host, port, path, size = large_original
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    with _not_reading((host, port, None), request) as connection:
        time.sleep(0.5)  # answered; the close waits for the answer to be taken
        before = _resident()
        connection.settimeout(SLACK)
        chunk = b"x" * (1 << 20)
        for _ in range(96):
            connection.sendall(chunk)
        time.sleep(0.5)
        grown = _resident() - before
        received = _read_until_closed(connection, SLACK)
    assert grown < 32e6, grown
    assert received is not None and len(received) > size  # the answer, whole


def _taking_slowly(connection: socket.socket, stop: threading.Event) -> None:
    """Take 96 KB of the answer every quarter of a second until `stop` (fast enough for an
    answer deadline of a second or more), or until the server closes."""
    connection.settimeout(SLACK)
    while not stop.wait(0.25):
        taken = 0
        while taken < 96 * 1024:
            chunk = connection.recv(65536)
            if not chunk:
                return
            taken += len(chunk)


@pytest.mark.slow  # waits a second or more on a real server
@pytest.mark.parametrize(
    "large_original",
    [{"http_answer_seconds": 3, "http_header_seconds": 2, "http_max_client_bodies": 1}],
    indirect=True,
)
def test_a_body_sent_behind_an_answer_being_taken_keeps_its_deadline(large_original) -> None:
    """An answer being taken, slowly but fast enough, does not suspend the deadline of what
    the client owes next: a vote pipelined behind a 14 MB original and never finished gets
    its 408, and frees its address's body slot. Before, the answer's deadline stood in for
    the body's, and the vote held the slot for as long as the original was being taken
    (36 minutes at 6.4 KB/s)."""
    host, port, path, _ = large_original
    vote = json.dumps(_vote()).encode()
    head = (
        "POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(vote)}\r\n\r\n"
    ).encode()
    original = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    def voted() -> int:
        closing = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        return _exchange((host, port, None), closing + vote, "127.0.0.2")[0]

    stop = threading.Event()
    with _not_reading((host, port, None), original + head + vote[:1]) as connection:
        taking = threading.Thread(target=_taking_slowly, args=(connection, stop))
        taking.start()
        try:
            assert _wait_for(lambda: voted() == 503, SLACK)  # the unfinished vote's slot
            time.sleep(2 + SLACK)  # its deadline (a small body's: the headers')
            assert taking.is_alive()  # the original is still being taken
            status = voted()
        finally:
            stop.set()
            taking.join()
    assert status != 503


@pytest.mark.slow  # waits a second or more on a real server
@pytest.mark.parametrize(
    "large_original", [{"http_answer_seconds": 30, "http_keep_alive_seconds": 30}], indirect=True
)
def test_a_close_waiting_for_the_answer_ends_once_the_answer_is_taken(large_original):
    """`Connection: close` on an answer that waits for its client: the connection ends as
    soon as the client has taken the answer, not at the answer's next deadline or the
    keep-alive's (30 s here).
    Before, until that deadline the connection still counted against the bounds, and a
    client reading to the end of the connection waited for it."""
    host, port, path, size = large_original
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    with _not_reading((host, port, None), request) as connection:
        time.sleep(0.5)  # answered; the close waits for the answer to be taken
        received = _read_until_closed(connection, SLACK + 2)
    assert received is not None and len(received) > size


def test_a_pipelined_body_still_arriving_when_the_previous_answer_ends_is_read(server) -> None:
    """Requests sent one behind the other (pipelined): a vote whose body is still arriving
    when the request before it is answered is read and answered too. Before, that answer
    closed the connection, taking the vote's unfinished body for its own request's."""
    vote = json.dumps(_vote()).encode()
    head = (
        "POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(vote)}\r\nConnection: close\r\n\r\n"
    ).encode()
    health = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(server) as connection:
        connection.sendall(health + head + vote[:1])
        time.sleep(DEADLINE / 4)  # the health check is answered meanwhile
        connection.sendall(vote[1:])
        received = _read_all(connection)
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", received)
    assert statuses == [b"200", b"404"], received[-300:]  # no image of that id


@pytest.mark.slow  # waits a second or more on a real server
def test_a_client_that_ends_its_side_and_takes_nothing_is_dropped_too(large_original) -> None:
    """A client that asks for a 14 MB original, ends its side of the connection (which has
    asyncio close the transport, keeping what waits to be sent until the client takes it)
    and reads nothing is dropped after the answer deadline all the same. Before, the
    deadline passed over a closing transport: the answer and the connection stayed for as
    long as the client kept it open."""
    host, port, path, size = large_original
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with _not_reading((host, port, None), request) as connection:
        time.sleep(0.5)  # answered
        connection.shutdown(socket.SHUT_WR)
        time.sleep(DEADLINE + SLACK)
        received = _read_until_closed(connection, 0.5)
    assert received is not None and received.startswith(b"HTTP/1.1 200")
    assert len(received) < size  # dropped, not waited for
