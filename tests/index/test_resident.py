"""A loaded shard's pages are mapped into the process at load (a server's index stays hot),
or faulted in by the queries when asked not to: read off the kernel's own account of the
process's mappings (/proc/self/smaps)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest

from imgsearch.index import shards
from imgsearch.index.manifest import ShardEntry
from imgsearch.index.shards import Shard, ShardData, build_key, write_build
from imgsearch.storage.local import LocalObjectStore
from imgsearch.vectors import unit_rows


def kernel_populates() -> bool:
    """Whether this kernel maps pages in on request (MADV_POPULATE_READ, Linux 5.14+): on an
    older one `map_resident` only asks for them to be read ahead, and nothing is mapped."""
    import mmap

    madvise = shards._madvise()
    if madvise is None:
        return False
    page = mmap.mmap(-1, mmap.PAGESIZE)
    first = ctypes.c_char.from_buffer(page)  # holds the mapping open until deleted
    try:
        return madvise(ctypes.addressof(first), mmap.PAGESIZE, shards._MADV_POPULATE_READ) == 0
    finally:
        del first
        page.close()


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not kernel_populates(),
    reason="reads /proc/self/smaps; needs MADV_POPULATE_READ (Linux 5.14+)",
)

ROWS, DIM = 4_000, 1_280  # features.npy of 10 MB (a page-cache folio is up to 2 MB)


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of the mapping holding `array` that are mapped into this process (its Rss)."""
    address = array.ctypes.data
    inside, rss = False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(part, 16) for part in head[0].split("-"))
            inside = start <= address < end
        elif inside and head[0] == "Rss:":
            rss += int(head[1]) * 1024
    return rss


@pytest.fixture
def built_shard(tmp_path) -> tuple[LocalObjectStore, ShardEntry]:
    rng = np.random.default_rng(0)
    features = unit_rows(rng.normal(size=(ROWS, DIM)).astype(np.float32))
    probabilities = rng.dirichlet(np.ones(10), ROWS).astype(np.float16)
    data = ShardData([f"{row:08x}" for row in range(ROWS)], features, probabilities)
    store = LocalObjectStore(tmp_path)
    build = write_build(store, "s000000", data, n_trees=2)
    return store, ShardEntry("s000000", build.id, ROWS, True, sha256=build.sha256)


def test_a_loaded_shard_s_features_are_mapped_into_the_process(built_shard) -> None:
    store, entry = built_shard
    file_bytes = store.local_path(build_key(entry.id, entry.build, "features.npy")).stat().st_size
    resident = Shard(entry, store)
    assert resident_bytes(resident.features) >= 0.95 * file_bytes

    on_demand = Shard(entry, store, resident=False)
    assert resident_bytes(on_demand.features) < 0.05 * file_bytes
    row = on_demand.features[ROWS // 2].copy()  # a query's touch faults its page in
    assert 0 < resident_bytes(on_demand.features) < 0.5 * file_bytes
    np.testing.assert_array_equal(row, resident.features[ROWS // 2])
