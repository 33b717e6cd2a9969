"""The manifest: which shard builds make up the index right now.

It is the only mutable object of the index. Builders replace it by compare-and-swap on its
ETag, so a reader always sees one complete, consistent set of immutable shard builds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from imgsearch.storage import NotFound, ObjectStore

MANIFEST_KEY = "index/manifest.json"
INDEX_FORMAT = 2  # 2: Annoy over per-shard principal components, spread of the collection


class IndexFormatError(RuntimeError):
    """The index was built in a layout this version cannot read."""


@dataclass(frozen=True)
class ShardEntry:
    id: str
    build: str
    count: int
    sealed: bool = False
    # Images removed from a sealed shard: sealed builds are never rewritten, so removals
    # are masked at query time instead.
    deleted: tuple[str, ...] = ()

    @property
    def live_count(self) -> int:
        return self.count - len(self.deleted)


@dataclass(frozen=True)
class Manifest:
    # The layout of shard builds this manifest names. Builds of another format cannot be
    # read: `imgsearch reindex` rebuilds them from the stored embeddings.
    format: int = INDEX_FORMAT
    generation: int = 0
    shards: tuple[ShardEntry, ...] = ()
    next_shard: int = 0
    model: str = ""
    dim: int = 0
    trees: int = 0
    updated_at: float = 0.0

    @property
    def image_count(self) -> int:
        return sum(shard.live_count for shard in self.shards)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        raw.setdefault("format", 1)  # manifests before formats were numbered
        raw.pop("extra", None)
        shards = tuple(
            ShardEntry(**{**entry, "deleted": tuple(entry.get("deleted", ()))})
            for entry in raw.pop("shards", ())
        )
        return cls(shards=shards, **raw)

    def with_shards(self, shards: list[ShardEntry], **changes: object) -> Manifest:
        return replace(self, shards=tuple(shards), generation=self.generation + 1, **changes)


def read_manifest(store: ObjectStore) -> tuple[Manifest, str | None]:
    """The current manifest and its ETag; an empty manifest and None if there is none yet."""
    try:
        stored = store.get(MANIFEST_KEY)
    except NotFound:
        return Manifest(), None
    return Manifest.from_json(stored.data), stored.etag


def write_manifest(store: ObjectStore, manifest: Manifest, etag: str | None) -> str:
    """Replace the manifest read with `etag` (None: create it). Raises PreconditionFailed."""
    if etag is None:
        return store.put(
            MANIFEST_KEY, manifest.to_json(), if_none_match=True, content_type="application/json"
        )
    return store.put(
        MANIFEST_KEY, manifest.to_json(), if_match=etag, content_type="application/json"
    )
