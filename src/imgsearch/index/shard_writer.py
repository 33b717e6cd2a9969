"""The write side of the Annoy shards (the index port's embedded engine, base.py).

Shard life cycle: new images go to the one open shard, rebuilt from its stored vectors on each
batch; once it holds `shard_size` images it is sealed and never rebuilt, only merged with
others of its size in the background (tiers.py). Removals from sealed shards are masked
through the manifest. The manifest is switched by compare-and-swap, and builds it no longer
names are deleted after a grace period.

The open shard's rebuilds reuse a projection (shards.Projection: a fixed cost of about a
second): the newest sealed shard's, or its own last one until it has doubled in size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import replace

from imgsearch.catalog import Catalog, Published
from imgsearch.index.base import IndexWriter
from imgsearch.index.manifest import (
    Manifest,
    ShardEntry,
    manifest_etag,
    read_manifest,
    write_manifest,
)
from imgsearch.index.reader import Index
from imgsearch.index.shards import SHARDS_PREFIX, Projection, Shard, ShardData, write_build
from imgsearch.index.tiers import Merger
from imgsearch.storage import PreconditionFailed

GRACE_SECONDS = 900.0  # a shard file no manifest names is kept this long for readers


class ShardWriter(IndexWriter):
    def __init__(
        self, catalog: Catalog, index: Index, *, shard_size: int, n_trees: int, model_name: str
    ) -> None:
        self.catalog = catalog
        self.store = catalog.objects
        self.index = index
        self.shard_size = shard_size
        self.n_trees = n_trees
        self.model_name = model_name
        self.grace_seconds = GRACE_SECONDS
        self.merger = Merger(catalog, index, shard_size=shard_size, n_trees=n_trees)

    def settle(self, *, finish: bool) -> None:
        if finish:
            # A publication just before the background merges ended found their thread alive
            # and started none: what is left is merged here, in the foreground.
            self.merger.wait()
            self.merger.merge_all()
        else:
            self.merger.stop()

    def publish(
        self,
        additions: ShardData,
        removed: Collection[str],
        still_held: Callable[[], None] = lambda: None,
    ) -> int:
        """Write new shard builds for the batch and switch the manifest to them (the
        manifest's counts are its shards')."""
        manifest, etag = self.index.manifest_and_etag
        builds = 0
        shards: list[ShardEntry] = []
        data = additions
        open_id: str | None = None
        projection: Projection | None = None
        for entry in manifest.shards:
            shard = self._loaded(entry)
            if entry.sealed:
                gone = set(removed).intersection(shard.row_of)
                if gone:
                    entry = replace(entry, deleted=tuple(sorted(gone.union(entry.deleted))))
                shards.append(entry)
                projection = shard.projection
            else:
                open_id = entry.id
                kept = shard.data().without(removed)
                data = kept.append(additions) if len(additions) else kept
                if projection is None or not projection.fits(data.features):
                    projection = shard.projection

        dim = int(data.features.shape[1]) if len(data) else manifest.dim
        next_shard = manifest.next_shard
        remaining: ShardData | None = data
        while remaining is not None and len(remaining):
            if open_id is None:
                open_id, next_shard = f"s{next_shard:06d}", next_shard + 1
            part = remaining.take(slice(0, self.shard_size))
            sealed = len(part) == self.shard_size
            reused = (
                projection if projection is not None and projection.fits(part.features) else None
            )
            build = write_build(self.store, open_id, part, self.n_trees, projection=reused)
            projection = build.projection  # the next shard's, if this one was sealed
            builds += 1
            shards.append(
                ShardEntry(
                    id=open_id, build=build.id, count=len(part), sealed=sealed, sha256=build.sha256
                )
            )
            remaining = remaining.take(slice(self.shard_size, None)) if sealed else None
            open_id = None

        new_manifest = manifest.with_shards(
            shards,
            next_shard=next_shard,
            model=self.model_name,
            dim=dim,
            trees=self.n_trees,
            updated_at=time.time(),
        )
        still_held()  # shard builds are invisible until the manifest names them
        write_manifest(self.store, new_manifest, etag)
        self.catalog.record_published(
            Published(new_manifest.generation, new_manifest.image_count, next_shard)
        )
        if self.merger.wanted(new_manifest):
            self.merger.start()
        return builds

    def _loaded(self, entry: ShardEntry) -> Shard:
        for shard in self.index.shards:
            if (shard.shard_id, shard.build_id) == (entry.id, entry.build):
                return shard
        raise PreconditionFailed(f"shard {entry.id} build {entry.build} is not the loaded one")

    def clear(self) -> None:
        # The old manifest may be of another format, or damaged: only its ETag matters.
        etag = manifest_etag(self.store)
        # Shard ids and generations go on from the last published: no build id or
        # generation of the old index is ever reused.
        published = self.catalog.published()
        empty = Manifest(generation=published.generation + 1, next_shard=published.next_shard)
        write_manifest(self.store, empty, etag)
        self.catalog.record_published(Published(empty.generation, 0, empty.next_shard))

    def collect_garbage(self) -> int:
        """Delete shard files no manifest names, once older than the grace period."""
        manifest, _ = read_manifest(self.store)
        live = {f"{SHARDS_PREFIX}{s.id}/{s.build}." for s in manifest.shards}
        # Nothing written since the last publication goes: a merge frozen between writing its
        # build and swapping it in (a Lambda sandbox) would otherwise publish a deleted build;
        # the next publication makes that swap fail first.
        published = manifest.updated_at or time.time()
        cutoff = min(time.time(), published) - self.grace_seconds
        deleted = 0
        for info in list(self.store.list(SHARDS_PREFIX)):
            prefix = info.key[: info.key.index(".") + 1]
            if prefix not in live and info.last_modified < cutoff:
                self.store.delete(info.key)
                deleted += 1
        return deleted
