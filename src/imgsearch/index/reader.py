"""The search side of the Annoy shards (the index port's embedded engine, base.py): all shards
of the current manifest, searched as one.

Nearest-neighbour search asks every shard's Annoy forest for candidates and re-ranks them
by exact cosine distance on the stored features, so sharding and approximation cost almost
nothing in precision (measured by `imgsearch eval`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from imgsearch.index.base import SearchIndex
from imgsearch.index.manifest import Manifest, read_manifest
from imgsearch.index.shards import Shard
from imgsearch.storage import ObjectStore

SEARCH_THREADS = min(4, os.cpu_count() or 1)
REFRESH_INTERVAL_SECONDS = 2.0  # how often a reader looks for a new manifest, at most
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Snapshot:
    """One manifest and its loaded shards: swapped whole, so queries never see a mix."""

    manifest: Manifest
    etag: str | None
    shards: tuple[Shard, ...]


class Index(SearchIndex):
    """Query all shards of the index; `refresh()` follows the manifest as builders move it."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        candidates: int = 100,
        search_k: int = -1,
    ) -> None:
        self._store = store
        self.candidates = candidates
        self.search_k = search_k
        self.refresh_interval = REFRESH_INTERVAL_SECONDS
        self._snapshot = _Snapshot(Manifest(), None, ())
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def manifest(self) -> Manifest:
        return self._snapshot.manifest

    @property
    def etag(self) -> str | None:
        """The ETag of the loaded manifest (None before any build)."""
        return self._snapshot.etag

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self._snapshot.shards

    @property
    def model(self) -> str:
        return self._snapshot.manifest.model

    @property
    def dim(self) -> int:
        return self._snapshot.manifest.dim

    @property
    def generation(self) -> int:
        return self._snapshot.manifest.generation

    @property
    def shard_count(self) -> int:
        return len(self._snapshot.shards)

    def refresh(self, force: bool = False) -> bool:
        """Load the current manifest if it changed (at most every `refresh_interval` s).

        Raises DamagedFile if the manifest or a new shard build fails its checksums (each
        build is verified once, when it is loaded), IndexFormatError for another format."""
        if not force and time.monotonic() - self._checked_at < self.refresh_interval:
            return False
        with self._lock:
            self._checked_at = time.monotonic()
            manifest, etag = read_manifest(self._store)
            current = self._snapshot
            if etag == current.etag:
                return False
            loaded = {(s.shard_id, s.build_id): s for s in current.shards}
            shards = []
            for entry in manifest.shards:
                shard = loaded.get((entry.id, entry.build))
                if shard is None:
                    shard = Shard(entry, self._store)
                else:
                    shard.set_deleted(entry.deleted)
                shards.append(shard)
            self._snapshot = _Snapshot(manifest, etag, tuple(shards))
            return True

    def __len__(self) -> int:
        return sum(shard.live_count for shard in self._snapshot.shards)

    def __contains__(self, image_id: object) -> bool:
        return self.locate(str(image_id)) is not None

    def locate(self, image_id: str) -> tuple[Shard, int] | None:
        """The shard and row holding a live image, or None."""
        for shard in self._snapshot.shards:
            row = shard.row_of.get(image_id)
            if row is not None and shard.live[row]:
                return shard, row
        return None

    def vector(self, image_id: str) -> np.ndarray | None:
        """The stored unit feature vector of an indexed image."""
        found = self.locate(image_id)
        if found is None:
            return None
        shard, row = found
        return np.asarray(shard.features[row], dtype=np.float32)

    def nearest(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Collection[str] = (),
        exact: bool = False,
        candidates: int | None = None,
    ) -> list[tuple[str, float]]:
        """The `k` live images nearest to a unit `vector`: (id, cosine distance), nearest first.

        `exact=True` compares against every stored vector instead of Annoy's candidates.
        """
        vector = np.asarray(vector, dtype=np.float32)
        wanted = k + len(exclude)
        per_shard = max(wanted, candidates or self.candidates)

        def search(shard: Shard) -> tuple[list[str], np.ndarray]:
            if exact:
                rows = np.flatnonzero(shard.live)
            else:
                rows = shard.candidates(vector, per_shard, self.search_k)
            distances = shard.distances(vector, rows)
            if len(rows) > wanted:
                best = np.argpartition(distances, wanted - 1)[:wanted]
                rows, distances = rows[best], distances[best]
            return [shard.ids[row] for row in rows], distances

        return _best(self._map_shards(search), k, exclude, ascending=True)

    def _map_shards(self, work: Callable[[Shard], _T]) -> list[_T]:
        """`work` on every shard, in parallel threads when there are several (Annoy and
        numpy release the GIL while they search)."""
        shards = self._snapshot.shards
        if len(shards) < 2:
            return [work(shard) for shard in shards]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=SEARCH_THREADS)
        return list(self._pool.map(work, shards))

    def ranked_by_classes(
        self, weights: Mapping[int, float], k: int, *, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """The `k` images with the highest sum of weight x class probability (> 0), best first."""
        weights = {int(c): float(w) for c, w in weights.items() if w > 0}
        if not weights:
            return []
        wanted = k + len(exclude)

        def rank(shard: Shard) -> tuple[list[str], np.ndarray]:
            rows, scores = shard.class_scores(weights)
            if len(rows) > wanted:
                best = np.argpartition(-scores, wanted - 1)[:wanted]
                rows, scores = rows[best], scores[best]
            return [shard.ids[row] for row in rows], scores

        return _best(self._map_shards(rank), k, exclude, ascending=False)

    def spread(self, k: int, *, exclude: Collection[str] = ()) -> list[str]:
        """`k` images that together cover the collection: each shard's representatives, taken
        in turn across shards."""
        per_shard = [
            [shard.ids[row] for row in shard.spread if shard.live[row]]
            for shard in self._snapshot.shards
        ]
        in_turn = itertools.chain.from_iterable(itertools.zip_longest(*per_shard))
        wanted = (i for i in in_turn if i is not None and i not in exclude)
        return list(itertools.islice(wanted, k))

    def image_ids(self, *, newest_first: bool = True) -> Iterator[str]:
        """Every live image id, by insertion order."""
        shards = self._snapshot.shards
        for shard in reversed(shards) if newest_first else shards:
            rows = np.flatnonzero(shard.live)
            for row in rows[::-1] if newest_first else rows:
                yield shard.ids[row]


def _best(
    found: list[tuple[list[str], np.ndarray]],
    k: int,
    exclude: Collection[str],
    *,
    ascending: bool,
) -> list[tuple[str, float]]:
    """The `k` best of every shard's (ids, values), lowest or highest values first."""
    ids = [image_id for shard_ids, _ in found for image_id in shard_ids]
    if not ids:
        return []
    merged = np.concatenate([values for _, values in found])
    order = np.argsort(merged if ascending else -merged, kind="stable")
    best: list[tuple[str, float]] = []
    for position in order:
        image_id = ids[position]
        if image_id in exclude:
            continue
        best.append((image_id, float(merged[position])))
        if len(best) == k:
            break
    return best
