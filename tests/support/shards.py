"""A small shard build written through the production writer, for tests of how shards are
stored, cached and loaded."""

from __future__ import annotations

import numpy as np

from imgsearch.index.manifest import ShardEntry
from imgsearch.index.shards import ShardBuild, ShardData, write_build
from imgsearch.storage import ObjectStore
from imgsearch.vectors import unit_rows

SHARD_ID = "s000000"


def small_build(objects: ObjectStore) -> tuple[ShardEntry, ShardBuild, np.ndarray]:
    """Shard `SHARD_ID` of 40 random unit vectors (16-d, 10 classes, 5 trees) written to
    `objects`: its manifest entry, its build and its features (row i is image i's)."""
    rng = np.random.default_rng(0)
    ids = [f"{i:016x}" for i in range(40)]
    features = unit_rows(rng.standard_normal((40, 16)))
    probabilities = rng.dirichlet(np.ones(10), size=40).astype(np.float16)
    build = write_build(objects, SHARD_ID, ShardData(ids, features, probabilities), 5)
    return ShardEntry(SHARD_ID, build.id, len(ids), sha256=build.sha256), build, features
