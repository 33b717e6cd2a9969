"""GET /api/duplicates' reads at scale: the collection's near-copy stacks from the catalog's
near-copy lists (one partition, only images that have a near-copy), against reading every
image's stored neighbour list (what the route did before).

A local catalog (SQLite, the production `Catalog`) is filled through the index builder's own
write, `Catalog.put_neighbour_lists`: every image gets 10 neighbours at distances 0.2-0.6,
and 1% of images are near-copies of another (distance 0.01-0.07). Both ways of finding the
near pairs are timed (medians of 3) and must find the same pairs; on DynamoDB the first would
be about images/100 BatchGetItem requests, the second a Query of a few pages.

    nice -n 5 .venv/bin/python bench/duplicates_scale.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from imgsearch.catalog import Catalog
from imgsearch.config import Settings
from imgsearch.storage import open_storage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore import timed  # the same median of repeated runs

NEIGHBOURS = 10
NEAR_SHARE = 0.01
BATCH = 100  # lists read at a time (DynamoDB's BatchGetItem), as overview.py reads them
DISTANCE = Settings().duplicate_distance


def fill(catalog: Catalog, size: int, rng: np.random.Generator) -> list[str]:
    ids = [f"{n:016x}" for n in range(size)]
    copies = set(rng.choice(size, int(size * NEAR_SHARE), replace=False).tolist())
    for start in range(0, size, 1000):
        lists = {}
        for n in range(start, min(start + 1000, size)):
            others = rng.choice(size, NEIGHBOURS, replace=False)
            distances = rng.uniform(0.2, 0.6, NEIGHBOURS)
            found = [(ids[o], float(d)) for o, d in zip(others, distances, strict=True)]
            if n in copies:
                found[0] = (ids[(n + 1) % size], float(rng.uniform(0.01, 0.07)))
            lists[ids[n]] = (sorted(found, key=lambda pair: pair[1]), 0)
        catalog.put_neighbour_lists(lists)
    return ids


def pairs_from_every_list(catalog: Catalog, ids: list[str]) -> set[tuple[str, str]]:
    found = set()
    for start in range(0, len(ids), BATCH):
        for image_id, stored in catalog.stored_lists(ids[start : start + BATCH]).items():
            found.update((image_id, other) for other, d in stored.neighbours if d <= DISTANCE)
    return found


def pairs_from_near_copy_lists(catalog: Catalog) -> set[tuple[str, str]]:
    return {
        (image_id, other)
        for image_id, near in catalog.near_copy_lists().items()
        for other, d in near
        if d <= DISTANCE
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| images | near-copy lists (ms) | every list (ms) | every / near | pairs |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as scratch:
            catalog = Catalog(open_storage(Settings(data_dir=Path(scratch))))
            ids = fill(catalog, size, np.random.default_rng(size))
            near_ms, near = timed(partial(pairs_from_near_copy_lists, catalog), args.repeats)
            every_ms, every = timed(partial(pairs_from_every_list, catalog, ids), args.repeats)
            assert near == every, "the two ways found different pairs"
            print(
                f"| {size:,} | {near_ms:.1f} | {every_ms:.0f} | {every_ms / near_ms:.0f}x "
                f"| {len(near):,} |"
            )


if __name__ == "__main__":
    main()
