"""Session 19's probe: votes and undos racing on one image and word from many addresses and
sessions, and against a deletion of that image (API key), on a running `imgsearch serve`.

    PYTHONPATH=src .venv/bin/python bench/vote_races.py --port 8719 --data-dir D --image ID
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path


def call(
    port: int,
    method: str,
    path: str,
    body: dict | None = None,
    source: str = "127.0.0.1",
    headers: str = "",
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else b""
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    return int(got.split(b" ", 2)[1]), got.partition(b"\r\n\r\n")[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8719)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--word", default="zorblat")
    parser.add_argument("--threads", type=int, default=24)
    parser.add_argument("--votes", type=int, default=40, help="per thread")
    parser.add_argument("--delete-after", type=float, default=None)
    args = parser.parse_args()
    key = (args.data_dir / "api-key").read_text().strip()
    statuses: Counter[str] = Counter()
    bodies: dict[int, bytes] = {}
    lock = threading.Lock()
    last: dict[str, int] = {}

    def voter(number: int) -> None:
        source = f"127.0.3.{2 + number}"
        rng = random.Random(number)
        for i in range(args.votes):
            session = f"s{number}-{i % 3}"
            vote = rng.choice([1, -1, 0])
            status, body = call(
                args.port,
                "POST",
                "/api/feedback",
                {"query": args.word, "image_id": args.image, "vote": vote, "session": session},
                source,
            )
            with lock:
                statuses[f"vote {status}"] += 1
                if status >= 500 or status == 0:
                    bodies[status] = body
                if status == 200:
                    last[session] = vote

    threads = [threading.Thread(target=voter, args=(n,)) for n in range(args.threads)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    if args.delete_after is not None:
        time.sleep(args.delete_after)
        status, body = call(
            args.port, "DELETE", f"/api/images/{args.image}", headers=f"X-API-Key: {key}\r\n"
        )
        statuses[f"delete {status}"] += 1
    for thread in threads:
        thread.join()
    print(f"{time.monotonic() - start:.1f} s", dict(statuses), bodies)
    status, body = call(
        args.port, "GET", f"/api/terms/{args.word}", headers=f"X-API-Key: {key}\r\n"
    )
    term = json.loads(body)
    held = sum(1 for vote in last.values() if vote != 0)
    print(
        "sessions with a vote standing (by the last 200):",
        held,
        "; the term says:",
        {k: term[k] for k in ("votes", "sessions", "clients")},
        [{k: i[k] for k in ("up_clients", "down_clients", "up", "down")} for i in term["images"]],
    )


if __name__ == "__main__":
    main()
