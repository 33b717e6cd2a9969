"""HTTP throughput of `imgsearch serve` on a 10k-image collection, with 8 concurrent clients.

    nice -n 5 .venv/bin/python bench/http_throughput.py --baseline /path/to/other/checkout

1. A collection of `--size` images is synthesised into a local data directory, as
   bench/index_scale.py does (real EfficientNet features of the demo photos and Corel-1k,
   perturbed): image records, the index (published through the engine's own writer) and
   exact neighbour lists. It is kept in `--data` and reused by the next run of the same size.
2. The real server (`python -m imgsearch.cli serve`, as the README starts it: one uvicorn
   process, or `--workers N` of them for each N given) serves it on loopback, from this
   checkout's sources and, with `--baseline`, from
   another checkout's (a `git worktree` of main, say; `--baseline-workers` as many process
   counts), in alternating rounds (each starting with the next server): the machine is
   shared and noisy, so only medians over rounds and ratios measured in the same run count.
3. `--clients` connections (keep-alive HTTP/1.1, each waiting for its answer before the next
   request: wrk's if it is installed, a few percent of the server's CPU, else one asyncio
   loop in this process, which costs about as much as the server; reverse search always
   this process's) ask for `--seconds` per kind of request:
   keyword (`GET /api/search?q=WORD`, everyday words in turn), similar
   (`GET /api/images/{id}/similar`, `--similar-ids` random images in turn: 500, or every
   image once, the warm-up then asking other images than the round), similar-voted (the
   same while `--votes-per-second` votes arrive through `POST /api/feedback`, from a thread
   of this process: a public server's state; the server's CPU counts the votes' too) and
   reverse search (`POST /api/search/image` with the demo photos).
4. The model alone, as the baseline of reverse search: the server's embedder (same model,
   same `inference_threads` setting) on the same photos, decoded beforehand, one after another.

Prints, per kind and checkout: requests/s, p50 and p99 latency, the server's CPU time per
request (its process and its decode workers, from /proc: what a loaded machine does not
inflate as much as it does wall-clock rates) and the requests/s one core would serve at that
cost, all medians over rounds; the ratios to the baseline checkout, and for reverse search the
ratio to the model alone. Goals (issue 16): keyword >= 500 requests/s, similar >= 1,000,
reverse search at the model's pace. The clients share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]

from index_scale import real_embeddings, synthesise, synthetic_record  # noqa: E402

from imgsearch.bulk import files_under  # noqa: E402
from imgsearch.config import Settings  # noqa: E402
from imgsearch.embedding import Embedder, ModelSpec  # noqa: E402
from imgsearch.images import DecodeLimits, decode_image  # noqa: E402
from imgsearch.index.expansion import Expansion  # noqa: E402
from imgsearch.index.shards import ShardData  # noqa: E402
from imgsearch.service import ImageSearch  # noqa: E402
from imgsearch.storage import Put  # noqa: E402

DEMO = REPO / "demo"
K = 50  # neighbours per stored list (Settings.neighbours)
API_KEY = "http-bench-key"
# Everyday words, asked in turn (a keyword answer depends on the word: one word would measure
# one posting list).
WORDS = [
    *("dog", "cat", "car", "beach", "flower", "bird", "boat", "chair", "pizza", "airplane"),
    *("elephant", "camera", "watch", "butterfly", "laptop", "umbrella", "mountain", "bicycle"),
    *("horse", "fish"),
]
# The words votes are cast for (similar-voted): none of the keyword requests', whose answers
# votes change (the learned re-ranking); votes stay in the collection from round to round.
VOTE_WORDS = ["zebra", "volcano", "guitar", "pumpkin", "lighthouse", "teapot", "castle", "tractor"]
KINDS = ("keyword", "similar", "similar-voted", "reverse")
DEFAULT_KINDS = ("keyword", "similar", "reverse")
GOALS = {"keyword": 500.0, "similar": 1000.0, "similar-voted": 1000.0}
VOTES_PER_SECOND = 10.0  # while similar-voted is measured (--votes-per-second)
# Images "more like this" is asked for, in turn (--similar-ids): a server process keeps the
# pages it answered (api/kept.py), so with 500 each process answers most of a round's
# requests from kept pages once it has seen each image (a long-running server asked about
# popular images); with the collection's size, every request of a round asks another image.
SIMILAR_IDS = 500
START_SECONDS = 600  # a server's start and warm-up, on a loaded machine


# The collection ---------------------------------------------------------------------------


def populate(data_dir: Path, size: int) -> None:
    """`size` indexed images in `data_dir`: records, the index, exact neighbour lists."""
    settings = Settings(data_dir=data_dir, backend="local", decode_workers=0)
    service = ImageSearch(settings)
    try:
        features, probabilities = synthesise(*real_embeddings(), size, np.random.default_rng(size))
        ids = [f"{i:016x}" for i in range(size)]
        # (near-copy lists kept from the start: the server would complete them while measured)
        service.parts.catalog.mark_near_copy_lists_complete()
        service.parts.storage.catalog.put_many(
            [
                Put(f"image#{i}", "meta", synthetic_record(i, p).attrs(), 0)
                for i, p in zip(ids, probabilities, strict=True)
            ]
        )
        index, writer = service.parts.index, service.parts.builder.writer
        for start in range(0, size, settings.shard_size):
            index.refresh(force=True)
            rows = slice(start, start + settings.shard_size)
            writer.publish(ShardData(ids[rows], features[rows], probabilities[rows]), [])
        writer.settle(finish=True)  # the tier merges it starts, before the next publication
        index.refresh(force=True)
        # Exact neighbours, 1000 rows at a time, each list with its expanded vector (as the
        # builder stores them: "more like this" ranks by them).
        expansion = Expansion(
            settings.expansion_neighbours,
            settings.expansion_power,
            settings.expansion_query_neighbours,
        )
        for start in range(0, size, 1000):
            distances = 1.0 - features[start : start + 1000] @ features.T
            lists, expanded = {}, {}
            for row, image_distances in enumerate(distances, start):
                image_distances[row] = np.inf
                nearest = np.argpartition(image_distances, K)[:K]
                nearest = nearest[np.argsort(image_distances[nearest])]
                near = [(ids[i], round(float(image_distances[i]), 6)) for i in nearest]
                lists[ids[row]] = (near, 0)
                first = {ids[i]: features[i] for i in nearest[: expansion.neighbours]}
                expanded[ids[row]] = expansion.of(features[row], near, first)
            service.parts.catalog.put_neighbour_lists(lists, expanded)
    finally:
        service.close()


def collection(data: Path, size: int) -> Path:
    """The data directory of a `size`-image collection, made once."""
    data_dir = data / f"http-{size}-expanded"  # lists with expanded vectors
    done = data_dir / "populated"
    if not done.exists():
        print(f"synthesising {size:,} images into {data_dir} ...", file=sys.stderr, flush=True)
        if data_dir.exists():
            raise SystemExit(f"{data_dir} is half made: delete it")
        data_dir.mkdir(parents=True)
        populate(data_dir, size)
        done.write_text(str(size))
    return data_dir


def photos() -> list[bytes]:
    return [
        path.read_bytes()
        for _, path in files_under(DEMO)
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]


# The server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(
    src: Path, data_dir: Path, port: int, workers: int = 1, reverse: bool = True
) -> subprocess.Popen[bytes]:
    """`imgsearch serve` (with `workers` processes) from the sources under `src`, once it
    answers (and is warm: `warm`)."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(src),
        "IMGSEARCH_API_KEY": API_KEY,
        # Every client comes from 127.0.0.1: the per-address bounds on connections and bodies
        # would refuse some of them, and the vote limits per client and session most votes.
        "IMGSEARCH_HTTP_MAX_CLIENT_CONNECTIONS": "1000",
        "IMGSEARCH_HTTP_MAX_CLIENT_BODIES": "1000",
        "IMGSEARCH_VOTES_PER_CLIENT_MINUTE": "1000000",
        "IMGSEARCH_VOTES_PER_CLIENT_DAY": "1000000000",
        "IMGSEARCH_VOTES_PER_SESSION_MINUTE": "1000000",
    }
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--data-dir", str(data_dir)]
    if workers > 1:
        command += ["--workers", str(workers)]
    # Its stderr, shown if it does not start (open while it runs; closed with the process).
    log = tempfile.TemporaryFile()  # noqa: SIM115
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stderr=log,
        cwd=src.parent,
        start_new_session=True,  # its own process group: stopped with its workers
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1):
                warm(port, workers, reverse)
                return server
        except OSError:
            if server.poll() is not None:
                message = f"the server from {src} exited with {server.returncode}"
                raise SystemExit(message + _tail(log)) from None
            time.sleep(0.1)
    stop_server(server)
    raise SystemExit(f"the server from {src} did not start in {START_SECONDS} s" + _tail(log))


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return ":\n" + log.read().decode(errors="replace")[-2000:]


