"""The client CPU of one S3 Vectors request through the project's adapter (index/s3vectors.py
`VectorBucket`), against moto in server mode (its threads are not this thread's CPU): a
QueryVectors of a 1,280-d vector, and a GetVectors of one key without data as the control (no
vector in it). What the builder pays a new image at least once (its nearest images).

    PYTHONPATH=src .venv/bin/python bench/vector_requests_cpu.py --rounds 3

Run it against another checkout for an A/B: PYTHONPATH=../other/src, the same command. Prints
each round's milliseconds of this thread's CPU a request (the mean of `--requests`), and the
median of the rounds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import boto3
import numpy as np
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from moto.server import ThreadedMotoServer
from support.s3vectors import create_vector_indexes, install_query_vectors

import imgsearch
from imgsearch.index.s3vectors import VectorBucket

DIM, CLASSES, STORED = 1280, 1000, 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_ms_a_request(send: Callable[[int], object], requests: int) -> float:
    began = time.thread_time()
    for number in range(requests):
        send(number)
    return (time.thread_time() - began) * 1000 / requests


def measure(kinds: Mapping[str, Callable[[int], object]], rounds: int, requests: int) -> None:
    """Each kind of request (sent with its number) warmed, then `rounds` rounds of
    `requests` each, the kinds alternating; prints each round's CPU a request and the
    median. Also bench/table_requests_cpu.py's."""
    for send in kinds.values():
        cpu_ms_a_request(send, 10)  # warm: connections, botocore's caches
    measured: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, send in kinds.items():
            measured[name].append(cpu_ms_a_request(send, requests))
    for name, values in measured.items():
        listed = ", ".join(f"{v:.2f}" for v in values)
        median = statistics.median(values)
        print(f"{name}: {listed} ms of client CPU a request; median {median:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    print(f"imgsearch from {Path(imgsearch.__file__).parent}")

    install_query_vectors()
    port = free_port()
    server = ThreadedMotoServer(port=port, verbose=False)
    server.start()
    try:
        client = boto3.client(
            "s3vectors",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(max_pool_connections=8),
        )
        create_vector_indexes(client, "bench-vectors", "images", dim=DIM, classes=CLASSES)
        bucket = VectorBucket(client, "bench-vectors", "images")
        rows = np.random.default_rng(0).normal(size=(STORED, DIM)).astype(np.float32)
        client.put_vectors(
            vectorBucketName="bench-vectors",
            indexName="images",
            vectors=[{"key": f"k{i}", "data": {"float32": r.tolist()}} for i, r in enumerate(rows)],
        )

        def query(number: int) -> None:
            bucket.query("images", rows[number % STORED], 100, None)

        def get(number: int) -> None:
            bucket.get([f"k{number % STORED}"], data=False)

        measure({"QueryVectors": query, "GetVectors (no data)": get}, args.rounds, args.requests)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
