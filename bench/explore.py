"""GET /api/explore's work at scale: the classes most photos show, counted from the posting
lists of every shard, against counting them by scanning every image's probabilities.

The collection is synthesised from real features and probabilities (the demo photos and
Corel-1k, perturbed: bench/index_scale.py's `synthesise`), written as shard builds by the
production code and read through `Index`. Two timings per size, medians over repeats:
- "postings, first": the counts of a freshly loaded index (each shard counts its posting
  lists once per build and deletion mask);
- "one shard changed": after a build, which changes the open shard (or one that lost an
  image) and leaves the sealed ones, whose counts are kept;
- "postings, again": what a request pays afterwards (the counts kept);
- "scan": the baseline, counting probabilities >= the threshold over every image's stored
  probability vector (what a route without posting lists would do), in memory.

    nice -n 5 .venv/bin/python bench/explore.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imgsearch.config import Settings
from imgsearch.index.reader import Index
from imgsearch.storage.local import LocalObjectStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_scale import build_tiered, chunks, real_embeddings

CLASS_PROBABILITY = 0.3  # overview.CLASS_PROBABILITY


def timed(work, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def measure(size: int, args: argparse.Namespace, real) -> None:
    # The collection in the tiered layout the index keeps (bench/index_scale.py), and the
    # same probabilities in memory for the scan it is compared with.
    probabilities = np.concatenate([p for _, _, p in chunks(real, size)])
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        store = LocalObjectStore(Path(scratch))
        build_tiered(store, real, size, args.shard_size, trees=2)
        first = []
        for _ in range(args.repeats):
            index = Index(store)
            index.refresh(force=True)
            started = time.perf_counter()
            counted = index.class_counts(CLASS_PROBABILITY)
            first.append((time.perf_counter() - started) * 1000)
        again, _ = timed(lambda: index.class_counts(CLASS_PROBABILITY), args.repeats * 10)
        changed = []  # a build changes the open shard (or one with a deletion), not the rest
        for repeat in range(args.repeats):
            last = index.shards[-1]
            last.set_deleted(last.ids[: repeat + 1])
            started = time.perf_counter()
            index.class_counts(CLASS_PROBABILITY)
            changed.append((time.perf_counter() - started) * 1000)
        scan, counts = timed(
            lambda: (probabilities.astype(np.float32) >= CLASS_PROBABILITY).sum(axis=0),
            args.repeats,
        )
        by_postings = np.zeros(1000, np.int64)
        for class_id, count, _ in counted:
            by_postings[class_id] = count
        agree = bool(np.array_equal(by_postings, counts))
        print(
            f"| {size:>9,} | {statistics.median(first):8.2f} | {statistics.median(changed):8.2f} "
            f"| {again:8.3f} | {scan:8.1f} "
            f"| {scan / again:8.0f}x | {agree} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=Settings().shard_size)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args()
    real = real_embeddings()
    print(f"medians of {args.repeats} (again: {args.repeats * 10}); times in ms")
    print(
        "| images | postings, first | one shard changed | postings, again | scan "
        "| scan / again | same counts |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        measure(size, args, real)


if __name__ == "__main__":
    main()
