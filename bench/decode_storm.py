"""Bombs at once against a real server: what they cost it, and whether it keeps answering.

Starts `imgsearch serve` on loopback (an empty collection: the reverse search decodes, then
finds nothing) with the code under --src, sends --clients reverse searches of one bomb of
`tests/hostile_files.bombs()` at once, --rounds times, and meanwhile asks GET /api/health
every 0.1 s. Prints the answers, the slowest request, the peak memory of the server with its
decode workers (RSS summed over the process tree, sampled every 20 ms, less what it held
before), and the slowest health answer. Bounded: the server's whole tree is killed if it
grows beyond --cap-mb, and requests time out after 120 s.

    .venv/bin/python bench/decode_storm.py --bomb float.tif                    # this code
    .venv/bin/python bench/decode_storm.py --bomb float.tif --src /work/main/src  # before
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hostile_files import bombs, encode, photo  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB."""
    total_kib, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total_kib += next(
                    int(line.split()[1]) for line in status if line.startswith("VmRSS")
                )
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except (OSError, StopIteration):
            continue  # exited meanwhile
    return total_kib / 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(src: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "IMGSEARCH_API_KEY": "bench"}
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--data-dir", str(data_dir)],
        env=env,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: killed whole
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/api/health", timeout=1).status_code == 200:
                return server, base
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the code to serve")
    parser.add_argument("--bomb", default="float.tif", help="a file name from bombs()")
    parser.add_argument("--clients", type=int, default=6, help="requests at once")
    parser.add_argument("--rounds", type=int, default=2, help="times the clients send it")
    parser.add_argument("--cap-mb", type=int, default=6144, help="kill the server beyond this")
    args = parser.parse_args()
    case = next(c for c in bombs() if c.name == args.bomb)

    with tempfile.TemporaryDirectory() as data_dir:
        server, base = start_server(args.src, Path(data_dir))
        try:
            # Warm: the model, and a decode worker if the code has them.
            warm = {"file": ("warm.jpg", encode(photo(), "JPEG"), "image/jpeg")}
            requests.post(f"{base}/api/search/image", files=warm, timeout=60)
            before = tree_rss_mb(server.pid)
            peak, health, answers, slowest = before, [], Counter(), 0.0
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, tree_rss_mb(server.pid))
                    if peak - before > args.cap_mb:
                        os.killpg(server.pid, signal.SIGKILL)
                        return
                    time.sleep(0.02)

            def watch_health() -> None:
                while not done.is_set():
                    started = time.monotonic()
                    with contextlib.suppress(requests.RequestException):
                        requests.get(f"{base}/api/health", timeout=30)
                    health.append(time.monotonic() - started)
                    time.sleep(0.1)

            def send() -> None:
                nonlocal slowest
                started = time.monotonic()
                files = {"file": (case.name, case.data, "application/octet-stream")}
                try:
                    status = requests.post(
                        f"{base}/api/search/image", files=files, timeout=120
                    ).status_code
                except requests.RequestException as error:
                    status = type(error).__name__
                answers[status] += 1
                slowest = max(slowest, time.monotonic() - started)

            watchers = [threading.Thread(target=sample), threading.Thread(target=watch_health)]
            for watcher in watchers:
                watcher.start()
            for _ in range(args.rounds):
                with ThreadPoolExecutor(args.clients) as clients:
                    for _ in range(args.clients):
                        clients.submit(send)
            done.set()
            for watcher in watchers:
                watcher.join()
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    print("| file | bytes | requests | answers | slowest s | peak MB more | health worst s |")
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(answers.items(), key=str))
    print(
        f"| {case.name} | {len(case.data):,} | {args.clients} x {args.rounds} | {statuses} "
        f"| {slowest:.1f} | {peak - before:,.0f} | {max(health):.2f} |"
    )


if __name__ == "__main__":
    main()
