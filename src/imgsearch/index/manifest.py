"""The manifest: which shard builds make up the index right now.

It is the only mutable object of the index. Builders replace it by compare-and-swap on its
ETag, so a reader always sees one complete, consistent set of immutable shard builds.

It carries the sha256 of every file of every build, and its own (over the rest of its JSON):
a truncated or corrupt manifest, and a shard file that changed since it was written, are
detected before anything is memory-mapped (a damaged Annoy file would crash the process).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from imgsearch.integrity import DamagedFile
from imgsearch.storage import NotFound, ObjectStore

MANIFEST_KEY = "index/manifest.json"
# 2: Annoy over per-shard principal components, spread of the collection.
# 3: the same files, with their sha256 and the manifest's own in the manifest. Format 2 is
#    refused like any other: its files cannot be verified (`imgsearch reindex` rebuilds them).
INDEX_FORMAT = 3


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
    sha256: dict[str, str] = field(default_factory=dict)  # per part of the build

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
        body = asdict(self)
        return json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """The manifest in `data`. Raises IndexFormatError for another format (checked
        first: older manifests have no checksum), DamagedFile if it is not a whole manifest."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DamagedFile(MANIFEST_KEY, f"not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise DamagedFile(MANIFEST_KEY, "not a JSON object")
        raw.setdefault("format", 1)  # manifests before formats were numbered
        if raw["format"] != INDEX_FORMAT:
            raise IndexFormatError(
                f"the index is in format {raw['format']}, this version reads format "
                f"{INDEX_FORMAT}: run `imgsearch reindex` to rebuild it from the stored "
                "embeddings"
            )
        checksum = raw.pop("checksum", None)
        if checksum != _checksum(raw):
            raise DamagedFile(MANIFEST_KEY, "its checksum does not match its content")
        try:
            shards = tuple(
                ShardEntry(**{**entry, "deleted": tuple(entry.get("deleted", ()))})
                for entry in raw.pop("shards")
            )
            return cls(shards=shards, **raw)
        except (KeyError, TypeError, AttributeError) as error:
            raise DamagedFile(MANIFEST_KEY, f"a field is missing or unknown: {error}") from None

    def with_shards(
        self,
        shards: list[ShardEntry],
        *,
        next_shard: int,
        model: str,
        dim: int,
        trees: int,
        updated_at: float,
    ) -> Manifest:
        """The next generation: `shards`, built by `model` with `trees` trees."""
        return replace(
            self,
            shards=tuple(shards),
            generation=self.generation + 1,
            next_shard=next_shard,
            model=model,
            dim=dim,
            trees=trees,
            updated_at=updated_at,
        )


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(store: ObjectStore) -> tuple[Manifest, str | None]:
    """The current manifest and its ETag; an empty manifest and None if there is none yet.
    Raises DamagedFile or IndexFormatError (see `Manifest.from_json`)."""
    try:
        stored = store.get(MANIFEST_KEY)
    except NotFound:
        return Manifest(), None
    return Manifest.from_json(stored.data), stored.etag


def manifest_etag(store: ObjectStore) -> str | None:
    """The stored manifest's ETag, whatever its content (None if there is none)."""
    try:
        return store.head(MANIFEST_KEY).etag
    except NotFound:
        return None


def write_manifest(store: ObjectStore, manifest: Manifest, etag: str | None) -> str:
    """Replace the manifest read with `etag` (None: create it). Raises PreconditionFailed."""
    if etag is None:
        return store.put(
            MANIFEST_KEY, manifest.to_json(), if_none_match=True, content_type="application/json"
        )
    return store.put(
        MANIFEST_KEY, manifest.to_json(), if_match=etag, content_type="application/json"
    )
