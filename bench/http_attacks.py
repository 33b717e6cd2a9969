"""HTTP-level attacks on a running `imgsearch serve`, and what each gets.

    .venv/bin/python bench/http_attacks.py [--body-seconds 15]

Starts `imgsearch serve` on loopback with an empty data directory and the default HTTP
settings (except the body deadline, shortened so the run takes about a minute), then, one
after the other: a 24 MB body under two Content-Types, JSON with NaN and a lone surrogate,
malformed framing, 50 connections sending their headers a byte a second (slowloris), 20
uploads trickling in at 1 KB/s, 400 idle connections, and a body that goes on after its 413.
For each it prints the answers, the time to the last one, the server's memory (resident and
peak) and the worst latency of /api/health polled meanwhile by another client (another
loopback address).
Bounded: loopback only, fixed counts, every attack ends by its own deadline.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
ATTACKER = "127.0.0.1"  # loopback addresses are distinct clients to the server
BYSTANDER = "127.0.0.2"  # polls /api/health while the attacker attacks


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(data_dir: Path, port: int, body_seconds: float) -> subprocess.Popen:
    environment = {**os.environ, "IMGSEARCH_HTTP_BODY_SECONDS": str(body_seconds)}
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--data-dir", str(data_dir)]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env=environment,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            if request(port, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200:
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def connect(port: int, source: str = ATTACKER, timeout: float = 60) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))


def request(
    port: int, data: bytes, source: str = ATTACKER, timeout: float = 30
) -> tuple[int, bytes]:
    """Send `data` on a fresh connection (closed after the answer); the status and body."""
    with connect(port, source, timeout) as connection:
        if b"\r\nConnection:" not in data:
            data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        connection.sendall(data)
        return parse(read_all(connection))


def read_all(connection: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def parse(raw: bytes) -> tuple[int, bytes]:
    if not raw:
        return 0, b""  # closed without an answer
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def memory_mb(pid: int) -> tuple[float, float]:
    """The server's resident and peak resident memory, in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class HealthProbe:
    """Polls /api/health every 0.2 s on fresh connections from another address while an
    attack runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.worst = 0.0
        self.statuses: Counter = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                health = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
                status = request(self.port, health, BYSTANDER)[0]
            except OSError:
                status = 0
            self.worst = max(self.worst, time.perf_counter() - started)
            self.statuses[status] += 1
            self.stop.wait(0.2)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_attack(name: str, port: int, pid: int, attack: Callable[[], list[int]]) -> None:
    with HealthProbe(port) as health:
        started = time.perf_counter()
        statuses = attack()
        elapsed = time.perf_counter() - started
    rss, peak = memory_mb(pid)
    answers = ", ".join(f"{s or 'closed'}: {n}" for s, n in sorted(Counter(statuses).items()))
    polled = ", ".join(f"{s or 'failed'}: {n}" for s, n in sorted(health.statuses.items()))
    print(
        f"| {name} | {answers} | {elapsed:.1f} | {rss:.0f} / {peak:.0f} | "
        f"{health.worst * 1000:.0f} ({polled}) |",
        flush=True,
    )


def in_parallel(count: int, one: Callable[[int], int]) -> list[int]:
    results = [0] * count

    def run(index: int) -> None:
        try:
            results[index] = one(index)
        except OSError:
            results[index] = 0

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def repeated_content_type(port: int) -> list[int]:
    body = b'{"query": "' + b"x" * 24_000_000 + b'"}'
    head = (
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return [request(port, head + body)[0]]


def bad_json(port: int) -> list[int]:
    statuses = []
    for value in (b"NaN", b"1e999", b'"\\ud800"'):
        body = b'{"query": ' + value + b', "image_id": "0", "vote": 1, "session": "s"}'
        head = (
            b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        statuses.append(request(port, head + body)[0])
    return statuses


def bad_framing(port: int) -> list[int]:
    requests = [
        b"GARBAGE\r\n\r\n",
        b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
    ]
    return [request(port, data)[0] for data in requests]


def slowloris(port: int, connections: int = 50) -> list[int]:
    def one(_: int) -> int:
        with connect(port) as connection:
            for byte in b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break
                connection.settimeout(1.0)
                try:
                    if connection.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    continue
            connection.settimeout(60)
            return parse(read_all(connection))[0]

    return in_parallel(connections, one)


def slow_uploads(port: int, connections: int = 20) -> list[int]:
    head = (
        f"POST /api/search/image HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {25_000_000}\r\n\r\n"
    ).encode()
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'

    def one(_: int) -> int:
        with connect(port, timeout=300) as connection:
            connection.sendall(head + part)
            connection.settimeout(1.0)
            while True:
                try:
                    if connection.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    pass
                try:
                    connection.sendall(bytes(1024))
                except OSError:
                    break
            connection.settimeout(300)
            return parse(read_all(connection))[0]

    return in_parallel(connections, one)


def idle_connections(port: int, connections: int = 400) -> list[int]:
    opened = []
    for _ in range(connections):
        opened.append(connect(port))
    statuses = []
    for connection in opened:
        statuses.append(parse(read_all(connection))[0])
        connection.close()
    return statuses


def body_after_413(port: int) -> list[int]:
    head = b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    with connect(port, timeout=300) as connection:
        connection.sendall(head)
        connection.settimeout(0.5)
        status = 0
        while True:  # keep sending after the answer, as long as the server takes it
            try:
                connection.sendall(bytes(64 * 1024))
                time.sleep(0.05)
            except OSError:
                break
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            status = status or parse(data)[0]
        return [status]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        server = start_server(Path(data_dir), port, args.body_seconds)
        try:
            print(f"server pid {server.pid}, body deadline {args.body_seconds:g} s")
            print(
                "| attack | answers | seconds | server MB (resident / peak) | "
                "worst health ms (answers) |"
            )
            print("|---|---|---|---|---|")
            attacks = [
                ("24 MB body, two Content-Types", repeated_content_type),
                ("NaN, 1e999, lone surrogate in a vote", bad_json),
                ("malformed framing (3 kinds)", bad_framing),
                ("50 slowloris header connections", slowloris),
                ("20 uploads at 1 KB/s", slow_uploads),
                ("400 idle connections", idle_connections),
                ("body sent on after its 413", body_after_413),
            ]
            for name, attack in attacks:
                run_attack(name, port, server.pid, lambda attack=attack: attack(port))
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
