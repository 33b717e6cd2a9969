"""What verifying the index costs at load: every shard file's sha256 is checked before it is
parsed or memory-mapped, once per build and process (docs/reliability.md, Faults).

    .venv/bin/python bench/verify_cost.py [--images 20000] [--shard-size 10000]

Writes sealed shards of random unit vectors like the builder does, into a temporary local
store, then loads the index three times and prints the median load time, the part of it
spent hashing, the bytes hashed and the rate.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from imgsearch import integrity
from imgsearch.index.manifest import Manifest, ShardEntry, write_manifest
from imgsearch.index.reader import Index
from imgsearch.index.shards import ShardData, write_build
from imgsearch.storage.local import LocalObjectStore
from imgsearch.vectors import unit_rows


def build(store: LocalObjectStore, images: int, shard_size: int, dim: int = 1280) -> None:
    rng = np.random.default_rng(0)
    shards = []
    for number, start in enumerate(range(0, images, shard_size)):
        count = min(shard_size, images - start)
        features = unit_rows(rng.standard_normal((count, dim)).astype(np.float32))
        probabilities = rng.dirichlet(np.full(1000, 0.02), size=count).astype(np.float16)
        ids = [f"{start + row:016x}" for row in range(count)]
        built = write_build(store, f"s{number:06d}", ShardData(ids, features, probabilities), 20)
        shards.append(
            ShardEntry(f"s{number:06d}", built.id, count, count == shard_size, sha256=built.sha256)
        )
    manifest = Manifest().with_shards(shards, next_shard=len(shards), model="bench", dim=dim)
    write_manifest(store, manifest, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        store = LocalObjectStore(Path(scratch))
        build(store, args.images, args.shard_size)
        hashed = {"seconds": 0.0, "bytes": 0}
        real_file, real_bytes = integrity.sha256_of_file, integrity.sha256_of_bytes

        def timed_file(path: Path) -> str:
            started = time.perf_counter()
            digest = real_file(path)
            hashed["seconds"] += time.perf_counter() - started
            hashed["bytes"] += path.stat().st_size
            return digest

        def timed_bytes(data: bytes) -> str:
            started = time.perf_counter()
            digest = real_bytes(data)
            hashed["seconds"] += time.perf_counter() - started
            hashed["bytes"] += len(data)
            return digest

        from imgsearch.index import shards as shard_code

        shard_code.sha256_of_file, shard_code.sha256_of_bytes = timed_file, timed_bytes
        loads, hashing = [], []
        for _ in range(args.runs):
            hashed.update(seconds=0.0, bytes=0)
            started = time.perf_counter()
            index = Index(store)
            index.refresh(force=True)
            loads.append(time.perf_counter() - started)
            hashing.append(hashed["seconds"])
        total = hashed["bytes"]
        print(
            f"{args.images:,} images in {len(index.shards)} shards: index load "
            f"{statistics.median(loads) * 1000:.0f} ms (median of {args.runs}), of which "
            f"sha256 {statistics.median(hashing) * 1000:.0f} ms over {total / 1e6:.1f} MB "
            f"({total / 1e6 / statistics.median(hashing):.0f} MB/s)"
        )


if __name__ == "__main__":
    main()
