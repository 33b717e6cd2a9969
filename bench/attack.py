"""Attacks of issue 13 on a local server: what each costs it, and what the votes let through.

    .venv/bin/python bench/attack.py --data-dir /tmp/attack-demo      # ~2 min once ingested
    .venv/bin/python bench/attack.py --quick --photos 3               # one of each, 1-2 min
    .venv/bin/python bench/attack.py --data-dir /tmp/attack-demo --src /work/old/src  # before

Ingests the demo photos into `--data-dir` (once: a later run with the same directory reuses
them), copies that collection to a scratch directory and starts `imgsearch serve` on it on
loopback (the code under `--src`, by default this checkout's: another checkout's src measures
the code before a change), under a memory cap (`--memory-cap-gb`: RLIMIT_AS for each of its
processes, and the bench kills the server if their RSS add up to more), so that no attack can
take the machine down. Then it runs each attack of the table `ATTACKS` in turn, bounded in
count and time: decode bombs on the open reverse search (alone, six at once, and sent by a
client that leaves), HTTP framing and JSON tricks, a body sent on after its 413, slow,
half-sent and idle connections, vote poisoning, agreement and vote floods. Distinct clients are
distinct loopback source addresses (127.0.0.2, 127.0.0.3, ...), which is what the server sees
as the client's address; every request is written on a raw socket, so that headers can repeat
and requests can stop halfway.

While an attack runs, a thread samples the RSS of the server and its worker processes from
/proc, and another asks GET /api/health every 100 ms. It prints a markdown table, one row per
attack: requests, statuses (`413x5 timeout x1`), the slowest answer, the server's RSS at the
start and at the peak, health latency meanwhile, and notes (the vote-poisoning figures among
them). A server that dies is reported and started again for the next attack.
Decode bombs come from tests/support/hostile_files.py's `bombs()`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from support.hostile_files import Case, bombs, encode  # noqa: E402

API_KEY = "attack-bench-key"
HEALTH_EVERY = 0.1  # seconds between health probes during an attack
SAMPLE_EVERY = 0.05  # seconds between memory samples
FEEDBACK_CACHE_SECONDS = 1  # the server's cache of others' votes, so that a visitor sees them soon
PAGE = 12  # a visitor's first page
MEMORY, TIME = 0, 1  # the costs of a bomb


# ---------------------------------------------------------------------------------------------
# Raw HTTP on loopback, from a chosen source address


@dataclass
class Reply:
    status: int | str  # the HTTP status, or what happened instead: timeout, reset, closed
    seconds: float
    raw: bytes = b""

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def has_json_detail(self) -> bool:
        reply = self.json()
        return isinstance(reply, dict) and "detail" in reply


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] = (),
    host: str = "127.0.0.1",
) -> bytes:
    """A complete HTTP/1.1 request, headers in the order given (repeats allowed)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def connect(port: int, source: str, timeout: float) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def exchange(port: int, request: bytes, source: str, timeout: float) -> Reply:
    """Send `request` and read the answer, all within `timeout` seconds."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        with connect(port, source, timeout) as sock:
            # The server may answer (413) before reading everything: read its answer anyway.
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            raw = read_response(sock, deadline)
    except TimeoutError:
        return Reply("timeout", time.perf_counter() - started)
    except ConnectionRefusedError:
        return Reply("refused", time.perf_counter() - started)
    except ConnectionError:
        return Reply("reset", time.perf_counter() - started)
    return Reply(parse_status(raw), time.perf_counter() - started, raw)


def read_response(sock: socket.socket, deadline: float) -> bytes:
    """One answer: up to the end of its Content-Length, else until the server closes."""
    data = bytearray()
    expected = None  # the whole answer's size, once its headers are in
    while expected is None or len(data) < expected:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        end = data.find(b"\r\n\r\n")
        if expected is None and end >= 0:
            length = re.search(rb"(?im)^content-length:\s*(\d+)", data[:end])
            expected = end + 4 + int(length.group(1)) if length else float("inf")
    return bytes(data)


def parse_status(raw: bytes) -> int | str:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(match.group(1)) if match else "closed"


def multipart(fields: dict[str, str], file: tuple[str, bytes]) -> tuple[str, bytes]:
    """(content type, body) of a form with text fields and one file named `file`."""
    boundary = "attack-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    name, data = file
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def json_post(path: str, body: bytes | dict, headers: list[tuple[str, str]] = ()) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http_request("POST", path, data, [("Content-Type", "application/json"), *headers])


# ---------------------------------------------------------------------------------------------
# The server and what it costs


@dataclass
class Server:
    """`imgsearch serve` in a process group of its own, with any worker processes it starts."""

    process: subprocess.Popen
    port: int
    data_dir: Path
    log: Path
    memory_cap: int  # bytes: each process's address space, and all their RSS together
    killed: str | None = None  # why the bench killed it

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, reason: str) -> None:
        self.killed = reason
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def death(self) -> str:
        if self.killed:
            return f"server killed by the bench: {self.killed}"
        code = self.process.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        last = self.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return f"server died ({how}): {last[0][:120]}"

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill("it did not stop within 20 s")
        with suppress(ProcessLookupError):  # workers left behind
            os.killpg(self.pid, signal.SIGKILL)


def imgsearch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgsearch.cli", *args]


def server_environment(src: Path | None = None) -> dict[str, str]:
    """The server's environment: the bench's key, a short vote cache, and the code under `src`
    if given."""
    code = {"PYTHONPATH": str(src)} if src else {}
    return {
        **os.environ,
        **code,
        "IMGSEARCH_API_KEY": API_KEY,
        "IMGSEARCH_FEEDBACK_CACHE_SECONDS": str(FEEDBACK_CACHE_SECONDS),
    }


def ingest_demo(data_dir: Path, photos_per_category: int | None, src: Path | None) -> None:
    """The demo photos (or the first few of each category) ingested into `data_dir`."""
    with tempfile.TemporaryDirectory() as scratch:
        source = DEMO
        if photos_per_category is not None:
            source = Path(scratch) / "demo"
            for category in sorted(p for p in DEMO.iterdir() if p.is_dir()):
                (source / category.name).mkdir(parents=True)
                for photo in sorted(category.glob("*.jpg"))[:photos_per_category]:
                    shutil.copy(photo, source / category.name / photo.name)
        command = imgsearch_command("ingest", str(source), "--data-dir", str(data_dir), "-q")
        subprocess.run(command, check=True, env=server_environment(src), stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(data_dir: Path, memory_cap: int, log: Path, src: Path | None) -> Server:
    def cap_memory() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))

    port = free_port()
    command = imgsearch_command("serve", "--data-dir", str(data_dir), "--port", str(port))
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            env=server_environment(src),
            stdout=output,
            stderr=output,
            preexec_fn=cap_memory,
            start_new_session=True,
        )
    server = Server(process, port, data_dir, log, memory_cap)
    for _ in range(1200):
        if not server.alive():
            raise SystemExit(server.death())
        if exchange(port, http_request("GET", "/api/health"), "127.0.0.1", 2).status == 200:
            return server
        time.sleep(0.1)
    server.stop()
    raise SystemExit("the server did not start within 2 minutes")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM ... of a process, in kB ({} once it is gone)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server may decode in worker processes)."""
    tree = [pid]
    for parent in tree:
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with suppress(OSError):
                tree += [int(child) for child in children.read_text().split()]
    return tree


