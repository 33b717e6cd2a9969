"""Session 19's probe: votes and undos racing on one image and word from many addresses and
sessions, and against a deletion of that image (API key), on a running `imgsearch serve`.

    PYTHONPATH=src .venv/bin/python bench/vote_races.py --port 8719 --data-dir D --image ID
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import attack  # the same directory: its raw HTTP from a chosen address


def call(
    port: int,
    method: str,
    path: str,
    body: dict | None = None,
    source: str = "127.0.0.1",
    headers: list[tuple[str, str]] = (),
) -> tuple[int | str, bytes]:
    """(status, or what happened instead; the answer's body) of one request, JSON `body`."""
    data = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        headers = [("Content-Type", "application/json"), *headers]
    reply = attack.exchange(port, attack.http_request(method, path, data, headers), source, 30)
    return reply.status, reply.body


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
                if not isinstance(status, int) or status >= 500:
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
            args.port, "DELETE", f"/api/images/{args.image}", headers=[("X-API-Key", key)]
        )
        statuses[f"delete {status}"] += 1
    for thread in threads:
        thread.join()
    print(f"{time.monotonic() - start:.1f} s", dict(statuses), bodies)
    status, body = call(args.port, "GET", f"/api/terms/{args.word}", headers=[("X-API-Key", key)])
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
