"""Hostile input through every entry point: each bad file refused with its reason, real images
accepted, nothing else lost; the decoder fuzzed; bodies, keys and vote rates bounded."""

from __future__ import annotations

import gc
import resource
from contextlib import suppress
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.demo import demo_image
from support.hostile_files import Case, corpus, encode, photo
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, http_status, make_service

from imgsearch.api.app import create_app
from imgsearch.cli import main
from imgsearch.config import Settings
from imgsearch.images import DecodeLimits, ImageRefused, decode_image

LIMIT = 2_000_000
CASES = corpus(max_bytes=LIMIT)
ACCEPTED = sum(case.refusal is None for case in CASES)
# How each refusal is answered over HTTP (the rest are 422).
DECODE_LIMITS = DecodeLimits.from_settings(Settings(max_image_bytes=LIMIT))


@pytest.fixture
def hostile_service(tmp_path, embedder, vocabulary):
    return make_service(tmp_path / "data", embedder, vocabulary, max_image_bytes=LIMIT)


def _expect_http(response, case: Case) -> None:
    if case.refusal is None:
        assert response.status_code in (200, 201), (case.name, response.text)
    else:
        assert response.status_code == http_status(case.refusal), case.name
        assert response.json()["detail"], case.name


@pytest.mark.model  # the model finds the pizza again
def test_api_upload_and_reverse_search_refuse_each_bad_file(hostile_service) -> None:
    with TestClient(create_app(hostile_service), headers={API_KEY_HEADER: API_KEY}) as client:
        good = client.post("/api/images", files={"file": ("good.jpg", demo_image("pizza"))})
        assert good.status_code == 201
        for case in CASES:
            files = {"file": (case.name, case.data, "image/jpeg")}
            _expect_http(client.post("/api/images", files=files), case)
            _expect_http(client.post("/api/search/image", files=files), case)
        assert client.get("/api/health").json()["images"] == 1 + ACCEPTED
        found = client.get("/api/search", params={"q": "pizza"}).json()["results"]
        assert found[0]["id"] == good.json()["id"]  # nothing else was lost


