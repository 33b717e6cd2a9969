"""Tiered shards: sealed shards merged in the background into few large ones, as log-structured
stores do, so that a query over a million images searches a handful of shards, not a hundred.

The open shard stays small (`shard_size`: every upload rebuilds it). Once sealed, shards are
tiers: tier 0 holds `shard_size` images, tier t about `MERGE_FACTOR`**t times that. When
`MERGE_FACTOR` neighbouring sealed shards share a tier, they are merged into one of the next
(never beyond `MAX_SHARD_SIZE`: a merge holds its shards' features in memory). A collection of
n images then has at most one sealed shard a tier up to 2 x `MAX_SHARD_SIZE` (without removals,
as many as the ones in n / shard_size written in binary: 1M images in shards of 10,000 make 3,
640k + 320k + 40k), and beyond it one more of `MAX_SHARD_SIZE` per `MAX_SHARD_SIZE` images.
A merge keeps the projection its shards share (the open shard reuses the newest sealed
shard's) while it serves the merged images about as well as a new fit, so that a collection's
shards keep one and a query is projected once for all.

A merge reads only sealed builds, which never change, so it holds no lease and blocks nobody:
it writes the merged build, then swaps it into the manifest by compare-and-swap, re-reading
the manifest if a builder published meanwhile (and carrying over the removals it masked).
A merge that dies before the swap leaves an unnamed build that garbage collection deletes; one
whose shards another merge or a rebuild replaced is given up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from imgsearch.catalog import Catalog, Published
from imgsearch.index.manifest import Manifest, ShardEntry, read_manifest, write_manifest
from imgsearch.index.reader import Index
from imgsearch.index.shards import (
    BUILD_PARTS,
    Projection,
    Shard,
    ShardData,
    build_key,
    fit_projection,
    held_out_sample,
    write_build,
)
from imgsearch.storage import NotFound, PreconditionFailed

log = logging.getLogger(__name__)

# Sealed shards of one tier merged into one of the next. Two, not four: a query pays per shard
# (an Annoy walk and a GIL hand-over each), and two leave fewer (at 100k 80k + 20k, not
# 40k + 40k + 10k + 10k; at 1M 3, not 4), for twice the merges over an image's life (6 up to
# 640k, not 3: 0.1-0.2 ms of one core each, against the 30 ms its ingest costs).
MERGE_FACTOR = 2
MAX_SHARD_SIZE = 640_000  # images a merge may produce, at most (its memory: ~3.5 KB each)
SWAP_ATTEMPTS = 5  # manifest compare-and-swaps a merge tries before giving up
# A merge keeps its shards' shared projection if it keeps at least this share of the variance
# of the merged images that a projection fitted on them keeps. Measured on real photos' vectors
# (40k of one kind; `Projection.kept_variance`): a fit on other images of that kind kept 1.003
# of it; a fit on both kinds 0.92, and recalled 0.951 against 0.955 (a 40k shard's 48
# candidates, 600 nodes); a fit on the other kind 0.46, and recalled 0.935.
KEPT_VARIANCE_SHARED = 0.97


def tier(count: int, base: int) -> int:
    """The tier of a sealed shard of `count` images (tier 0: `base`, the open shard's size).
    Tier t spans MERGE_FACTOR**(t - 0.25) to MERGE_FACTOR**(t + 0.75) times `base`, one factor
    wide, so merging one tier's shards never skips the next tier. Removals are masked, not
    counted here: a merge of shards that lost some makes a smaller one, which keeps its tier
    down to MERGE_FACTOR**-0.25 of the tier's size (0.84 with two)."""
    if count <= base:
        return 0
    return max(0, math.floor(math.log(count / base, MERGE_FACTOR) + 0.25))


def merge_plan(shards: Sequence[ShardEntry], base: int) -> tuple[int, int] | None:
    """The positions [start, stop) of the next sealed shards to merge: `MERGE_FACTOR`
    neighbours of one tier, the lowest tier first (the cheapest merge); None if none."""
    best: tuple[int, int, int] | None = None  # (tier, start, stop)
    run_start, run_tier = 0, -1
    for position, entry in enumerate(shards):
        level = tier(entry.count, base) if entry.sealed else -1
        if level != run_tier:
            run_start, run_tier = position, level
        if level < 0 or position - run_start + 1 < MERGE_FACTOR:
            continue
        start = position + 1 - MERGE_FACTOR
        merged = sum(shard.live_count for shard in shards[start : position + 1])
        if merged > MAX_SHARD_SIZE:
            # Too large together (the largest tier, or a merged shard above its tier's
            # nominal size): the first stays apart, and the rest may merge with the next.
            run_start = start + 1
            continue
        if best is None or level < best[0]:
            best = (level, start, position + 1)
        run_start = position + 1  # a shard is merged once: the next run starts after it
        run_tier = -1
    return None if best is None else (best[1], best[2])


class Merger:
    """Merges sealed shards in a background thread of this process, one merge at a time
    (other processes' merges are kept apart by the manifest's compare-and-swap)."""

    def __init__(self, catalog: Catalog, index: Index, *, shard_size: int, n_trees: int) -> None:
        self.catalog = catalog
        self.store = catalog.objects
        self.index = index
        self.shard_size = shard_size
        self.n_trees = n_trees
        # False: merges only when `merge_all` or `merge_once` is called (tests that pin a
        # layout, or delete old builds at once).
        self.background = True
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def wanted(self, manifest: Manifest) -> bool:
        """Whether `manifest` has shards to merge."""
        return merge_plan(manifest.shards, self.shard_size) is not None

    def start(self) -> None:
        """Merge in a background thread until nothing is left to merge (unless one runs)."""
        with self._lock:
            if not self.background or self._stopping.is_set():
                return
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._merge_logged, name="imgsearch-merge", daemon=True
            )
            self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Until the background merges end (a process about to exit)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def stop(self) -> None:
        """End the background merges after the one in progress (none starts after this)."""
        with self._lock:
            self._stopping.set()
        self.wait()

    def _merge_logged(self) -> None:
        try:
            self.merge_all()
        except Exception:  # a background thread has nobody to raise to; the next try redoes it
            log.exception("merging shards failed; the next build tries again")

    def merge_all(self) -> int:
        """Merge until no tier has shards to merge; how many merges were published."""
        merges = 0
        while not self._stopping.is_set() and self.merge_once(n_jobs=1):
            merges += 1
        return merges

    def merge_once(self, n_jobs: int = -1) -> bool:
        """Merge the next planned shards and publish the result; whether it did."""
        self.index.refresh(force=True)
        manifest, shards = self.index.manifest, self.index.shards
        plan = merge_plan(manifest.shards, self.shard_size)
        if plan is None:
            return False
        sources = shards[plan[0] : plan[1]]
        entries = manifest.shards[plan[0] : plan[1]]
        if [(s.shard_id, s.build_id) for s in sources] != [(e.id, e.build) for e in entries]:
            return False  # the reader is between manifests: the next build tries again
        started = time.monotonic()
        data = _merged_data(sources)
        build = write_build(
            self.store,
            entries[0].id,
            data,
            self.n_trees,
            projection=_merged_projection(sources, data),
            n_jobs=n_jobs,
        )
        merged = ShardEntry(entries[0].id, build.id, len(data), sealed=True, sha256=build.sha256)
        published = self._swap(entries, merged, set(data.ids))
        log.info(
            "merged %d shards (%d images) in %.1f s%s",
            len(entries),
            len(data),
            time.monotonic() - started,
            "" if published else "; not published: the shards changed meanwhile",
        )
        self.index.refresh(force=True)
        return published

    def _swap(self, sources: Sequence[ShardEntry], merged: ShardEntry, ids: set[str]) -> bool:
        """Replace `sources` by `merged` in the manifest (compare-and-swap, retried)."""
        wanted = {(entry.id, entry.build) for entry in sources}
        for _ in range(SWAP_ATTEMPTS):
            if not self._still_stored(merged):
                return False  # garbage collection took it: the merge outlasted its grace
            manifest, etag = read_manifest(self.store)
            current = [entry for entry in manifest.shards if (entry.id, entry.build) in wanted]
            if len(current) != len(sources):
                return False  # another merge or a rebuild replaced them
            # Removals published while the merge ran, masked in the merged shard instead.
            deleted = sorted(ids.intersection(i for entry in current for i in entry.deleted))
            layout: list[ShardEntry] = []
            for entry in manifest.shards:
                if (entry.id, entry.build) not in wanted:
                    layout.append(entry)
                elif not any(e.id == merged.id and e.build == merged.build for e in layout):
                    layout.append(replace(merged, deleted=tuple(deleted)))
            new_manifest = manifest.with_shards(
                layout,
                next_shard=manifest.next_shard,
                model=manifest.model,
                dim=manifest.dim,
                trees=manifest.trees,
                updated_at=time.time(),
            )
            try:
                write_manifest(self.store, new_manifest, etag)
            except PreconditionFailed:
                continue
            self.catalog.record_published(
                Published(
                    new_manifest.generation, new_manifest.image_count, new_manifest.next_shard
                )
            )
            return True
        return False

    def _still_stored(self, entry: ShardEntry) -> bool:
        """Whether every part of the build is still there: garbage collection deletes a
        build's parts one by one, and may have started on its first parts while the last
        were still being written."""
        try:
            for part in BUILD_PARTS:
                self.store.head(build_key(entry.id, entry.build, part))
        except NotFound:
            return False
        return True


