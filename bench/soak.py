"""Soak test: the local server under concurrent uploads, searches and votes for a fixed time.

    .venv/bin/python bench/soak.py --seconds 120

Starts `imgsearch serve` on loopback with a fresh data directory holding the demo photos,
then runs uploader, searcher and voter threads against it (each thread waits for its answer
before the next request, so the load is bounded). It prints throughput and latency per kind
of request and every error, then checks that every accepted upload is searchable and every
vote is counted, and exits non-zero if anything was lost or any answer was a 5xx.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx  # the HTTP client the dev extra installs (Starlette 1.x uses it too)
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
sys.path.insert(0, str(REPO / "tests"))  # support.votes: every vote on a term
WORDS = [
    "elephant",
    "pizza",
    "flower",
    "chair",
    "camera",
    "watch",
    "butterfly",
    "boat",
    "airplane",
    "laptop",
    "umbrella",
    "starfish",
    "temple",
    "brain",
    "dog",
    "beach",
]
API_KEY = "soak-test-key"


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    errors: list[str] = field(default_factory=list)
    uploaded: dict[str, str] = field(default_factory=dict)  # key -> image id
    votes: dict[tuple[str, str, str], int] = field(default_factory=dict)  # last vote counts
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float, status: int | str) -> None:
        with self.lock:
            self.latencies[kind].append(seconds * 1000)
            self.statuses[kind][status] += 1


def fresh_photo(rng: random.Random, photos: list[Path]) -> bytes:
    """A demo photo, cropped, tinted and re-encoded: new bytes, still a real picture."""
    image = Image.open(rng.choice(photos)).convert("RGB")
    width, height = image.size
    box = (rng.randint(0, width // 8), rng.randint(0, height // 8), width, height)
    pixels = np.asarray(image.crop(box), dtype=np.float32)
    pixels = np.clip(pixels * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=rng.randint(70, 95))
    return buffer.getvalue()


def timed(tally: Tally, kind: str, call, *args, **kwargs) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = call(*args, **kwargs)
    except httpx.HTTPError as error:
        tally.record(kind, time.perf_counter() - started, type(error).__name__)
        with tally.lock:
            tally.errors.append(f"{kind}: {error!r}")
        return None
    tally.record(kind, time.perf_counter() - started, response.status_code)
    if response.status_code >= 500:
        with tally.lock:
            tally.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
    return response


def uploader(base: str, tally: Tally, deadline: float, number: int) -> None:
    rng = random.Random(number)
    photos = sorted(DEMO.glob("*/*.jpg"))
    with httpx.Client(base_url=base, timeout=120, headers={"X-API-Key": API_KEY}) as client:
        serial = 0
        while time.monotonic() < deadline:
            key = f"soak/u{number}-{serial}.jpg"
            serial += 1
            files = {"file": ("x.jpg", fresh_photo(rng, photos), "image/jpeg")}
            response = timed(
                tally, "upload", client.post, "/api/images", files=files, data={"key": key}
            )
            if response is not None and response.status_code == 201:
                with tally.lock:
                    tally.uploaded[key] = response.json()["id"]


def searcher(base: str, tally: Tally, deadline: float, number: int) -> None:
    rng = random.Random(100 + number)
    with httpx.Client(base_url=base, timeout=60) as client:
        while time.monotonic() < deadline:
            kind = rng.choice(["search", "search", "similar", "browse"])
            if kind == "search":
                params = {"q": rng.choice(WORDS), "limit": 20, "session": f"reader{number}"}
                timed(tally, "search", client.get, "/api/search", params=params)
            elif kind == "browse":
                timed(tally, "browse", client.get, "/api/images", params={"limit": 50})
            else:
                page = client.get("/api/images", params={"limit": 50}).json()["results"]
                if page:
                    image_id = rng.choice(page)["id"]
                    timed(tally, "similar", client.get, f"/api/images/{image_id}/similar")


def voter(base: str, tally: Tally, deadline: float, number: int) -> None:
    rng = random.Random(200 + number)
    with httpx.Client(base_url=base, timeout=60) as client:
        while time.monotonic() < deadline:
            word = rng.choice(WORDS)
            results = client.get("/api/search", params={"q": word, "limit": 20}).json()["results"]
            session = f"voter{number}-{rng.randint(0, 500)}"  # many people, each voting a little
            for result in rng.sample(results, min(5, len(results))):
                value = rng.choice([1, -1])
                body = {"query": word, "image_id": result["id"], "vote": value, "session": session}
                response = timed(tally, "vote", client.post, "/api/feedback", json=body)
                if response is not None and response.status_code == 200:
                    with tally.lock:
                        tally.votes[response.json()["term"], result["id"], session] = value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    imgsearch = [sys.executable, "-m", "imgsearch.cli"]
    # Every simulated user comes from 127.0.0.1: the per-address limits (votes, bodies being
    # received at once) would count them as one client. The per-session limit and the
    # server's bound on bodies in all stay as configured.
    environment = {
        **os.environ,
        "IMGSEARCH_API_KEY": API_KEY,
        "IMGSEARCH_VOTES_PER_CLIENT_MINUTE": "1000000",
        "IMGSEARCH_VOTES_PER_CLIENT_DAY": "1000000000",
        "IMGSEARCH_HTTP_MAX_CLIENT_BODIES": "16",
    }
    subprocess.run(
        [*imgsearch, "ingest", str(DEMO), "--data-dir", str(data_dir), "-q"],
        check=True,
        env=environment,
        stdout=subprocess.DEVNULL,
    )
    server = subprocess.Popen(
        [*imgsearch, "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env=environment,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).raise_for_status()
            return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def verify(data_dir: Path, tally: Tally) -> tuple[int, int]:
    """(lost uploads, lost votes), read back from the data directory after the run."""
    from support.votes import term_votes

    from imgsearch.config import Settings
    from imgsearch.service import ImageSearch

    service = ImageSearch(Settings(data_dir=data_dir))
    service.build_index()  # anything still queued when the clock stopped
    lost_uploads = 0
    for key, image_id in tally.uploaded.items():
        record = service.find_key(key)
        if record is None or record.id != image_id or image_id not in service.parts.index:
            lost_uploads += 1
    lost_votes = 0
    stored: dict[str, dict[tuple[str, str], int]] = {}
    for (term, image_id, session), value in tally.votes.items():
        if term not in stored:
            stored[term] = {
                (v.image_id, v.session): v.value
                for v in term_votes(service.parts.feedback.table, term)
            }
        if stored[term].get((image_id, session)) != value:
            lost_votes += 1
    return lost_uploads, lost_votes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--uploaders", type=int, default=2)
    parser.add_argument("--searchers", type=int, default=6)
    parser.add_argument("--voters", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        port = free_port()
        server = start_server(data_dir, port)
        base = f"http://127.0.0.1:{port}"
        tally = Tally()
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=work, args=(base, tally, deadline, n))
            for work, count in (
                (uploader, args.uploaders),
                (searcher, args.searchers),
                (voter, args.voters),
            )
            for n in range(count)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        server.terminate()
        server.wait(timeout=30)
        lost_uploads, lost_votes = verify(data_dir, tally)

    print(
        f"{elapsed:.0f} s, {args.uploaders} uploaders, {args.searchers} searchers, "
        f"{args.voters} voters, loopback, 2 cores shared with the server"
    )
    print("| request | count | per second | p50 ms | p99 ms | answers |")
    print("|---|---|---|---|---|---|")
    for kind, latencies in sorted(tally.latencies.items()):
        answers = ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses[kind].items(), key=str))
        print(
            f"| {kind} | {len(latencies)} | {len(latencies) / elapsed:.1f} "
            f"| {statistics.median(latencies):.0f} | {np.percentile(latencies, 99):.0f} "
            f"| {answers} |"
        )
    server_errors = sum(
        n
        for counts in tally.statuses.values()
        for s, n in counts.items()
        if not isinstance(s, int) or s >= 500
    )
    print(
        f"5xx or failed requests: {server_errors}; accepted uploads: {len(tally.uploaded)}, "
        f"lost: {lost_uploads}; counted votes: {len(tally.votes)}, lost: {lost_votes}"
    )
    for error in tally.errors[:20]:
        print("  ", error)
    return 0 if server_errors == lost_uploads == lost_votes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
