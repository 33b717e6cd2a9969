"""Decoding bombs: small files built to cost are refused from their headers or decoded within
bounds, through the API (upload and reverse search), the CLI and the embed function; decodes
run in worker processes that are killed past their deadline, behind a bounded queue, while
the rest of the API keeps answering."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import requests
from fastapi.testclient import TestClient
from support.demo import REPO, demo_image
from support.hostile_files import Case, bombs, jpeg_scan_bomb, png_zlib_bomb, webp_canvas
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, http_status, make_service

from imgsearch.api.app import create_app
from imgsearch.cli import main
from imgsearch.config import Settings
from imgsearch.decode_pool import DecodePool, DecoderBusy
from imgsearch.images import DecodeLimits, DraftBox, ImageRefused, decode_image, jpeg_scans

BOMBS = bombs()
ACCEPTED = sum(case.refusal is None for case in BOMBS)
SEARCH_LIMITS = DecodeLimits.from_settings(Settings(), open_endpoint=True)
UPLOAD_LIMITS = DecodeLimits.from_settings(Settings())
DRAFT = DraftBox(260, 384)  # what the model and the thumbnail ask for (Ingestor.draft_box)
# A JPEG the header checks let through when scans are not limited, which then decodes for
# about 20 s (15,000 passes over 4000 x 4000 pixels): what the deadline is for.
SLOW = jpeg_scan_bomb(4000, 15000)
UNLIMITED_SCANS = 1_000_000


def _refusal(case: Case, limits: DecodeLimits) -> ImageRefused:
    with pytest.raises(ImageRefused) as refused:
        decode_image(case.data, limits, draft_size=DRAFT)
    return refused.value


@pytest.mark.slow  # decodes every bomb under both limits
@pytest.mark.parametrize("case", BOMBS, ids=lambda case: case.name)
def test_each_bomb_has_its_answer_under_both_limits(case: Case) -> None:
    for limits in (SEARCH_LIMITS, UPLOAD_LIMITS):
        if case.refusal is None:
            decoded = decode_image(case.data, limits, draft_size=DRAFT)
            assert decoded.image.mode == "RGB" and DRAFT.fits(decoded.image.size) >= 1
        else:
            refusal = _refusal(case, limits)
            assert refusal.reason == case.refusal, (case.name, str(refusal))
            assert str(refusal)


def test_the_open_reverse_search_takes_fewer_pixels_than_the_keyed_upload() -> None:
    thirty_megapixels = png_zlib_bomb(5500, color_type=0, depth=8)
    assert SEARCH_LIMITS.max_pixels < 5500 * 5500 <= UPLOAD_LIMITS.max_pixels
    decoded = decode_image(thirty_megapixels, UPLOAD_LIMITS, draft_size=DRAFT)
    assert (decoded.width, decoded.height) == (5500, 5500)
    refusal = _refusal(Case("x.png", thirty_megapixels, None), SEARCH_LIMITS)
    assert refusal.reason == "too_many_pixels" and "25,000,000" in str(refusal)


def test_a_webp_canvas_that_would_cost_too_much_memory_is_refused_from_its_header() -> None:
    """The issue's 34-byte WebP: 7000 x 7000 pixels are within the upload's pixel limit, but
    libwebp and Pillow would hold about 15 bytes for each (about 700 MB)."""
    data = webp_canvas(7000, 7000)
    assert len(data) == 34
    refusal = _refusal(Case("x.webp", data, None), UPLOAD_LIMITS)
    assert refusal.reason == "too_costly" and "MB of memory" in str(refusal)
    assert _refusal(Case("x.webp", data, None), SEARCH_LIMITS).reason == "too_many_pixels"


def test_jpeg_scans_are_counted_without_decoding() -> None:
    assert jpeg_scans(demo_image("pizza")) == 1  # baseline: one interleaved scan
    assert jpeg_scans(jpeg_scan_bomb(64, 0)) < 15  # a progressive encoder's own
    assert jpeg_scans(jpeg_scan_bomb(64, 500)) == jpeg_scans(jpeg_scan_bomb(64, 0)) + 500
    refusal = _refusal(Case("x.jpg", jpeg_scan_bomb(64, 500), None), SEARCH_LIMITS)
    assert refusal.reason == "too_costly" and "scans" in str(refusal)
    # Stray bytes before each segment, which libjpeg skips, hide no scan from the count.
    bomb = jpeg_scan_bomb(64, 500)
    hidden = bomb[:2] + bomb[2:].replace(b"\xff\xc4", b"\x00stray\xff\xc4")
    assert jpeg_scans(hidden) == jpeg_scans(bomb)
    unlimited = replace(SEARCH_LIMITS, max_scans=UNLIMITED_SCANS)
    assert decode_image(hidden, unlimited).width == 64  # libjpeg decodes every scan


# Peak memory, each decode in a fresh process -------------------------------------------------

# One process imports the decoder once, then forks a child per bomb: the child's peak RSS
# beyond what it held at the fork is what that decode cost (as in a fresh process, without
# paying the interpreter's start 24 times).
MEASURE = """
import json, os, resource, struct, sys
from imgsearch.config import Settings
from imgsearch.images import DecodeLimits, DraftBox, ImageRefused, decode_image
limits = DecodeLimits.from_settings(Settings(), open_endpoint=sys.argv[1] == "search")
stream = sys.stdin.buffer
grown = []
while header := stream.read(4):
    data = stream.read(struct.unpack(">I", header)[0])
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reading)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_image(data, limits, draft_size=DraftBox(260, 384))
        except ImageRefused:
            pass
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        os.write(writing, str(after - before).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as answer:
        grown.append(int(answer.read()))
    assert os.waitpid(child, 0)[1] == 0
print(json.dumps(grown))
"""


@pytest.mark.slow  # a process forking a child for each bomb
@pytest.mark.parametrize("endpoint", ["search", "upload"])
def test_no_bomb_makes_a_decode_hold_more_than_the_memory_limit(endpoint: str) -> None:
    """Each bomb decoded (or refused) in a child of its own: its peak RSS beyond what the
    process held before stays under the memory limit (and far under what the header
    declares: the largest declare 16,383 x 16,383 pixels or more)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    framed = b"".join(struct.pack(">I", len(case.data)) + case.data for case in BOMBS)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, endpoint],
        input=framed,
        capture_output=True,
        env=env,
        timeout=300,
        check=True,
    )
    grown = {
        case.name: kib * 1024 for case, kib in zip(BOMBS, json.loads(done.stdout), strict=True)
    }
    limit = UPLOAD_LIMITS.max_memory
    assert max(grown.values()) <= limit, {k: v // 2**20 for k, v in grown.items()}
    # What the header checks refuse costs nothing.
    refused = [case.name for case in BOMBS if case.refusal]
    assert all(grown[name] < 8 * 2**20 for name in refused), grown


# The pool ---------------------------------------------------------------------------------------


@pytest.fixture
def slow_limits() -> DecodeLimits:
    return replace(SEARCH_LIMITS, max_scans=UNLIMITED_SCANS)


def test_a_decode_past_its_deadline_is_refused_and_its_worker_killed(slow_limits) -> None:
    pool = DecodePool(1, deadline=1.0, queue=0)
    try:
        assert pool.decode(demo_image("pizza"), SEARCH_LIMITS, draft_size=DRAFT).width > 0
        (worker,) = multiprocessing.active_children()
        started = time.monotonic()
        with pytest.raises(ImageRefused) as refused:
            pool.decode(SLOW, slow_limits, draft_size=DRAFT)
        assert time.monotonic() - started < 5
        assert refused.value.reason == "too_costly" and "longer than 1 s" in str(refused.value)
        assert not worker.is_alive() and worker.exitcode is not None
        # A new worker takes its place.
        assert pool.decode(demo_image("lotus"), SEARCH_LIMITS, draft_size=DRAFT).width > 0
        assert [p.pid for p in multiprocessing.active_children()] != [worker.pid]
    finally:
        pool.close()
    assert not multiprocessing.active_children()


@pytest.mark.slow  # waits for decodes to reach their deadlines
def test_beyond_the_queue_callers_are_told_to_come_back(slow_limits) -> None:
    pool = DecodePool(1, deadline=3.0, queue=1)
    outcomes: list[str] = []

    def decode() -> None:
        try:
            pool.decode(SLOW, slow_limits, draft_size=DRAFT)
        except ImageRefused as refusal:
            outcomes.append(refusal.reason)
        except DecoderBusy as busy:
            outcomes.append(f"busy {busy.retry_after}")

    try:
        with ThreadPoolExecutor(4) as threads:
            for _ in range(4):
                threads.submit(decode)
                time.sleep(0.2)
    finally:
        pool.close()
    # One decodes, one waits (and is decoded after it), two are told to come back.
    assert sorted(outcomes) == ["busy 3", "busy 3", "too_costly", "too_costly"]


# Every entry point ------------------------------------------------------------------------------


@pytest.fixture
def pooled_service(tmp_path, embedder, vocabulary):
    service = make_service(tmp_path / "data", embedder, vocabulary, decode_workers=2)
    yield service
    service.close()


@pytest.mark.slow  # every bomb decoded twice, in worker processes
def test_api_upload_and_reverse_search_answer_each_bomb(pooled_service) -> None:
    with TestClient(create_app(pooled_service), headers={API_KEY_HEADER: API_KEY}) as client:
        for case in BOMBS:
            files = {"file": (case.name, case.data, "application/octet-stream")}
            for route, limits in (("/api/images", UPLOAD_LIMITS), ("/api/search/image", None)):
                response = client.post(route, files=files)
                if case.refusal is None:
                    assert response.status_code in (200, 201), (case.name, response.text)
                    continue
                assert response.status_code == http_status(case.refusal), case.name
                expected = _refusal(case, limits or SEARCH_LIMITS)
                assert response.json()["detail"] == str(expected), case.name
        assert client.get("/api/health").json()["images"] == ACCEPTED


@pytest.mark.model  # the CLI loads the model
def test_cli_ingest_refuses_each_bomb_with_its_reason(tmp_path, capsys) -> None:
    folder = tmp_path / "bombs"
    folder.mkdir()
    for case in BOMBS:
        (folder / case.name).write_bytes(case.data)
    assert main(["ingest", str(folder), "--data-dir", str(tmp_path / "data"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{ACCEPTED} added" in out and f"{len(BOMBS) - ACCEPTED} refused" in out
    for case in BOMBS:
        if case.refusal:
            expected = _refusal(case, UPLOAD_LIMITS)
            assert f"refused {case.name}: {expected}" in out, case.name


# The API keeps answering while bombs are decoded -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`imgsearch serve` with one decode worker, a 2 s deadline, two callers allowed to wait,
    and no limit on JPEG scans, so that the slow JPEG reaches the worker; every test client is
    one address, so the bound on one client's bodies is lifted (the decoders' bounds are
    measured here, tests/api/test_http.py measures that one)."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "IMGSEARCH_API_KEY": API_KEY,
        "IMGSEARCH_DECODE_WORKERS": "1",
        "IMGSEARCH_DECODE_SECONDS": "2",
        "IMGSEARCH_DECODE_QUEUE": "2",
        "IMGSEARCH_MAX_JPEG_SCANS": str(UNLIMITED_SCANS),
        "IMGSEARCH_HTTP_MAX_CLIENT_BODIES": "16",
    }
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "data")]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.model  # `imgsearch serve` loads the model
def test_health_answers_within_a_second_while_bombs_are_decoded(server: str) -> None:
    statuses: list[tuple[int, str, str | None]] = []
    health: list[tuple[int, float]] = []  # status and seconds of each health check
    storm_over = threading.Event()

    def bomb() -> None:
        files = {"file": ("slow.jpg", SLOW, "image/jpeg")}
        response = requests.post(f"{server}/api/search/image", files=files, timeout=60)
        detail = response.json()["detail"]
        statuses.append((response.status_code, detail, response.headers.get("retry-after")))

    def watch_health() -> None:
        while not storm_over.is_set():
            started = time.monotonic()
            status = requests.get(f"{server}/api/health", timeout=10).status_code
            health.append((status, time.monotonic() - started))  # asserted below, not here:
            time.sleep(0.1)  # an assertion in this thread would go unseen

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as threads:
            for _ in range(6):
                threads.submit(bomb)
    finally:
        storm_over.set()
        watcher.join()

    # One decoded until its deadline, two waited for the worker and had theirs, the rest were
    # told when to come back.
    refused = [s for s in statuses if s[0] == 422]
    busy = [s for s in statuses if s[0] == 503]
    assert len(refused) + len(busy) == 6, statuses
    assert len(refused) >= 1 and all("longer than 2 s" in detail for _, detail, _ in refused)
    assert all(retry == "2" and "try again" in detail for _, detail, retry in busy)
    assert len(health) >= 10 and all(status == 200 for status, _ in health), health
    assert max(seconds for _, seconds in health) < 1.0, health
    # The worker killed at each deadline was replaced: an ordinary photo is searched at once.
    files = {"file": ("pizza.jpg", demo_image("pizza"), "image/jpeg")}
    assert requests.post(f"{server}/api/search/image", files=files, timeout=30).status_code == 200