def _merged_projection(shards: Sequence[Shard], data: ShardData) -> Projection | None:
    """The projection of the merge of `shards` into `data`: the one they were all built with,
    if they share one that still serves (`Projection.fits`, and it keeps KEPT_VARIANCE_SHARED
    of the variance a fit on the merged images keeps); else such a fit (None: `write_build`
    fits one).

    The open shard reuses the newest sealed shard's projection, so the shards of a collection
    share one until a merge fits another: kept, a query projects once for every shard
    (reader._Snapshot), where four shards of their own projections cost a 100k query a
    quarter of its time (bench/index_steps.py, docs/performance.md). Fitted again where the
    content drifted, which would cost the merged shard's candidates recall."""
    shared = shards[0].projection
    if any(shard.projection.digest != shared.digest for shard in shards[1:]):
        return None
    if not shared.fits(data.features):
        return None
    fitted = fit_projection(data.features)
    sample = held_out_sample(data.features)
    kept, best = shared.kept_variance(sample), fitted.kept_variance(sample)
    return shared if kept >= KEPT_VARIANCE_SHARED * best else fitted


def _merged_data(shards: Sequence[Shard]) -> ShardData:
    """The live images of `shards`, in order, features kept in float16 (half the memory)."""
    parts = [shard.live_data() for shard in shards]
    return ShardData(
        [image_id for part in parts for image_id in part.ids],
        np.concatenate([part.features for part in parts]),
        np.concatenate([part.probabilities for part in parts]),
    )