def warm(port: int, workers: int, reverse: bool = True) -> None:
    """Ask each kind a few times per server process, each on a new connection (any process
    may accept it), one after another: a process's first keyword search reads the
    vocabulary, its first reverse search makes the model (with `reverse`: only if reverse
    search is measured), which would otherwise fall in a measured round."""
    for path in [*paths_of("keyword", 1)[:2], *paths_of("similar", 100)[:2]] * 4 * workers:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=300) as answer:
            answer.read()
    photo = next(iter(photos()))  # and reverse search, whose first call makes the model
    for _ in range(4 * workers if reverse else 0):
        head, body = multipart(photo).split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[2:])
        asked = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/search/image", data=body, headers=headers
        )
        with urllib.request.urlopen(asked, timeout=300) as answer:
            answer.read()


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Stop the server and its worker processes (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # workers the server left behind
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by process `pid` and its descendants (the decode workers), from
    /proc (Linux): the server's cost per request, whatever else the machine runs."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [pid]
    while stack:
        process = stack.pop()
        total += times.get(process, 0.0)
        stack.extend(children.get(process, []))
    return total


# The clients ------------------------------------------------------------------------------


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def multipart(photo: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        "POST /api/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def paths_of(kind: str, size: int, similar_ids: int = SIMILAR_IDS) -> list[str]:
    """The paths a GET of `kind` asks for, in turn: for similar, `similar_ids` random images
    (with `similar_ids` >= `size`, every image once, in random order)."""
    rng = random.Random(kind.removesuffix("-voted"))  # the same images with votes or not
    if kind == "keyword":
        return [f"/api/search?q={word}" for word in WORDS]
    if similar_ids >= size:
        ids = list(range(size))
        rng.shuffle(ids)
        if kind == "similar-voted":  # from the middle: not the images similar just asked
            ids = ids[size // 2 :] + ids[: size // 2]
    else:
        ids = [rng.randrange(size) for _ in range(similar_ids)]
    return [f"/api/images/{i:016x}/similar" for i in ids]


def requests_of(
    kind: str, size: int, demo: list[bytes], similar_ids: int = SIMILAR_IDS
) -> list[bytes]:
    """Raw requests of one kind, to be sent in turn."""
    if kind == "reverse":
        return [multipart(photo) for photo in demo]
    return [get(path) for path in paths_of(kind, size, similar_ids)]


class Voter:
    """Votes posted through the API (`POST /api/feedback`, keep-alive) at `rate` a second
    from a thread of this process, while the block runs: random words, images, sessions and
    directions, as the users of a public server would cast them."""

    def __init__(self, port: int, size: int, rate: float) -> None:
        self.port, self.size, self.rate = port, size, rate
        self.sent = self.failed = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Voter:
        self._began = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._began

    def _run(self) -> None:
        rng = random.Random(0)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        due = time.perf_counter()
        while not self._stop.is_set():
            vote = {
                "query": rng.choice(VOTE_WORDS),
                "image_id": f"{rng.randrange(self.size):016x}",
                "vote": rng.choice((1, -1)),
                "session": f"bench-{rng.randrange(100)}",
            }
            try:
                connection.request(
                    "POST", "/api/feedback", json.dumps(vote), {"Content-Type": "application/json"}
                )
                answer = connection.getresponse()
                answer.read()
                self.sent += 1
                self.failed += answer.status != 200
            except (OSError, http.client.HTTPException):
                self.failed += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            due += 1.0 / self.rate
            self._stop.wait(max(0.0, due - time.perf_counter()))
        connection.close()


@dataclass
class Measured:
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    quantiles: dict[int, float] = field(default_factory=dict)  # seconds, as wrk reports them
    failures: int = 0
    server_cpu: float = 0.0  # seconds of CPU the server used meanwhile
    client_cpu: float = 0.0  # seconds of CPU the load generator used meanwhile
    votes: float = 0.0  # votes a second that arrived meanwhile (warm-up included)
    vote_failures: int = 0

    @property
    def cpu_ms(self) -> float:
        """Server CPU per request, in ms."""
        return self.server_cpu / self.requests * 1000 if self.requests else 0.0

    @property
    def client_share(self) -> float:
        """The load generator's CPU against the server's: what it took from the server."""
        return self.client_cpu / self.server_cpu if self.server_cpu else 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _client(
    port: int, requests: list[bytes], start: int, until: float, measured: Measured | None
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    turn = start
    try:
        while time.perf_counter() < until:
            request = requests[turn % len(requests)]
            turn += 1
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if measured is not None:
                measured.latencies.append(time.perf_counter() - began)
                measured.requests += 1
                if not head.startswith(b"HTTP/1.1 200"):
                    measured.failures += 1
    finally:
        writer.close()


async def _load(
    port: int,
    requests: list[bytes],
    clients: int,
    seconds: float,
    started: Callable[[], Awaitable[None]],
) -> Measured:
    warm_until = time.perf_counter() + min(2.0, seconds / 4)
    await asyncio.gather(*(_client(port, requests, c, warm_until, None) for c in range(clients)))
    await started()
    measured = Measured()
    began = time.perf_counter()
    until = began + seconds
    await asyncio.gather(*(_client(port, requests, c * 7, until, measured) for c in range(clients)))
    measured.seconds = time.perf_counter() - began
    return measured


def load(
    server: subprocess.Popen[bytes], port: int, requests: list[bytes], clients: int, seconds: float
) -> Measured:
    """`clients` connections asking `requests` in turn for `seconds` (after a warm-up)."""
    cpu = [0.0]

    async def measured_load() -> Measured:
        async def counted() -> None:
            cpu[0] = cpu_seconds(server.pid)

        client = time.process_time()
        measured = await _load(port, requests, clients, seconds, counted)
        measured.client_cpu = time.process_time() - client  # warm-up included: an upper bound
        measured.server_cpu = cpu_seconds(server.pid) - cpu[0]
        return measured

    return asyncio.run(measured_load())


def _wrk_script(paths: list[str]) -> str:
    """A wrk script asking `paths` in turn; its file name."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        listed = ",".join(f'"{path}"' for path in paths)
        script.write(
            f"local paths = {{{listed}}}\nlocal n = 0\n"
            "request = function()\n  n = n + 1\n"
            "  return wrk.format('GET', paths[(n % #paths) + 1])\nend\n"
        )
    return script.name


def wrk_load(
    server: subprocess.Popen[bytes],
    port: int,
    paths: list[str],
    clients: int,
    seconds: float,
    warm_up: float = 2.0,
    warm_paths: list[str] | None = None,
) -> Measured:
    """`clients` connections of wrk (C, one thread: a few percent of the server's CPU) asking
    `paths` in turn for `seconds`, after `warm_up` seconds asking `warm_paths` (default:
    `paths`)."""
    script, warm_script = _wrk_script(paths), _wrk_script(warm_paths or paths)
    url = f"http://127.0.0.1:{port}"
    try:
        base = ["wrk", "-t1", f"-c{clients}"]
        # Warm-up: each server process makes its first answers slowly (what it reads lazily).
        subprocess.run(
            [*base, "-s", warm_script, f"-d{warm_up:g}s", url], capture_output=True, check=True
        )
        before, client = cpu_seconds(server.pid), os.times()
        done = subprocess.run(
            [*base, "-s", script, f"-d{seconds:g}s", "--latency", url],
            capture_output=True,
            text=True,
            check=True,
        )
        after = os.times()
        measured = Measured(server_cpu=cpu_seconds(server.pid) - before)
    finally:
        os.unlink(script)
        os.unlink(warm_script)
    measured.client_cpu = (after.children_user - client.children_user) + (
        after.children_system - client.children_system
    )
    out = done.stdout
    measured.requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", out)[1])  # type: ignore[index]
    measured.seconds = measured.requests / rate if rate else seconds
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    measured.failures = int(failed[1]) if failed else 0
    for percent in (50, 99):
        found = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\b", out, re.MULTILINE)
        if found:
            scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[found[2]]
            measured.quantiles[percent] = float(found[1]) * scale
    return measured


def model_alone(demo: list[bytes], seconds: float) -> float:
    """Images/s of the server's embedder on the demo photos, decoded beforehand."""
    settings = Settings()
    embedder = Embedder(ModelSpec.load(settings.model_path), num_threads=settings.inference_threads)
    limits = DecodeLimits.from_settings(settings, open_endpoint=True)
    images = [decode_image(photo, limits).image for photo in demo]
    embedder.embed(images[0])
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        embedder.embed(images[done % len(images)])
        done += 1
    return done / (time.perf_counter() - began)


# The run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(DEFAULT_KINDS))
    parser.add_argument(
        "--votes-per-second",
        type=float,
        default=VOTES_PER_SECOND,
        help="votes posted through the API while similar-voted is measured",
    )
    parser.add_argument("--data", type=Path, default=REPO / "build" / "bench")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (its src/ is served) to compare with"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="server processes of this checkout, each count served in turn",
    )
    parser.add_argument(
        "--baseline-workers",
        type=int,
        nargs="+",
        default=[1],
        help="server processes of the baseline, each count served in turn (ratios compare "
        "this checkout and the baseline at the same count)",
    )
    parser.add_argument(
        "--similar-ids",
        type=int,
        default=SIMILAR_IDS,
        help="random images asked for in turn by the similar requests (>= --size: every "
        "image once, in random order)",
    )
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator for keyword and similar (reverse: always this process's)",
    )
    args = parser.parse_args()
    # Absolute: each server runs in its own checkout's directory.
    data_dir = collection(args.data.resolve(), args.size)
    demo = photos()
    # name -> (sources, server processes)
    trees = {_tree("this", count): (REPO / "src", count) for count in args.workers}
    if args.baseline:
        for count in args.baseline_workers:
            trees[_tree("baseline", count)] = (args.baseline.resolve() / "src", count)
    results: dict[tuple[str, str], list[Measured]] = {}
    models: list[float] = []
    for round_ in range(args.rounds):
        # Each round starts with another server: the machine's load drifts within a round,
        # and always serving one checkout first would hand it the same part of every round.
        served = list(trees.items())
        served = served[round_ % len(served) :] + served[: round_ % len(served)]
        for name, (src, workers) in served:
            port = free_port()
            server = start_server(src, data_dir, port, workers, "reverse" in args.kinds)
            try:
                for kind in args.kinds:
                    rate = args.votes_per_second if kind == "similar-voted" else 0.0
                    with contextlib.ExitStack() as during:
                        voter = during.enter_context(Voter(port, args.size, rate)) if rate else None
                        measured = measure(server, port, kind, args, demo, workers)
                    if voter:
                        measured.votes = voter.sent / voter.seconds
                        measured.vote_failures = voter.failed
                    results.setdefault((name, kind), []).append(measured)
                    print(
                        f"round {round_ + 1} {name:8} {kind:8} {measured.rate:8.1f} req/s "
                        f"p50 {_ms(measured, 50):7.2f} ms p99 {_ms(measured, 99):7.2f} ms "
                        f"server CPU {measured.cpu_ms:6.2f} ms/request "
                        f"client CPU {measured.client_share:4.0%} of the server's "
                        f"failures {measured.failures}"
                        + (
                            f" votes {measured.votes:.1f}/s ({measured.vote_failures} failed)"
                            if kind == "similar-voted"
                            else ""
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                stop_server(server)
        if "reverse" in args.kinds:
            models.append(model_alone(demo, args.seconds))
            print(f"round {round_ + 1} model alone {models[-1]:8.1f} images/s", file=sys.stderr)
    report(args, trees, results, models)


def measure(
    server: subprocess.Popen[bytes],
    port: int,
    kind: str,
    args: argparse.Namespace,
    demo: list[bytes],
    workers: int,
) -> Measured:
    """One kind of request against a started server, after its warm-up."""
    if kind != "reverse" and args.client == "wrk":
        paths = paths_of(kind, args.size, args.similar_ids)
        # Every image once: the warm-up asks others than the round's first (the list from its
        # end), or the round would begin with pages the warm-up had the server keep.
        every_image = kind != "keyword" and args.similar_ids >= args.size
        warm_paths = paths[::-1] if every_image else paths
        warm_up = 2.0 * workers
        return wrk_load(server, port, paths, args.clients, args.seconds, warm_up, warm_paths)
    requests = requests_of(kind, args.size, demo, args.similar_ids)
    return load(server, port, requests, args.clients, args.seconds)


def _tree(checkout: str, workers: int) -> str:
    """A served checkout's name in the report: "this", "baseline x2"."""
    return checkout if workers == 1 else f"{checkout} x{workers}"


def _ms(measured: Measured, q: int) -> float:
    if q in measured.quantiles:
        return measured.quantiles[q] * 1000
    return float(np.percentile(measured.latencies, q)) * 1000 if measured.latencies else 0.0


def report(
    args: argparse.Namespace,
    trees: dict[str, tuple[Path, int]],
    results: dict[tuple[str, str], list[Measured]],
    models: list[float],
) -> None:
    print(
        f"{args.size:,} images, {args.clients} clients, {args.rounds} rounds of "
        f"{args.seconds:g} s per kind; medians over rounds; load generator: {args.client} "
        "(reverse search: this process)"
    )
    if models:
        print(f"model alone (reverse search's baseline): {statistics.median(models):.1f} images/s")
    for name in trees:
        voted = results.get((name, "similar-voted"))
        if voted:
            print(
                f"votes that arrived while {name} answered similar-voted: "
                f"{statistics.median(m.votes for m in voted):.1f}/s (asked: "
                f"{args.votes_per_second:g}/s), {sum(m.vote_failures for m in voted)} failed"
            )
    print(
        "| kind | checkout | requests/s | p50 ms | p99 ms | server CPU ms/request "
        "| requests/s per server core | client CPU / server CPU | failures "
        "| vs baseline (requests/s; CPU) | goal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for name, (_, workers) in trees.items():
            # Against the baseline served by as many processes (if it was), else by one.
            base = results.get((_tree("baseline", workers), kind)) or results.get(
                ("baseline", kind)
            )
            base_rate = statistics.median(m.rate for m in base) if base else None
            base_cpu = statistics.median(m.cpu_ms for m in base) if base else None
            runs = results[(name, kind)]
            rate = statistics.median(m.rate for m in runs)
            cpu = statistics.median(m.cpu_ms for m in runs)
            ratio = f"{rate / base_rate:.2f}x; {base_cpu / cpu:.2f}x" if base_rate else "-"
            if kind == "reverse" and models:
                goal = f"{rate / statistics.median(models):.0%} of the model"
            else:
                goal = f">= {GOALS[kind]:,.0f}: {'met' if rate >= GOALS[kind] else 'not met'}"
            print(
                f"| {kind} | {name} | {rate:,.1f} "
                f"| {statistics.median(_ms(m, 50) for m in runs):.2f} "
                f"| {statistics.median(_ms(m, 99) for m in runs):.2f} "
                f"| {cpu:.2f} | {1000 / cpu if cpu else 0:,.0f} "
                f"| {statistics.median(m.client_share for m in runs):.0%} "
                f"| {sum(m.failures for m in runs)} | {ratio} | {goal} |"
            )


if __name__ == "__main__":
    main()