def tree_rss_kb(pid: int) -> int:
    return sum(proc_status(member).get("VmRSS", 0) for member in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    """CPU time used by `pid` and its live descendants."""
    ticks = 0
    for member in process_tree(pid):
        with suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


class Background(threading.Thread):
    """Something done every `every` seconds until stopped."""

    def __init__(self, every: float) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.tick()
            self.stopped.wait(self.every)

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopped.set()
        self.join()


class MemorySampler(Background):
    """Peak resident memory of the server and its worker processes while it runs: the most
    their VmRSS added up to in a sample, or the server's own VmHWM (which also catches peaks
    between samples, once reset for this attack; Linux 4.0+) if that is more. Kills the server
    if they add up to more than its memory cap (RLIMIT_AS bounds each process, not the sum)."""

    def __init__(self, server: Server) -> None:
        super().__init__(SAMPLE_EVERY)
        self.server = server
        pid = self.pid = server.pid
        self.high_water_mark = "VmHWM"
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            self.high_water_mark = "VmRSS"
        self.start_kb = tree_rss_kb(pid)
        self.peak_kb = self.start_kb

    def tick(self) -> None:
        own_peak = proc_status(self.pid).get(self.high_water_mark, 0)
        total = tree_rss_kb(self.pid)
        self.peak_kb = max(self.peak_kb, total, own_peak)
        if total * 1024 > self.server.memory_cap and self.server.alive():
            self.server.kill(f"its processes held {total / 1024:,.0f} MB, over the cap")

    def stop(self) -> None:
        super().stop()
        self.tick()


class HealthProbe(Background):
    """GET /api/health every 100 ms: its latencies, and the answers other than 200."""

    def __init__(self, port: int, timeout: float) -> None:
        super().__init__(HEALTH_EVERY)
        self.port = port
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: Counter = Counter()

    def tick(self) -> None:
        reply = exchange(self.port, http_request("GET", "/api/health"), "127.0.0.1", self.timeout)
        self.latencies.append(reply.seconds * 1000)
        if reply.status != 200:
            self.failures[reply.status] += 1


# ---------------------------------------------------------------------------------------------
# Attacks


@dataclass
class Target:
    """What an attack is given: the server, fresh client addresses, and its bounds."""

    server: Server
    quick: bool
    timeout: float  # per request
    hold: float  # how long slow and idle connections are kept trying
    bombs: list[Case]
    # What each bomb cost when sent alone, by name: (MB of RSS added at the peak, ms).
    bomb_costs: dict[str, tuple[float, float]] = field(default_factory=dict)
    _addresses: Iterator[str] = field(default_factory=lambda: loopback_addresses())

    @property
    def port(self) -> int:
        return self.server.port

    def address(self) -> str:
        """A loopback address no client used before: a new, distinct client."""
        return next(self._addresses)

    def send(
        self, request: bytes, source: str | None = None, timeout: float | None = None
    ) -> Reply:
        """The server's answer to `request` from `source`, or from a new client."""
        return exchange(self.port, request, source or self.address(), timeout or self.timeout)

    def costliest_bomb(self, cost: int) -> Case:
        """The bomb that cost most (0: memory, 1: time) alone; the first one if none ran."""
        if not self.bomb_costs:
            return self.bombs[0]
        name = max(self.bomb_costs, key=lambda n: self.bomb_costs[n][cost])
        return next(case for case in self.bombs if case.name == name)


def loopback_addresses() -> Iterator[str]:
    for second in range(256):
        for third in range(256):
            for fourth in range(2 if second == third == 0 else 1, 255):
                yield f"127.{second}.{third}.{fourth}"


@dataclass
class Outcome:
    statuses: Counter = field(default_factory=Counter)
    worst_ms: float = 0.0
    notes: list[str] = field(default_factory=list)

    def record(self, reply: Reply) -> Reply:
        self.statuses[reply.status] += 1
        self.worst_ms = max(self.worst_ms, reply.seconds * 1000)
        return reply

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def search_image(case: Case) -> bytes:
    content_type, body = multipart({"limit": "5"}, (case.name, case.data))
    return http_request("POST", "/api/search/image", body, [("Content-Type", content_type)])


def attack_bomb(target: Target, case: Case) -> Outcome:
    outcome = Outcome()
    reply = outcome.record(target.send(search_image(case)))
    detail = reply.json().get("detail") if reply.has_json_detail() else None
    expected = case.refusal or "decoded within bounds"
    outcome.notes.append(f"{len(case.data):,} bytes; expected: {expected}")
    if detail:
        outcome.notes.append(f"said: {str(detail)[:60]}")
    return outcome


def attack_six_bombs(target: Target) -> Outcome:
    case = target.costliest_bomb(MEMORY)
    outcome = Outcome()
    replies = in_parallel([lambda: target.send(search_image(case))] * 6)
    for reply in replies:
        outcome.record(reply)
    outcome.notes.append(f"6 x {case.name} at once")
    return outcome


def attack_bomb_then_leave(target: Target) -> Outcome:
    """Send the slowest bomb, close the socket at once, and watch the server's CPU after."""
    case = target.costliest_bomb(TIME)
    outcome = Outcome()
    pid = target.server.pid
    with connect(target.port, target.address(), target.timeout) as sock:
        sock.sendall(search_image(case))
    outcome.statuses["left"] += 1
    before = cpu_seconds(pid)
    watch = min(target.timeout, 3 if target.quick else 15)
    time.sleep(watch)
    outcome.notes.append(
        f"{case.name}: server CPU {cpu_seconds(pid) - before:.1f} s in the {watch:.0f} s "
        "after the client left"
    )
    return outcome


def attack_repeated_content_type(target: Target) -> Outcome:
    """JSON of 24 MB under two Content-Types: the limit may read one, the parser the other."""
    megabytes = 4 if target.quick else 24
    body = b"[" + b"0," * (megabytes * 512 * 1024 - 1) + b"0]"
    outcome = Outcome(notes=[f"{len(body) / 1e6:.0f} MB JSON"])
    for label, types in (
        ("JSON type first", ["application/json", "multipart/form-data; boundary=x"]),
        ("form type first", ["multipart/form-data; boundary=x", "application/json"]),
    ):
        headers = [("Content-Type", kind) for kind in types]
        reply = outcome.record(target.send(http_request("POST", "/api/feedback", body, headers)))
        outcome.notes.append(
            f"{label}: {reply.status} after {reply.seconds:.1f} s, {len(reply.body):,} B back"
        )
    return outcome


def labelled(outcome: Outcome, label: str, reply: Reply) -> None:
    """Record `reply`, noting its status under `label` and whether a refusal was JSON."""
    outcome.record(reply)
    plain = isinstance(reply.status, int) and reply.status >= 400 and not reply.has_json_detail()
    slow = f" after {reply.seconds:.1f} s" if reply.seconds >= 1 else ""
    outcome.notes.append(f"{label} {reply.status}{slow}" + (" (no JSON detail)" if plain else ""))


def attack_json_values(target: Target) -> Outcome:
    """Votes whose fields hold what JSON parsers accept but no vote means."""
    image_id = first_page(target, "elephant", target.address())[0]
    vote = '{"query": %s, "image_id": "%s", "vote": %s, "session": %s}'
    bodies = {
        value: vote % ('"elephant"', image_id, value, '"s1"')
        for value in ("NaN", "Infinity", "-Infinity", "1e999")
    }
    bodies["query surrogate"] = vote % ('"\\ud800"', image_id, "1", '"s1"')
    bodies["session surrogate"] = vote % ('"elephant"', image_id, "1", '"\\udfff"')
    outcome = Outcome()
    source = target.address()
    for label, body in bodies.items():
        labelled(outcome, label, target.send(json_post("/api/feedback", body.encode()), source))
    search = http_request("GET", "/api/search?q=%ED%A0%80")  # a surrogate's UTF-8 bytes
    labelled(outcome, "search surrogate", target.send(search, source))
    return outcome


def attack_oversized_bodies(target: Target) -> Outcome:
    outcome = Outcome()
    big_json = b'{"query": "' + b"a" * 1_000_000 + b'"}'
    labelled(outcome, "1 MB JSON", target.send(json_post("/api/feedback", big_json)))
    chunked = http_request(
        "POST",
        "/api/feedback",
        headers=[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
    ).replace(b"Content-Length: 0\r\n", b"")
    chunk = b"a" * 65536
    chunked += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 16 + b"0\r\n\r\n"
    labelled(outcome, "1 MB chunked JSON", target.send(chunked))
    content_type, form = multipart({}, ("big.jpg", b"\xff" * 30 * 1024 * 1024))
    request = http_request("POST", "/api/search/image", form, [("Content-Type", content_type)])
    labelled(outcome, "30 MB form", target.send(request))
    return outcome


def attack_body_after_413(target: Target) -> Outcome:
    """A 100 MB vote whose client goes on sending after the 413: how long does the server take
    its bytes? (`target.hold` at most.)"""
    outcome = Outcome()
    request = json_post("/api/feedback", b"").replace(
        b"Content-Length: 0", b"Content-Length: 100000000"
    )
    started = time.monotonic()
    status, sent, ended = None, 0, None  # ended: when the server closed its side
    with connect(target.port, target.address(), target.timeout) as sock:
        sock.sendall(request)
        sock.setblocking(False)
        while time.monotonic() - started < target.hold:
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                answer = None
            except OSError:
                break
            if answer == b"" and ended is None:
                ended = time.monotonic() - started
            if answer and status is None:
                status = parse_status(answer)
                outcome.worst_ms = (time.monotonic() - started) * 1000
            try:
                sent += sock.send(bytes(64 * 1024))
            except BlockingIOError:
                pass
            except OSError:  # reset: the server no longer takes the bytes
                break
            time.sleep(0.05)
    seconds = time.monotonic() - started
    outcome.statuses[status or "no answer"] += 1
    taken = "stopped taking them" if seconds < target.hold else "still took them"
    closed = f", closed its side after {ended:.1f} s" if ended is not None else ""
    outcome.notes.append(
        f"answered after {outcome.worst_ms / 1000:.1f} s{closed}; the client sent on "
        f"{sent / 1e6:.1f} MB, the server {taken} after {seconds:.1f} s"
    )
    return outcome


MALFORMED_REQUESTS = {
    "garbage line": b"GARBAGE\r\n\r\n",
    "HTTP/9.9": b"GET /api/health HTTP/9.9\r\nHost: x\r\n\r\n",
    "NUL in path": b"GET /api/he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n",
    "100 KB path": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "5000 headers": b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 5000 + b"\r\n",
    "300 KB header": b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 300_000
    + b"\r\n\r\n",
    "length + chunked": b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 7\r\n\r\n",
}


def attack_malformed_requests(target: Target) -> Outcome:
    outcome = Outcome()
    source = target.address()
    for label, request in MALFORMED_REQUESTS.items():
        labelled(outcome, label, target.send(request, source))
    return outcome


def attack_host_spoofing(target: Target) -> Outcome:
    outcome = Outcome()
    spoofed = 0
    for host in ("evil.example", "evil.example:8000", "127.0.0.1@evil.example"):
        request = http_request("GET", "/api/search?q=elephant&limit=3", host=host)
        reply = outcome.record(target.send(request))
        spoofed += b"evil.example" in reply.body
    outcome.notes.append(f"result URLs on the spoofed host in {spoofed}/3 answers")
    return outcome


def hold_connections(
    target: Target,
    count: int,
    opening: bytes,
    trickle: bytes,
    while_held: Callable[[], str] | None = None,
    source: str | None = None,
) -> Outcome:
    """Open `count` connections (from `source`, else each from an address of its own), send
    `opening`, then one byte of `trickle` per second each, for `target.hold` seconds: when
    does the server close them? `while_held` notes something about the server before the
    connections still open close."""
    outcome = Outcome()
    started = time.monotonic()
    sockets = {}
    for _ in range(count):
        try:
            sock = connect(target.port, source or target.address(), target.timeout)
            sock.sendall(opening)
            sock.setblocking(False)
            sockets[sock] = 0
        except OSError as error:
            outcome.statuses[f"refused ({type(error).__name__})"] += 1
    closed_after: list[float] = []
    while sockets and time.monotonic() - started < target.hold:
        time.sleep(1)
        for sock in list(sockets):
            sent = sockets[sock]
            status = poll_closed(sock, trickle[sent % len(trickle) :][:1] if trickle else b"")
            sockets[sock] = sent + 1
            if status is not None:
                outcome.statuses[status] += 1
                closed_after.append(time.monotonic() - started)
                sock.close()
                del sockets[sock]
    if sockets:
        outcome.statuses[f"open after {target.hold:.0f} s"] += len(sockets)
    if while_held is not None:
        outcome.notes.append(while_held())
    for sock in sockets:
        sock.close()
    # The worst: the longest the server kept a connection.
    outcome.worst_ms = (target.hold if sockets else max(closed_after, default=0)) * 1000
    if closed_after:
        outcome.notes.append(f"closed after {statistics.median(closed_after):.0f} s (median)")
    return outcome


def poll_closed(sock: socket.socket, byte: bytes) -> int | str | None:
    """None while the server keeps the connection; else its status, or 'closed'."""
    readable, _, _ = select.select([sock], [], [], 0)
    try:
        if readable:
            data = sock.recv(65536)
            return parse_status(data) if data else "closed"
        if byte:
            sock.send(byte)
    except OSError:
        return "reset"
    return None


def attack_slowloris(target: Target) -> Outcome:
    count = 5 if target.quick else 50
    opening = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    outcome = hold_connections(target, count, opening, b"X-Slow: " + b"a" * 1000)
    outcome.notes.append(f"{count} connections, a header byte a second")
    return outcome


def attack_half_sent_bodies(target: Target) -> Outcome:
    """Uploads that stop halfway, past the size at which forms spill to a temporary file."""
    count = 3 if target.quick else 20
    content_type, form = multipart({}, ("half.jpg", b"\xff" * 3 * 1024 * 1024))
    request = http_request("POST", "/api/search/image", form, [("Content-Type", content_type)])
    opening = request[: len(request) // 2]

    def temporary_files() -> str:
        files, size = held_temporary_files(target.server)
        return f"meanwhile the server holds {files} temporary files, {size / 1e6:.0f} MB"

    outcome = hold_connections(target, count, opening, b"\xff", temporary_files)
    outcome.notes.insert(0, f"{count} x 1.5 of 3 MB sent")
    time.sleep(1)
    outcome.notes.append(f"1 s after they left: {temporary_files().partition('holds ')[2]}")
    return outcome


def held_temporary_files(server: Server) -> tuple[int, int]:
    """(count, bytes) of the files the server holds open in the temporary directory, outside
    its collection's (the bodies it spooled)."""
    files = size = 0
    for fd in Path(f"/proc/{server.pid}/fd").iterdir():
        with suppress(OSError):
            link = os.readlink(fd)
            if link.startswith(tempfile.gettempdir()) and not link.startswith(str(server.data_dir)):
                files += 1
                size += fd.stat().st_size
    return files, size


def attack_idle_connections(target: Target) -> Outcome:
    count = 20 if target.quick else 500
    outcome = hold_connections(target, count, b"", b"")
    outcome.notes.append(f"{count} connections that send nothing, from {count} addresses")
    return outcome


def attack_idle_connections_one_address(target: Target) -> Outcome:
    count = 40 if target.quick else 100
    outcome = hold_connections(target, count, b"", b"", source=target.address())
    outcome.notes.append(f"{count} connections that send nothing, from one address")
    return outcome


ANSWER_SECONDS = 10  # the server's `http_answer_seconds`
LARGE_ORIGINAL_SIDE = 2400  # a noise JPEG this wide (4:3) weighs about 8 MB


def upload_large_original(target: Target) -> str:
    """The id of a large photo uploaded with the bench's key (noise compresses badly)."""
    rng = np.random.default_rng(19)
    side = LARGE_ORIGINAL_SIDE
    pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(pixels), "JPEG", quality=97)
    content_type, form = multipart({"key": "attack/large.jpg"}, ("large.jpg", jpeg))
    headers = [("Content-Type", content_type), ("X-API-Key", API_KEY)]
    reply = target.send(http_request("POST", "/api/images", form, headers), timeout=120)
    if reply.status != 201:
        raise RuntimeError(f"the large upload answered {reply.status}: {reply.body[:200]!r}")
    return str(reply.json()["id"])  # type: ignore[index]


def attack_slow_readers(target: Target) -> Outcome:
    """Connections from one address asking a large original and reading nothing: held to the
    address's bound, and dropped with their unsent bytes once they take nothing for the
    answer deadline."""
    image_id = upload_large_original(target)
    count = 60 if target.quick else 300
    source = target.address()
    request = http_request("GET", f"/api/images/{image_id}/file")
    outcome = Outcome()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes almost nothing
        sock.settimeout(target.timeout)
        try:
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", target.port))
            sock.sendall(request)
        except OSError as error:
            outcome.statuses[f"refused ({type(error).__name__})"] += 1
            sock.close()
            continue
        sockets.append(sock)
    time.sleep(ANSWER_SECONDS + 3)
    for sock in sockets:  # what each got, read only now: the server had to hold or drop it
        sock.setblocking(False)
        raw, ending = bytearray(), "still open"
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    ending = "closed"
                    break
                raw += data
        except BlockingIOError:
            pass
        except ConnectionError:
            ending = "reset"
        status = parse_status(bytes(raw)) if raw else "nothing"
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        declared = re.search(rb"(?im)^content-length: *(\d+)", head)
        if status == 200 and declared and len(body) < int(declared[1]):
            ending += ", answer cut"  # the server dropped what the client had not taken
        outcome.statuses[f"{status} {ending}" if status != 503 else 503] += 1
        sock.close()
    outcome.worst_ms = (ANSWER_SECONDS + 3) * 1000
    outcome.notes.append(
        f"{count} connections from one address asking an {LARGE_ORIGINAL_SIDE}-px noise "
        f"original and reading nothing; read {ANSWER_SECONDS + 3} s later"
    )
    return outcome


def first_page(target: Target, word: str, source: str, session: str | None = None) -> list[str]:
    """The ids on the first page a visitor (`session`, or none) gets for `word`."""
    path = f"/api/search?q={word}&limit={PAGE}" + (f"&session={session}" if session else "")
    reply = target.send(http_request("GET", path), source)
    if reply.status != 200:
        raise RuntimeError(f"search for {word} answered {reply.status}: {reply.body[:200]!r}")
    return [result["id"] for result in reply.json()["results"]]


def page_keys(target: Target, word: str) -> list[str]:
    reply = target.send(http_request("GET", f"/api/search?q={word}&limit={PAGE}"))
    return [result["key"] for result in reply.json()["results"]]


def vote(target: Target, source: str, word: str, image_id: str, value: int, session: str) -> Reply:
    body = {"query": word, "image_id": image_id, "vote": value, "session": session}
    return target.send(json_post("/api/feedback", body), source)


def attack_poison_one_address(target: Target) -> Outcome:
    """40 invented sessions from one address vote a word's first page down and pizzas up."""
    word, sessions, pushed = "elephant", 40, 3
    before = first_page(target, word, target.address(), "visitor-before")
    pizzas = [r["id"] for r in search_results(target, "pizza") if r["key"].startswith("pizza/")]
    votes = [(image_id, -1) for image_id in before] + [(p, 1) for p in pizzas[:pushed]]
    outcome = Outcome()
    attacker = target.address()
    wait_for_a_new_minute()
    for number in range(sessions):
        for image_id, value in votes:
            outcome.record(vote(target, attacker, word, image_id, value, f"poison{number}"))
    time.sleep(FEEDBACK_CACHE_SECONDS + 1)
    after = first_page(target, word, target.address(), "visitor-after")
    kept = len(set(before) & set(after))
    own = first_page(target, word, attacker, "poison0")
    outcome.notes.append(
        f"{sessions} sessions x ({len(before)} down, {pushed} pizzas up); a fresh visitor keeps "
        f"{kept}/{len(before)} of the '{word}' page, sees {len(set(pizzas) & set(after))} pizzas;"
        f" the attacker's own session keeps {len(set(before) & set(own))}, sees "
        f"{len(set(pizzas) & set(own))} pizzas"
    )
    return outcome


def wait_for_a_new_minute(needed: float = 15) -> None:
    """Vote limits count per clock minute: start a flood where it cannot straddle two."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.1)


def addresses_agree(target: Target, clients: int, word: str) -> Outcome:
    """`clients` addresses vote the same few lotus photos for `word`, which nobody knew."""
    category, voted_count = "lotus/", 4
    lotus = [r for r in search_results(target, "lotus") if r["key"].startswith(category)]
    voted = [r["id"] for r in lotus[:voted_count]]
    before = [key for key in page_keys(target, word) if key.startswith(category)]
    outcome = Outcome()
    for number in range(clients):
        voter = target.address()
        for image_id in voted:
            outcome.record(vote(target, voter, word, image_id, 1, f"agree{number}"))
    time.sleep(FEEDBACK_CACHE_SECONDS + 1)
    after_ids = first_page(target, word, target.address(), "visitor-fresh")
    after = [key for key in page_keys(target, word) if key.startswith(category)]
    shown = len(set(voted) & set(after_ids))
    outcome.notes.append(
        f"'{word}': voted photos on a fresh page {shown}/{len(voted)}; lotus photos "
        f"{len(before)}/{PAGE} before, {len(after)}/{PAGE} after"
    )
    return outcome


def attack_two_addresses_agree(target: Target) -> Outcome:
    return addresses_agree(target, 2, "shimmerleaf")


def attack_three_addresses_agree(target: Target) -> Outcome:
    return addresses_agree(target, 3, "glimmerfrond")


def search_results(target: Target, word: str) -> list[dict]:
    reply = target.send(http_request("GET", f"/api/search?q={word}&limit=50"))
    return reply.json()["results"]


def flood(target: Target, votes: int, session_of: Callable[[int], str], xff: bool) -> Outcome:
    """`votes` votes from one address, as fast as answers come; 429s are counted."""
    images = first_page(target, "zebra", target.address())
    attacker = target.address()
    outcome = Outcome()
    first_refusal = None
    wait_for_a_new_minute()
    for number in range(votes):
        body = {
            "query": "zebra",
            "image_id": images[number % len(images)],
            "vote": 1 if number % 2 else -1,
            "session": session_of(number),
        }
        headers = [("X-Forwarded-For", f"10.{number // 250}.{number % 250}.1")] if xff else []
        reply = outcome.record(target.send(json_post("/api/feedback", body, headers), attacker))
        if reply.status == 429 and first_refusal is None:
            first_refusal = number + 1
    outcome.notes.append(f"first 429 at vote {first_refusal}")
    return outcome


def attack_flood_one_session(target: Target) -> Outcome:
    return flood(target, 150, lambda n: "flood-session", xff=False)


def attack_flood_one_address(target: Target) -> Outcome:
    outcome = flood(target, 650, lambda n: f"flood{n // 10}", xff=False)
    outcome.notes.append("sessions of 10 votes each")
    return outcome


def attack_flood_forwarded_for(target: Target) -> Outcome:
    outcome = flood(target, 650, lambda n: f"xff{n // 10}", xff=True)
    outcome.notes.append("each vote claims another X-Forwarded-For")
    return outcome


def in_parallel(calls: list[Callable[[], Reply]]) -> list[Reply]:
    replies: list[Reply] = []
    threads = [threading.Thread(target=lambda c=c: replies.append(c())) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Target], Outcome]


ATTACKS = [
    Attack("6 bombs at once", attack_six_bombs),
    Attack("bomb, client leaves", attack_bomb_then_leave),
    Attack("2 Content-Types, 24 MB JSON", attack_repeated_content_type),
    Attack("NaN/Infinity/1e999/surrogate", attack_json_values),
    Attack("oversized bodies", attack_oversized_bodies),
    Attack("body sent on after its 413", attack_body_after_413),
    Attack("malformed requests", attack_malformed_requests),
    Attack("Host spoofing", attack_host_spoofing),
    Attack("slowloris", attack_slowloris),
    Attack("half-sent bodies", attack_half_sent_bodies),
    Attack("idle connections", attack_idle_connections),
    Attack("idle connections, 1 address", attack_idle_connections_one_address),
    Attack("slow readers, 1 address", attack_slow_readers),
    Attack("poison: 40 sessions, 1 address", attack_poison_one_address),
    Attack("agree: 2 addresses, new word", attack_two_addresses_agree),
    Attack("agree: 3 addresses, new word", attack_three_addresses_agree),
    Attack("flood: 1 session", attack_flood_one_session),
    Attack("flood: 1 address", attack_flood_one_address),
    Attack("flood: X-Forwarded-For", attack_flood_forwarded_for),
]


def bomb_attacks(cases: list[Case]) -> list[Attack]:
    return [Attack(f"bomb {case.name}", lambda t, c=case: attack_bomb(t, c)) for case in cases]


# ---------------------------------------------------------------------------------------------
# Running and reporting


COLUMNS = [
    "attack",
    "requests",
    "statuses",
    "worst ms",
    "RSS MB start / peak",
    "health p50 / max ms",
    "notes",
]


@dataclass
class Row:
    name: str
    outcome: Outcome
    start_mb: float
    peak_mb: float
    health_ms: list[float]
    health_failures: Counter


def run_attack(attack: Attack, target: Target) -> Row:
    memory = MemorySampler(target.server)
    health = HealthProbe(target.port, timeout=5)
    memory.start()
    health.start()
    try:
        outcome = attack.run(target)
    except Exception as error:  # an attack that cannot go on says why, in its row
        outcome = Outcome(notes=[f"attack failed: {error!r}"[:160]])
    health.stop()
    memory.stop()
    start_mb, peak_mb = memory.start_kb / 1024, memory.peak_kb / 1024
    return Row(attack.name, outcome, start_mb, peak_mb, health.latencies, health.failures)


def format_statuses(statuses: Counter) -> str:
    """`413x5 timeout x1`: HTTP statuses, then what happened instead of an answer."""
    ordered = sorted(statuses.items(), key=lambda item: (isinstance(item[0], str), str(item[0])))
    return " ".join(
        f"{status}x{count}" if isinstance(status, int) else f"{status} x{count}"
        for status, count in ordered
    )


def format_row(row: Row) -> str:
    health = row.health_ms or [0.0]
    notes = "; ".join(row.outcome.notes)
    if row.health_failures:
        failed = f"{row.health_failures.total()}/{len(row.health_ms)}"
        notes += f"; health failed {failed} ({format_statuses(row.health_failures)})"
    return (
        f"| {row.name} | {row.outcome.requests} | {format_statuses(row.outcome.statuses)} "
        f"| {row.outcome.worst_ms:.0f} | {row.start_mb:.0f} / {row.peak_mb:.0f} "
        f"| {statistics.median(health):.0f} / {max(health):.0f} | {notes} |"
    )


def selected(attacks: list[Attack], only: str | None) -> list[Attack]:
    if only:
        attacks = [a for a in attacks if re.search(only, a.name, re.IGNORECASE)]
    return attacks


def prepare_collection(args: argparse.Namespace, scratch: Path) -> Path:
    """A scratch copy of the ingested collection (ingested first if `--data-dir` has none):
    every run starts from the same votes, none."""
    cache = args.data_dir or scratch / "ingested"
    if not (cache / "tables.sqlite3").exists():
        print(f"ingesting the demo into {cache} ...", file=sys.stderr)
        ingest_demo(cache, args.photos, args.src)
    working = scratch / "data"
    shutil.copytree(cache, working)
    (working / "api-key").unlink(missing_ok=True)
    return working


def run(args: argparse.Namespace, attacks: list[Attack], scratch: Path) -> tuple[list[Row], str]:
    """The rows of the attacks run, and how big the server was when it had started."""
    data_dir = prepare_collection(args, scratch)
    cap = int(args.memory_cap_gb * 1024**3)
    log = scratch / "server.log"
    cases = bombs()[:1] if args.quick else bombs()
    target = Target(
        server=start_server(data_dir, cap, log, args.src),
        quick=args.quick,
        timeout=args.timeout,
        hold=args.hold,
        bombs=cases,
    )
    status = proc_status(target.server.pid)
    started = f"RSS {status['VmRSS'] / 1024:.0f} MB, address space {status['VmSize'] / 1024:.0f} MB"
    started += f", {len(process_tree(target.server.pid))} processes"
    rows = []
    try:
        for attack in [*selected(bomb_attacks(cases), args.only), *attacks]:
            row = run_attack(attack, target)
            remember_bomb_costs(target, attack, row)
            if not target.server.alive():
                row.outcome.notes.append(target.server.death())
                target.server = start_server(data_dir, cap, log, args.src)
            rows.append(row)
            print(format_row(row), file=sys.stderr)
    finally:
        target.server.stop()
    return rows, started


def remember_bomb_costs(target: Target, attack: Attack, row: Row) -> None:
    """What a bomb alone cost, to pick the bombs later attacks send (six at once, leaving)."""
    for case in target.bombs:
        if attack.name == f"bomb {case.name}":
            target.bomb_costs[case.name] = (row.peak_mb - row.start_mb, row.outcome.worst_ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, help="keep the ingested demo here and reuse it next time"
    )
    parser.add_argument(
        "--src", type=Path, help="serve the code under this src directory (default: this one's)"
    )
    parser.add_argument("--photos", type=int, help="ingest only this many photos per category")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller, shorter attacks")
    parser.add_argument("--only", help="only the attacks whose names match this regex: bomb|flood")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    parser.add_argument("--hold", type=float, help="seconds slow and idle connections try")
    parser.add_argument(
        "--memory-cap-gb", type=float, default=4, help="the server's memory, all processes"
    )
    args = parser.parse_args()
    if args.hold is None:
        args.hold = 4 if args.quick else 30
    if args.quick:
        args.timeout = min(args.timeout, 20)
    attacks = selected(ATTACKS, args.only)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        rows, server_start = run(args, attacks, Path(scratch))
    code = args.src or REPO
    commit = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"imgsearch at {commit}, loopback, {time.monotonic() - started:.0f} s in all; the server "
        f"capped at {args.memory_cap_gb:g} GB, at start {server_start}"
    )
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print(format_row(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
