"""Session 19's probe: clients that ask for large answers and never read them, against a
running `imgsearch serve` (its pid given, for its memory, threads and descriptors).

    imgsearch ingest demo --data-dir D; imgsearch serve --data-dir D --port 8719 &
    (upload a large original with the API key, then:)
    PYTHONPATH=src .venv/bin/python bench/slow_readers.py --pid PID slow-readers \\
        --paths /api/images/ID/file --count 300 --per-address 300 --interval 0.05 \\
        --extra 'Connection: close\\r\\n'

Prints the server's RSS (peak too), threads and descriptors, how many connections it still
holds open after `--seconds`, and what a health probe from another address saw meanwhile.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from pathlib import Path

import attack  # the same directory: its raw HTTP and /proc readers


def rss_mb(pid: int) -> float:
    """The server's resident memory, its worker processes' included."""
    return attack.tree_rss_kb(pid) / 1024


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def connect(
    port: int, source: str = "127.0.0.1", rcvbuf: int | None = None, timeout: float | None = None
) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def request(
    port: int,
    path: str,
    source: str = "127.0.0.1",
    timeout: float = 5.0,
    method: str = "GET",
    headers: list[tuple[str, str]] = (),
    body: bytes = b"",
) -> tuple[int, float, bytes]:
    """One request on a fresh connection: (status, seconds, body); status 0 on failure."""
    start = time.monotonic()
    try:
        stage = "connect"
        s = connect(port, source, timeout=timeout)
        stage = "answer"
        s.sendall(attack.http_request(method, path, body, headers))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
    except OSError as error:
        return 0, time.monotonic() - start, f"{type(error).__name__} in {stage}".encode()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.monotonic() - start, data.partition(b"\r\n\r\n")[2]


class Prober(threading.Thread):
    """Asks `path` every `every` s from another address; records (status, seconds)."""

    def __init__(
        self, port: int, path: str = "/api/health", source: str = "127.0.0.250", every: float = 0.2
    ):
        super().__init__(daemon=True)
        self.port, self.path, self.source, self.every = port, path, source, every
        self.results: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, seconds, body = request(self.port, self.path, self.source)
            self.results.append((status, seconds))
            if not status:
                self.errors.append(f"{body.decode()} after {seconds:.1f} s")
            self.stop.wait(self.every)

    def summary(self) -> str:
        self.stop.set()
        self.join()
        ok = [s for st, s in self.results if st == 200]
        bad = [st for st, _ in self.results if st != 200]
        med = statistics.median(ok) * 1000 if ok else float("nan")
        top = max(ok) * 1000 if ok else float("nan")
        failed = f"{len(bad)} failed {sorted(set(bad))} {self.errors}"
        return f"{len(self.results)} probes, {failed}, p50 {med:.0f} ms, max {top:.0f} ms"


def slow_readers(args: argparse.Namespace) -> None:
    """Connections that ask for large answers and never read them."""
    pid = args.pid
    paths = args.paths.split(",")
    print(f"before: rss {rss_mb(pid):.0f} MB, threads {threads(pid)}, fds {fds(pid)}")
    prober = Prober(args.port, args.probe)
    prober.start()
    socks = []
    refused = 0
    for i in range(args.count):
        source = f"127.0.1.{2 + i // args.per_address}"
        try:
            s = connect(args.port, source, rcvbuf=4096)
            path = paths[i % len(paths)]
            extra = args.extra.replace("\\r\\n", "\r\n")
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode() * args.pipeline
            )
            socks.append(s)
            time.sleep(args.interval)
        except OSError:
            refused += 1
    print(f"opened {len(socks)} ({refused} failed)")
    start = time.monotonic()
    peak = 0.0
    while time.monotonic() - start < args.seconds:
        peak = max(peak, rss_mb(pid))
        time.sleep(0.5)
    rss = f"rss {rss_mb(pid):.0f} MB (peak {peak:.0f})"
    print(f"after {args.seconds} s: {rss}, threads {threads(pid)}, fds {fds(pid)}")
    # Which of ours are still open (server did not close them)?
    still = 0
    for s in socks:
        s.setblocking(False)
        try:
            got = 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    print(f"still open (no EOF) after {args.seconds} s: {still} of {len(socks)}")
    # A fresh client now:
    for source in ("127.0.9.9", "127.0.9.10"):
        print("fresh client", source, request(args.port, "/api/health", source)[:2])
    print("prober:", prober.summary())
    for s in socks:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8719)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    sub = parser.add_subparsers(dest="attack", required=True)
    p = sub.add_parser("slow-readers")
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--paths", default="/docs-assets/swagger-ui-bundle.js")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--pipeline", type=int, default=1)
    p.add_argument("--per-address", type=int, default=30)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--probe", default="/api/health")
    p.add_argument("--extra", default="", help='header lines, e.g. "Connection: close\\r\\n"')
    args = parser.parse_args()
    {"slow-readers": slow_readers}[args.attack](args)


if __name__ == "__main__":
    main()