@pytest.mark.model  # the CLI loads the model
def test_cli_ingest_lists_each_refusal_and_adds_the_rest(tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    for case in CASES:
        (folder / case.name).write_bytes(case.data)
    (folder / "good.jpg").write_bytes(demo_image("lotus"))
    monkeypatch.setenv("IMGSEARCH_MAX_IMAGE_BYTES", str(LIMIT))
    assert main(["ingest", str(folder), "--data-dir", str(tmp_path / "data"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{ACCEPTED + 1} added" in out
    for case in CASES:
        if case.refusal:
            assert f"refused {case.name}:" in out, case.name


def test_decoding_hostile_files_does_not_leak_memory() -> None:
    def decode_all() -> None:
        for case in CASES:
            with suppress(ImageRefused):
                decode_image(case.data, DECODE_LIMITS)

    for _ in range(3):  # warm up allocator pools and Pillow's plugin caches
        decode_all()
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20):
        decode_all()
    gc.collect()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 20 * 1024, f"peak memory grew by {grown_kib} KiB over 20 rounds"


SEEDS = [
    encode(photo(96, 64), "JPEG", quality=85),
    encode(photo(64, 48), "PNG"),
    encode(photo(64, 48).convert("P"), "GIF"),
    encode(photo(64, 48), "WEBP"),
    encode(photo(64, 48), "TIFF"),
    encode(photo(64, 48), "BMP"),
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real image file with bytes flipped, cut, or inserted: what a decoder meets in the
    wild and what fuzzers feed it."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "splice"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            other = draw(st.sampled_from(SEEDS))
            data[position:] = other[position:]
        if not data:
            break
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_fuzzed_images_decode_or_are_refused_never_crash(data: bytes) -> None:
    try:
        decoded = decode_image(data, replace(DECODE_LIMITS, max_pixels=4_000_000))
    except ImageRefused as refusal:
        assert refusal.reason in {
            "empty",
            "not_an_image",
            "corrupt",
            "too_many_pixels",
            "too_small",
            "too_large",
            "too_costly",
        }
        return
    assert decoded.image.mode == "RGB" and decoded.image.width >= 8


def test_request_bodies_over_the_limit_are_refused_unread(hostile_service) -> None:
    with TestClient(create_app(hostile_service), headers={API_KEY_HEADER: API_KEY}) as client:
        big = b"\xff\xd8" + bytes(LIMIT + 100_000)
        declared = client.post("/api/images", files={"file": ("big.jpg", big)})
        assert declared.status_code == 413 and "limit" in declared.json()["detail"]

        def chunks():  # a well-formed upload without Content-Length: counted as it streams in
            yield (
                b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
                b"Content-Type: image/jpeg\r\n\r\n\xff\xd8"
            )
            for _ in range(40):
                yield bytes(64 * 1024)

        streamed = client.post(
            "/api/search/image",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert streamed.status_code == 413

        # Anything but a form (a vote is JSON) is small.
        vote = {"query": "x" * 50_000, "image_id": "0" * 16, "vote": 1, "session": "s"}
        too_big = client.post("/api/feedback", json=vote)
        assert too_big.status_code == 413 and "16,384 bytes" in too_big.json()["detail"]


@pytest.mark.parametrize("key", ["../../etc/passwd", "/abs.jpg", "a/./b.jpg", "x\x00.jpg"])
def test_keys_cannot_escape_the_collection(hostile_service, key) -> None:
    with TestClient(create_app(hostile_service), headers={API_KEY_HEADER: API_KEY}) as client:
        files = {"file": ("x.jpg", demo_image("chair"))}
        response = client.post("/api/images", files=files, data={"key": key})
        assert response.status_code == 422 and "key" in response.json()["detail"]
        sneaky = client.post(
            "/api/images", files={"file": ("../../../etc/x.jpg", demo_image("chair"))}
        )
        assert sneaky.status_code == 201 and sneaky.json()["key"] == "uploads/x.jpg"
    stored = {info.key for info in hostile_service.parts.storage.objects.list("images/")}
    assert stored == {"images/uploads/x.jpg"}


def test_inputs_long_in_bytes_but_within_the_limits_are_answered(hostile_service) -> None:
    """200 characters of emoji make a query of hundreds of words and a key of 800 bytes."""
    emoji, wide = "\U0001f600" * 200, "\U00010348" * 1000
    with TestClient(create_app(hostile_service), headers={API_KEY_HEADER: API_KEY}) as client:
        image_id = client.post("/api/images", files={"file": ("a.jpg", demo_image("chair"))})
        image_id = image_id.json()["id"]
        search = client.get("/api/search", params={"q": emoji, "session": "s"})
        assert search.status_code == 200 and len(search.json()["interpretation"]["query"]) < 1000
        vote = {"query": emoji, "image_id": image_id, "vote": 1, "session": "s"}
        assert client.post("/api/feedback", json=vote).status_code == 200
        files = {"file": ("q.jpg", demo_image("chair"))}
        by_example = client.post(
            "/api/search/image", files=files, data={"query": emoji, "session": "s"}
        )
        assert by_example.status_code == 200
        found = client.get("/api/images", params={"key": wide})
        assert found.status_code == 200 and found.json()["total"] == 0


def test_votes_are_rate_limited_per_session(tmp_path, embedder, vocabulary, one_minute) -> None:
    service = make_service(tmp_path / "data", embedder, vocabulary, votes_per_session_minute=5)
    image_id = service.add("a.jpg", demo_image("watch")).image_id
    with TestClient(create_app(service)) as client:
        statuses = [
            client.post(
                "/api/feedback",
                json={"query": f"word{i}", "image_id": image_id, "vote": 1, "session": "eager"},
            ).status_code
            for i in range(7)
        ]
        assert statuses == [200] * 5 + [429] * 2
        other = client.post(
            "/api/feedback",
            json={"query": "word", "image_id": image_id, "vote": 1, "session": "calm"},
        )
        assert other.status_code == 200
    assert len(list(service.parts.storage.feedback.query("terms"))) == 6  # the terms voted on


def test_a_thumbnail_is_served_as_jpeg_whatever_was_uploaded(hostile_service) -> None:
    polyglot = next(case for case in CASES if case.name == "polyglot.gif")
    with TestClient(create_app(hostile_service), headers={API_KEY_HEADER: API_KEY}) as client:
        image_id = client.post(
            "/api/images", files={"file": (polyglot.name, polyglot.data)}
        ).json()["id"]
        original = client.get(f"/api/images/{image_id}/file")
        assert original.headers["content-type"] == "image/gif"
        assert original.headers["x-content-type-options"] == "nosniff"
        thumbnail = client.get(f"/api/images/{image_id}/thumbnail")
        assert thumbnail.content[:2] == b"\xff\xd8" and b"<script>" not in thumbnail.content
