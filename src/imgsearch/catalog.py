"""What the system knows about each image and each key, kept in the catalog table and the
object store. Every write here is conditional or idempotent, so retries and concurrent
ingests converge on one state.

The rows (image#<id>, key#<key>, pending, change, index / published) and object keys (images/,
embeddings/, thumbnails/) are described, with every other storage layout, in
storage/layout.md.
"""

from __future__ import annotations

import base64
import bisect
import io
import logging
import time
import uuid
import zipfile
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np

from imgsearch.config import MAX_DUPLICATE_DISTANCE
from imgsearch.integrity import DamagedFile, read_npz
from imgsearch.remembered import Remembered
from imgsearch.storage import (
    Delete,
    DirectUploads,
    Increment,
    NotFound,
    PreconditionFailed,
    PresignedPost,
    Put,
    Storage,
    TooMuchContention,
    Write,
    in_parallel,
    retry_on_conflict,
)
from imgsearch.storage.ports import Item
from imgsearch.storage.validation import MAX_TRANSACT_WRITES, validate_key

log = logging.getLogger(__name__)

IMAGES_PREFIX = "images/"
# An image's features and class probabilities.
Embedding = tuple[np.ndarray, np.ndarray]
# Embeddings kept in memory after they were stored, for the index builder (about 10 KB each).
FRESH_EMBEDDINGS = 1000
# The item (pk image#<id>) that carries a queued image's embedding to the index builder.
QUEUED_EMBEDDING = "embedding"
# How long it is kept (then deleted by the table's time to live, in the next days): a build
# comes within minutes, or within hours behind a large backfill.
CARRIED_SECONDS = 24 * 3600
SMALL_THUMBNAILS_KEPT = 4096  # ~8 KB each at 192 px: ~32 MB a process at most
THUMBNAILS_PREFIX = "thumbnails/"
EMBEDDINGS_PREFIX = "embeddings/"
NEAR_COPIES = "near"  # the partition of near-copy lists
# Its item "complete" says every image has its near-copy list; "progress", how far their
# completion got (`Catalog.complete_near_copy_lists`).
NEAR_COPIES_MARK = "near-complete"
# One item whose token changes after every write of neighbour lists: readers that keep lists
# and expanded vectors (index/neighbourhoods.py) keep them until it changes.
LISTS_MARK = ("lists", "changed")
# Neighbour distances are stored to this many decimals: the index builder rounds the distances
# it offers with `stored_distance` before comparing them with stored ones, so that an unchanged
# list is seen as unchanged (and reads back equal: `_neighbour_attrs`).
DISTANCE_DECIMALS = 6
_DISTANCE_FORMAT = f".{DISTANCE_DECIMALS}f"  # correctly rounded, as round(d, DISTANCE_DECIMALS)


def stored_distance(distance: float) -> float:
    """A neighbour's distance as a stored list holds it (and reads it back)."""
    return round(distance, DISTANCE_DECIMALS)


def thumbnail_name(image_id: str) -> str:
    """An image's thumbnail's name under THUMBNAILS_PREFIX (a CDN serves them by it too)."""
    return f"{image_id}.jpg"


def thumbnail_key(image_id: str) -> str:
    return THUMBNAILS_PREFIX + thumbnail_name(image_id)


def tile_name(image_id: str) -> str:
    """An image's tile thumbnail's name (a small WebP for the grid) under THUMBNAILS_PREFIX,
    beside its thumbnail (a CDN serves them by it too)."""
    return f"{image_id}-tile.webp"


def tile_key(image_id: str) -> str:
    return THUMBNAILS_PREFIX + tile_name(image_id)


def embedding_key(image_id: str) -> str:
    """Where an image's embedding (features and class probabilities, an npz) is stored."""
    return f"{EMBEDDINGS_PREFIX}{image_id}.npz"


def image_id_of_embedding(key: str) -> str:
    """The image id an `embedding_key` names."""
    return key.removeprefix(EMBEDDINGS_PREFIX).removesuffix(".npz")


ImageStatus = Literal["pending", "indexed", "removed"]
# "failed": the cloud gave up on the key's latest event (see Ingestor.record_failure).
KeyStatus = Literal["present", "refused", "removed", "failed"]
PendingOp = Literal["add", "remove"]


@dataclass(frozen=True)
class ImageRecord:
    id: str
    keys: tuple[str, ...]
    width: int
    height: int
    format: str
    size: int
    classes: tuple[tuple[int, float], ...]  # most probable ImageNet classes
    status: ImageStatus = "pending"
    created_at: float = field(default_factory=time.time)
    version: int = 0

    @property
    def key(self) -> str:
        """The key the image is best known by: the first it arrived under."""
        return self.keys[0] if self.keys else ""

    def attrs(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "size": self.size,
            "classes": [[c, p] for c, p in self.classes],
            "status": self.status,
            "created_at": self.created_at,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ImageRecord:
        return cls(
            id=item["pk"].removeprefix("image#"),
            keys=tuple(item["keys"]),
            width=int(item["width"]),
            height=int(item["height"]),
            format=item["format"],
            size=int(item["size"]),
            classes=tuple((int(c), float(p)) for c, p in item["classes"]),
            status=item["status"],
            created_at=float(item["created_at"]),
            version=int(item["version"]),
        )


@dataclass(frozen=True)
class KeyRecord:
    key: str
    status: KeyStatus
    image_id: str | None = None
    reason: str | None = None
    sequencer: str | None = None
    version: int = 0


@dataclass(frozen=True)
class PendingItem:
    image_id: str
    op: PendingOp
    version: int


@dataclass(frozen=True)
class Change:
    """A change to a key in progress, written before its first write and deleted after its
    last: if its process dies between the two, the change is finished or rolled back later
    (`Ingestor.recover_changes`), so no upload or removal stays half-applied."""

    key: str
    op: PendingOp
    image_id: str | None  # the image the key is to hold (adds)
    previous: str | None  # the image the key held when the change began
    sequencer: str | None = None
    owns_original: bool = False  # the change writes or deletes images/<key> itself
    owner: str = ""
    started_at: float = field(default_factory=time.time)
    token: str = ""

    def attrs(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "op": self.op,
            "image_id": self.image_id,
            "previous": self.previous,
            "sequencer": self.sequencer,
            "owns_original": self.owns_original,
            "owner": self.owner,
            "started_at": self.started_at,
        }


@dataclass(frozen=True)
class Published:
    """What the last published manifest held, kept apart from it: a manifest that is lost,
    or replaced by an older copy, would otherwise silently serve a collection without the
    images added since."""

    generation: int = 0
    images: int = 0
    next_shard: int = 0


class Catalog:
    def __init__(self, storage: Storage, *, model: str = "") -> None:
        """`model`: the configured model's name, written in and required of the embeddings
        that work items carry (`_queued_embedding`)."""
        self.storage = storage
        self.model = model
        self.table = storage.catalog
        self.objects = storage.objects
        # Embeddings this process stored, until the index builder reads them (most often in
        # the same invocation): a read of the store saved per new image. Content-addressed,
        # so a copy is as good as the stored file; kept as the arrays the file holds, not its
        # bytes, so the builder does not parse an npz per image (0.3 ms: a zip and two array
        # headers, parsed one at a time by every thread).
        self._fresh_embeddings: dict[str, Embedding] = {}
        self._small_thumbnails: Remembered[tuple[str, int], bytes] = Remembered(
            SMALL_THUMBNAILS_KEPT
        )

    # Images -----------------------------------------------------------------------------

    def image(self, image_id: str) -> ImageRecord | None:
        item = self.table.get(f"image#{image_id}", "meta")
        return ImageRecord.from_item(item) if item else None

    def images(self, image_ids: Iterable[str]) -> dict[str, ImageRecord]:
        """The records of those of `image_ids` that exist, by id, in batched reads."""
        items = self.table.get_many([(f"image#{image_id}", "meta") for image_id in image_ids])
        records = (ImageRecord.from_item(item) for item in items.values())
        return {record.id: record for record in records}

    def create_image(self, record: ImageRecord) -> bool:
        """Create the record; False if an image with these bytes already exists."""
        try:
            self.table.put(f"image#{record.id}", "meta", record.attrs(), expected_version=0)
        except PreconditionFailed:
            return False
        return True

    def update_image(
        self, image_id: str, change: Callable[[ImageRecord], ImageRecord | None]
    ) -> ImageRecord | None:
        """Apply `change(record) -> record | None` by compare-and-swap until it sticks.

        Returns the stored record (None if the image does not exist or `change` declined).
        """

        def step() -> ImageRecord | None:
            record = self.image(image_id)
            if record is None:
                return None
            changed = change(record)
            if changed is None or changed == record:
                return record
            version = self.table.put(
                f"image#{image_id}", "meta", changed.attrs(), expected_version=record.version
            )
            return replace(changed, version=version)

        return retry_on_conflict(step, f"image {image_id}'s record")

    def mark_indexed(self, image_ids: list[str]) -> None:
        """Mark these images indexed, those still pending: their records read in batches and
        written by compare-and-swap in transactions (those of a transaction that lost a race
        are then changed one by one)."""
        items = self.table.get_many([(f"image#{i}", "meta") for i in image_ids])
        records = [ImageRecord.from_item(item) for item in items.values()]
        writes = {
            r.id: Put(f"image#{r.id}", "meta", replace(r, status="indexed").attrs(), r.version)
            for r in records
            if r.status == "pending"
        }
        for image_id in self._transact_or_decline(writes):
            self.update_image(image_id, _indexed_if_pending)

    # Keys -------------------------------------------------------------------------------

    def key(self, key: str) -> KeyRecord | None:
        """What `key` holds. Raises InvalidKey for a key ingest refuses (none can be stored)."""
        validate_key(key)
        return _key_record(key, self.table.get(f"key#{key}", "meta"))

    def key_and_image(self, key: str, image_id: str) -> tuple[KeyRecord | None, ImageRecord | None]:
        """What `key` holds and the record of `image_id`, in one batched read."""
        validate_key(key)
        items = self.table.get_many([(f"key#{key}", "meta"), (f"image#{image_id}", "meta")])
        image = items.get((f"image#{image_id}", "meta"))
        return (
            _key_record(key, items.get((f"key#{key}", "meta"))),
            ImageRecord.from_item(image) if image else None,
        )

    def put_key(
        self,
        record: KeyRecord,
        *,
        expected_version: int,
        queue: str | None = None,
        end: Change | None = None,
        create: ImageRecord | None = None,
    ) -> None:
        """Write a key record; raises PreconditionFailed if it changed since it was read.

        With `create`, that image record is created in the same write (PreconditionFailed
        too if it exists already); with `queue` (an image id), the image is queued for the
        index in it; with `end`, that change is closed in it: one request, all or nothing,
        instead of four (an ingest's last writes).
        """
        attrs = {
            "status": record.status,
            "image_id": record.image_id,
            "reason": record.reason,
            "sequencer": record.sequencer,
            "updated_at": time.time(),
        }
        pk = f"key#{record.key}"
        if queue is None and end is None and create is None:
            self.table.put(pk, "meta", attrs, expected_version=expected_version)
            return
        writes: list[Write] = [Put(pk, "meta", attrs, expected_version)]
        if create is not None:
            writes.append(Put(f"image#{create.id}", "meta", create.attrs(), 0))
        if queue is not None:
            writes.append(_queued(queue, "add"))
            writes.extend(self._queued_embedding(queue))
        if end is not None:
            writes.append(Delete("change", end.token))
        self.table.transact(writes)

    # Bytes ------------------------------------------------------------------------------

    def put_original(self, key: str, data: bytes, content_type: str) -> None:
        self.objects.put(IMAGES_PREFIX + key, data, content_type=content_type, etag_wanted=False)

    def original(self, key: str) -> bytes:
        return self.objects.get(IMAGES_PREFIX + key).data

    def has_original(self, key: str, size: int) -> bool:
        """Whether `key`'s original is stored, `size` bytes long (see `has_derived`)."""
        return self._stored(IMAGES_PREFIX + key) == size

    def delete_original(self, key: str) -> None:
        self.objects.delete(IMAGES_PREFIX + key)

    def original_url(self, key: str) -> str | None:
        return self.objects.url(IMAGES_PREFIX + key)

    def original_upload_form(
        self, key: str, *, content_type: str, max_bytes: int, expires: int
    ) -> PresignedPost:
        """A signed form a browser POSTs one image with, straight into the store as the
        original of `key` (the store must take direct uploads)."""
        if not isinstance(self.objects, DirectUploads):
            raise TypeError("this object store takes no direct uploads")
        return self.objects.presigned_post(
            IMAGES_PREFIX + key,
            content_type=content_type,
            content_type_prefix="image/",
            max_bytes=max_bytes,
            expires=expires,
        )

    def put_derived(
        self,
        image_id: str,
        features: np.ndarray,
        probabilities: np.ndarray,
        thumbnail: bytes,
        tile: bytes,
        *,
        overwrite: bool = False,
    ) -> None:
        """Store what ingest derives from an image (its embedding, its thumbnail and its tile
        thumbnail, a WebP for small tiles), the three writes sent at once where each waits
        (for the network, or a local disk's flush), one after the other where they are CPU
        only (a bulk ingest's deferred local writes); none depends on another."""
        writes: list[Callable[[], object]] = [
            lambda: self.put_embedding(image_id, features, probabilities, overwrite=overwrite),
            lambda: self.objects.put(
                thumbnail_key(image_id), thumbnail, content_type="image/jpeg", etag_wanted=False
            ),
            lambda: self.put_tile(image_id, tile),
        ]
        if self.objects.overlapping_puts_help:
            in_parallel(lambda write: write(), writes)
        else:
            for write in writes:
                write()

    def put_tile(self, image_id: str, webp: bytes) -> None:
        self.objects.put(tile_key(image_id), webp, content_type="image/webp", etag_wanted=False)

    def tile(self, image_id: str) -> bytes:
        """The tile thumbnail's bytes (NotFound for an image stored before there were)."""
        return self.objects.get(tile_key(image_id)).data

    def tile_url(self, image_id: str) -> str | None:
        return self.objects.url(tile_key(image_id))

    def thumbnail(self, image_id: str) -> bytes:
        return self.objects.get(thumbnail_key(image_id)).data

    def thumbnail_url(self, image_id: str) -> str | None:
        return self.objects.url(thumbnail_key(image_id))

    def small_thumbnail(self, image_id: str, side: int) -> bytes:
        """The thumbnail scaled down to at most `side` pixels (for tiles smaller than it),
        made from the stored one and kept in memory, a few KB each (an id names its
        content, so a kept one is never stale)."""
        key = (image_id, side)
        small = self._small_thumbnails.get(key)
        if small is None:
            small = self._small_thumbnails.put(key, _scaled_jpeg(self.thumbnail(image_id), side))
        return small

    def put_embedding(
        self,
        image_id: str,
        features: np.ndarray,
        probabilities: np.ndarray,
        *,
        overwrite: bool = False,
    ) -> None:
        """Store an image's embedding. Same bytes, same embedding: if a concurrent ingest
        stored it first, that is fine, unless `overwrite` (a removal may be deleting it; a
        re-embedding replaces it, and the copy a work item may carry goes)."""
        stored = features.astype(np.float32), np.array(probabilities)  # what the file holds
        buffer = io.BytesIO()
        np.savez(buffer, features=stored[0], probabilities=stored[1])
        if overwrite and self.objects.reads_are_requests:  # (see `_queued_embedding`)
            # Before the file: a crash between the two leaves no copy of the old embedding.
            self.table.delete(f"image#{image_id}", QUEUED_EMBEDDING)
        try:
            self.objects.put(
                embedding_key(image_id),
                buffer.getvalue(),
                if_none_match=not overwrite,
                etag_wanted=False,
            )
        except PreconditionFailed:
            # Stored first by a concurrent ingest: its file, not this computation, is the
            # embedding (another machine's arithmetic may differ in the last bits).
            self._fresh_embeddings.pop(image_id, None)
            return
        if len(self._fresh_embeddings) >= FRESH_EMBEDDINGS:
            self._fresh_embeddings.clear()  # a builder elsewhere took them: read them again
        self._fresh_embeddings[image_id] = stored

    def embedding(self, image_id: str) -> Embedding:
        """Features and probabilities of an ingested image. Raises NotFound, or DamagedFile
        if the file is truncated or corrupt (each member of an npz carries a CRC-32)."""
        key = embedding_key(image_id)
        fresh = self._fresh_embeddings.pop(image_id, None)
        if fresh is not None:
            features, probabilities = fresh
        else:
            data = self.objects.get(key).data
            try:
                arrays = read_npz(data)
                features, probabilities = arrays["features"], arrays["probabilities"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                raise DamagedFile(key, f"unreadable: {error}") from None
        return _checked(features, probabilities, key)

    def _queued_embedding(self, image_id: str) -> list[Increment]:
        """An item that carries the image's embedding to the index builder, written with its
        work item, if this process stored the embedding (it holds it still). The builder,
        most often in another function, then reads a batch's in one batched read instead of
        a file each (on S3, a GetObject an image: some 7 of the 30 ms an image its build
        took at 100k on S3 Vectors). The features as stored, the probabilities as the index
        keeps them (float16): 9.5 KB of text, 20 write units in the transaction. DynamoDB
        deletes it after CARRIED_SECONDS (its time to live: a delete would bill 20 units
        more); a builder that comes later reads the file."""
        fresh = self._fresh_embeddings.get(image_id)
        if fresh is None or not self.objects.reads_are_requests:
            return []
        features, probabilities = fresh
        attrs = {
            "features": _encoded_array(features, "<f4"),
            "probabilities": _encoded_array(probabilities, "<f2"),
            "model": self.model,
            "delete_after": int(time.time()) + CARRIED_SECONDS,
        }
        # (an increment: written whatever is there, without reading its version first)
        return [Increment(f"image#{image_id}", QUEUED_EMBEDDING, {}, attrs)]

    def queued_embeddings(self, image_ids: Sequence[str]) -> dict[str, Embedding]:
        """The embeddings of `image_ids` that this process holds or that their work items
        carry for the configured model (one batched read for a hundred; the probabilities of
        those carried as float16, as the index keeps them). Those with neither, or with a
        damaged item, are left out: `embedding` reads their file."""
        found = {i: e for i in image_ids if (e := self._fresh_embeddings.pop(i, None))}
        if not self.objects.reads_are_requests:
            return found  # none is carried (`_queued_embedding`)
        keys = [(f"image#{i}", QUEUED_EMBEDDING) for i in image_ids if i not in found]
        for (pk, _), item in self.table.get_many(keys).items():
            image_id = pk.removeprefix("image#")
            if item.get("model") != self.model:  # another model's (written before a change)
                continue
            try:
                features = _decoded_array(item["features"], "<f4")
                probabilities = _decoded_array(item["probabilities"], "<f2")
                found[image_id] = _checked(features, probabilities, f"{pk}'s queued embedding")
            except (KeyError, ValueError, DamagedFile) as error:
                log.warning(
                    "image %s: queued embedding unreadable (%s); its file is read", image_id, error
                )
        return found

    def has_derived(self, image_id: str) -> bool:
        """Whether the image's embedding and thumbnail are stored and not empty: a check by
        their size only (`head`), for files that a power cut may have lost or left empty
        (written with deferred durability, not yet flushed)."""
        return all(
            (self._stored(key) or 0) > 0
            for key in (embedding_key(image_id), thumbnail_key(image_id))
        )

    def _stored(self, key: str) -> int | None:
        """The size of the object under `key`, None if there is none."""
        try:
            return self.objects.head(key).size
        except NotFound:
            return None

    def delete_derived(self, image_id: str) -> None:
        """Drop what was derived from an image's bytes once no key holds it any more."""
        self._fresh_embeddings.pop(image_id, None)
        self.objects.delete(embedding_key(image_id))
        self.objects.delete(thumbnail_key(image_id))
        self.objects.delete(tile_key(image_id))

    # Index work queue ------------------------------------------------------------------

    def mark_pending(self, image_id: str, op: PendingOp) -> None:
        """Queue the image for the index (again: a newer version makes the builder keep it)."""
        write = _queued(image_id, op)
        self.table.increment(write.pk, write.sk, write.deltas, write.set_attrs)

    def pending(self, limit: int | None = None) -> list[PendingItem]:
        return [
            PendingItem(item["sk"], item["op"], int(item["version"]))
            for item in self.table.query("pending", limit=limit)
        ]

    def queued_removals(self, limit: int) -> list[str]:
        """The images queued for removal from the index, among the first `limit` work items
        (one Query for some thousands)."""
        return [item.image_id for item in self.pending(limit=limit) if item.op == "remove"]

    def has_pending(self) -> bool:
        return any(True for _ in self.table.query("pending", limit=1))

    def clear_pending(self, items: Iterable[PendingItem]) -> None:
        """Remove processed work items, those re-queued meanwhile excepted: in transactions
        (and one by one those of a transaction that one re-queued item cancelled). The
        embeddings they carried are left to their time to live (`_queued_embedding`)."""
        deletes = {i.image_id: Delete("pending", i.image_id, i.version) for i in items}
        for image_id in self._transact_or_decline(deletes):
            with suppress(PreconditionFailed):
                delete = deletes[image_id]
                self.table.delete(delete.pk, delete.sk, expected_version=delete.expected_version)

    def _transact_or_decline(self, writes: Mapping[str, Write]) -> list[str]:
        """Apply conditional writes (by image id) in transactions of at most
        MAX_TRANSACT_WRITES; the ids of those in transactions a failed condition cancelled."""
        ids = list(writes)
        declined: list[str] = []
        for start in range(0, len(ids), MAX_TRANSACT_WRITES):
            chunk = ids[start : start + MAX_TRANSACT_WRITES]
            try:
                self.table.transact([writes[i] for i in chunk])
            except PreconditionFailed:
                declined.extend(chunk)
        return declined

    # The published index ------------------------------------------------------------

    def record_published(self, published: Published) -> None:
        """Remember a manifest just published, unless a later one was recorded already."""

        def step() -> None:
            item = self.table.get("index", "published")
            if item is not None and item["generation"] >= published.generation:
                return
            self.table.put(
                "index",
                "published",
                asdict(published),
                expected_version=item["version"] if item else 0,
            )

        # The manifest is out already: a build that lost every race here is not undone.
        with suppress(TooMuchContention):
            retry_on_conflict(step, "the published index")

    def published(self) -> Published:
        item = self.table.get("index", "published")
        if item is None:
            return Published()
        return Published(int(item["generation"]), int(item["images"]), int(item["next_shard"]))

    # Changes in progress ---------------------------------------------------------------

    def begin_change(self, change: Change, *, version: int = 0) -> int:
        """Record (`version` 0) or update (at `version`) a change; returns its new version."""
        try:
            return self.table.put("change", change.token, change.attrs(), expected_version=version)
        except PreconditionFailed:  # recovered by another process meanwhile: record it again
            return self.table.put("change", change.token, change.attrs())

    def end_change(self, change: Change) -> None:
        self.table.delete("change", change.token)

    def changes(self) -> list[Change]:
        return [
            Change(
                key=item["key"],
                op=item["op"],
                image_id=item.get("image_id"),
                previous=item.get("previous"),
                sequencer=item.get("sequencer"),
                owns_original=bool(item.get("owns_original")),
                owner=item["owner"],
                started_at=float(item["started_at"]),
                token=item["sk"],
            )
            for item in self.table.query("change")
        ]

    # Neighbourhoods ----------------------------------------------------------------------

    def neighbours(self, image_id: str) -> tuple[list[tuple[str, float]], int]:
        """The stored neighbour list (id, distance), nearest first, and its version."""
        item = self.table.get(f"image#{image_id}", "neighbours")
        return ([], 0) if item is None else _stored_neighbours(item)

    def neighbours_and_expanded(
        self, image_id: str
    ) -> tuple[list[tuple[str, float]], np.ndarray | None]:
        """The stored neighbour list and the expanded vector stored with it (None: none), in
        one read ("more like this" needs both)."""
        item = self.table.get(f"image#{image_id}", "neighbours")
        if item is None:
            return [], None
        expanded = item.get("expanded")
        return _stored_neighbours(item)[0], None if expanded is None else _decoded_vector(expanded)

    def list_ends(self, image_ids: Iterable[str]) -> dict[str, ListEnd]:
        """The length and last distance of many images' stored lists (those without one are
        left out): their distances alone, in batched reads. The index builder offers each
        new image to the lists of its nearest images (REACH), and most take none: at 100k
        images a batch of 100 offered itself to 6,162 lists and changed 25. A list's whole
        item (its ids and expanded vector) is ten times the bytes to send and parse, and is
        read (`stored_lists`) only for those that may take an offer."""
        items = self._lists_read(image_ids, attributes=("distances",))
        return {i: _list_end(item["distances"]) for i, item in items.items() if "distances" in item}

    def stored_lists(self, image_ids: Iterable[str]) -> dict[str, StoredList]:
        """The stored lists of many images as read, each decoded only if asked, with the
        expanded vectors stored with them as they are stored (to be written again unchanged:
        `put_neighbour_lists`), in batched reads (those without one are left out)."""
        return {i: StoredList(item) for i, item in self._lists_read(image_ids).items()}

    def _lists_read(
        self, image_ids: Iterable[str], *, attributes: Collection[str] | None = None
    ) -> dict[str, Item]:
        """The stored list items of many images by image id, in batched reads (those without
        one are left out); of each only `attributes` if given (`Table.get_many`)."""
        items = self.table.get_many(
            [(f"image#{i}", "neighbours") for i in image_ids], attributes=attributes
        )
        return {pk.removeprefix("image#"): item for (pk, _), item in items.items()}

    def put_neighbour_lists(
        self,
        lists: Mapping[str, StoredNeighbours],
        expanded: Mapping[str, np.ndarray | StoredExpanded] | None = None,
        *,
        replacing: Mapping[str, list[tuple[str, float]]] | None = None,
    ) -> None:
        """Replace many lists in batched writes, each read at the version given, with the
        `expanded` vectors of their images (index/expansion.py; or as they were stored, read
        by `stored_lists`: `StoredList.expanded`). Not conditional (see `Table.put_many`): only the
        index builder, under its lease, writes neighbour lists.

        Their near-copy lists are written with them, first (see below), except those of the
        lists `replacing` gives as stored whose near copies are the same: most lists a new
        image enters gain no near copy (a photo archive's bursts and a synthesised
        collection's perturbed copies gave every list some, written again unchanged: half of
        the builder's batch writes). Only once the collection's near-copy lists are complete
        (one read of their mark a call): until the writer completes them, each list written
        writes its near-copy list too."""
        replacing = replacing or {}
        if replacing and not self.near_copy_lists_complete():
            replacing = {}
        near = {
            image_id: neighbours
            for image_id, (neighbours, _) in lists.items()
            if image_id not in replacing
            or _near_copies(neighbours) != _near_copies(replacing[image_id])
        }
        # Before the lists: a list written is never ahead of its near copies, so a run
        # stopped between the two writes them again when it re-runs (its lists read unchanged).
        self.table.put_many(_near_copy_puts(near))
        self.table.put_many(
            [
                Put(
                    f"image#{image_id}",
                    "neighbours",
                    _neighbour_attrs(neighbours, (expanded or {}).get(image_id)),
                    version,
                )
                for image_id, (neighbours, version) in lists.items()
            ]
        )

    # Near-copy lists: each image's neighbours within MAX_DUPLICATE_DISTANCE, in one partition
    # ("near"), written with its list (only for the few images that have any): the stacks
    # of the whole collection come from them, not from every list. The distance of two
    # images never changes, so an entry stays true while both exist; a removed image's
    # entries are left for readers to skip (it may come back: same bytes, same id).

    def near_copy_lists(self) -> dict[str, list[tuple[str, float]]]:
        """Every image's stored near-copy list, by id (images with none are left out)."""
        lists = {}
        for item in self.table.query(NEAR_COPIES):
            lists[item["sk"]] = _stored_neighbours(item)[0]
        return lists

    def near_copy_lists_complete(self) -> bool:
        """Whether every image stored before near-copy lists were kept has one too
        (`complete_near_copy_lists`); images indexed since get theirs with their lists."""
        mark = self.table.get(NEAR_COPIES_MARK, "complete")
        # Made for another threshold, they would miss near copies a wider one takes in: the
        # lists that `put_neighbour_lists` leaves unwritten would never gain them.
        return mark is not None and mark.get("max_distance") == MAX_DUPLICATE_DISTANCE

    def complete_near_copy_lists(
        self,
        image_ids: Sequence[str],
        *,
        batch: int,
        proceed: Callable[[], bool],
        before_write: Callable[[], None],
    ) -> bool:
        """A part of the one-time completion of the near-copy lists of a collection indexed
        before they were kept (while `near_copy_lists_complete` is False): near-copy lists
        from the stored neighbour lists of `image_ids` (in id order), from the first after
        where the last call stopped, `batch` lists at a time while `proceed()` holds, how far
        it got recorded after each batch; the mark that they are complete once every image
        is done. Whether they are.

        Images indexed since the completion started need not be among `image_ids`: until
        the mark is written, `put_neighbour_lists` writes every list's near-copy list with
        it. Only the index builder calls this, under its lease, as it writes the lists
        (`before_write` checks the lease before each write): a build that wrote an image's
        lists between this call's read of them and its write would otherwise lose its near
        copies to the older list, for good once the mark is written."""
        progress = self.table.get(NEAR_COPIES_MARK, "progress")
        done_up_to = ""  # (every id is after it)
        if progress is not None and progress.get("max_distance") == MAX_DUPLICATE_DISTANCE:
            done_up_to = progress["after"]
        for start in range(bisect.bisect_right(image_ids, done_up_to), len(image_ids), batch):
            if not proceed():
                return False
            ids = image_ids[start : start + batch]
            lists = self.stored_lists(ids)
            before_write()
            self.table.put_many(_near_copy_puts({i: s.neighbours for i, s in lists.items()}))
            if start + batch < len(image_ids):
                after = {"after": ids[-1], "max_distance": MAX_DUPLICATE_DISTANCE}
                self.table.put(NEAR_COPIES_MARK, "progress", after)
        before_write()
        # (The cursor goes first: a run stopped between the two starts again, never from a
        # stale cursor.)
        self.mark_near_copy_lists_complete()
        return True

    def mark_near_copy_lists_complete(self) -> None:
        """Say that every image has its near-copy list (`complete_near_copy_lists` at its end,
        or a collection made with them from its start). A cursor left by a completion under
        way (a reindex may mark it complete) goes too."""
        self.table.delete(NEAR_COPIES_MARK, "progress")
        self.table.put(
            NEAR_COPIES_MARK,
            "complete",
            {"at": time.time(), "max_distance": MAX_DUPLICATE_DISTANCE},
        )

    def expanded_vectors(self, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The expanded vectors stored with the lists of `image_ids`, in batched reads
        (those without one are left out)."""
        items = self._lists_read(image_ids)
        return {
            i: _decoded_vector(item["expanded"]) for i, item in items.items() if "expanded" in item
        }

    def delete_neighbours(self, image_id: str) -> None:
        self.table.delete(f"image#{image_id}", "neighbours")

    def mark_lists_changed(self) -> None:
        """Tell readers that neighbour lists changed: after (never before) writing them, so
        a reader that sees the new token reads the new lists (one write a group of images)."""
        self.table.put(*LISTS_MARK, {"token": uuid.uuid4().hex})

    def lists_changed_token(self) -> str:
        """The token `mark_lists_changed` wrote last ("" before any): one read."""
        item = self.table.get(*LISTS_MARK)
        return "" if item is None else str(item["token"])

    def change_token(self) -> Hashable | None:
        """A value that changes with every write to the catalog (records, keys, lists), or
        None where it cannot be read cheaply (DynamoDB): see `Table.change_token`."""
        return self.table.change_token()


def _key_record(key: str, item: dict[str, Any] | None) -> KeyRecord | None:
    if item is None:
        return None
    return KeyRecord(
        key=key,
        status=item["status"],
        image_id=item.get("image_id"),
        reason=item.get("reason"),
        sequencer=item.get("sequencer"),
        version=int(item["version"]),
    )


def _queued(image_id: str, op: PendingOp) -> Increment:
    """The image's work item: an increment, so that one write both queues it and bumps the
    version the builder's `clear_pending` checks (no read of the version first)."""
    return Increment("pending", image_id, {}, {"op": op, "at": time.time()})


def _indexed_if_pending(record: ImageRecord) -> ImageRecord | None:
    return replace(record, status="indexed") if record.status == "pending" else None


# A neighbour list (id, distance), nearest first, and the version it was read at.
StoredNeighbours = tuple[list[tuple[str, float]], int]


class StoredExpanded(str):
    """An expanded vector as stored with its list (`_encoded_vector`), not decoded."""


@dataclass(frozen=True)
class ListEnd:
    """A stored list's length and its last (farthest) distance, None if it is empty: all
    that tells whether an offered neighbour can enter it."""

    length: int
    last: float | None


def _list_end(distances: str | list[Any]) -> ListEnd:
    if isinstance(distances, str):  # packed (_neighbour_attrs)
        if not distances:
            return ListEnd(0, None)
        return ListEnd(distances.count(" ") + 1, float(distances[distances.rfind(" ") + 1 :]))
    return ListEnd(len(distances), float(distances[-1]) if distances else None)


class StoredList:
    """A neighbour list as read, decoded only as far as asked (a list of 50 decoded is
    about 15 µs): the index builder reads whole the lists an offer may enter."""

    def __init__(self, item: dict[str, Any]) -> None:
        self._item = item
        self.version = int(item["version"])
        expanded = item.get("expanded")
        self.expanded = None if expanded is None else StoredExpanded(expanded)

    @cached_property
    def neighbours(self) -> list[tuple[str, float]]:
        """(id, distance), nearest first."""
        return _stored_neighbours(self._item)[0]

    @cached_property
    def ids(self) -> list[str]:
        ids = self._item["ids"]
        return ids.split() if isinstance(ids, str) else list(ids)


def _near_copies(neighbours: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(i, d) for i, d in neighbours if d <= MAX_DUPLICATE_DISTANCE]


def _near_copy_puts(lists: Mapping[str, list[tuple[str, float]]]) -> list[Put]:
    puts = []
    for image_id, neighbours in lists.items():
        near = _near_copies(neighbours)
        if near:  # (not versioned: only the index builder writes them, under its lease)
            puts.append(Put(NEAR_COPIES, image_id, _neighbour_attrs(near), 0))
    return puts


def _stored_neighbours(item: dict[str, Any]) -> StoredNeighbours:
    ids, distances = item["ids"], item["distances"]
    if isinstance(ids, str):  # packed (_neighbour_attrs)
        ids, distances = ids.split(), distances.split()
    pairs = zip(ids, distances, strict=True)
    return [(i, float(d)) for i, d in pairs], int(item["version"])


def _neighbour_attrs(
    neighbours: list[tuple[str, float]], expanded: np.ndarray | StoredExpanded | None = None
) -> dict[str, Any]:
    """A list's attributes: its ids and its distances (to DISTANCE_DECIMALS, written so that
    they read back equal to `stored_distance`), each packed into one string. As lists of 50
    values, DynamoDB's answer is decoded value by value (botocore's parser, then the
    deserializer): about a millisecond of Python an item, and the index builder reads the ends
    of some 60 lists a new image (lists stored as lists before are read as such)."""
    attrs: dict[str, Any] = {
        "ids": " ".join(i for i, _ in neighbours),
        # Correctly rounded as `stored_distance` is, so each reads back equal to it (a numpy
        # float too; three times faster than repr(stored_distance(d)), which was most of the
        # CPU of encoding a list the index builder writes).
        "distances": " ".join(f"{d:{_DISTANCE_FORMAT}}" for _, d in neighbours),
    }
    if isinstance(expanded, StoredExpanded):
        attrs["expanded"] = str(expanded)
    elif expanded is not None:
        attrs["expanded"] = _encoded_vector(expanded)
    return attrs


def _checked(features: np.ndarray, probabilities: np.ndarray, where: str) -> Embedding:
    """An embedding as read, if it is one. Raises DamagedFile naming `where`."""
    if features.ndim != 1 or probabilities.ndim != 1 or not np.isfinite(features).all():
        raise DamagedFile(where, "not an embedding: wrong shape or values")
    return features, probabilities


def _encoded_array(values: np.ndarray, dtype: str) -> str:
    """An array as a table stores it: its values as `dtype` in base64 (a third more than
    its bytes: both tables store it as text)."""
    return base64.b64encode(np.asarray(values, dtype).tobytes()).decode("ascii")


def _decoded_array(text: str, dtype: str) -> np.ndarray:
    """Raises ValueError for text that is not base64 of whole `dtype` values."""
    return np.frombuffer(base64.b64decode(text, validate=True), dtype)


def _encoded_vector(vector: np.ndarray) -> str:
    """An expanded vector as stored with its list: float16 (2 bytes a dimension)."""
    return _encoded_array(vector, "<f2")


def _decoded_vector(text: str) -> np.ndarray:
    return _decoded_array(text, "<f2").astype(np.float32)


def _scaled_jpeg(jpeg: bytes, side: int) -> bytes:
    from PIL import Image  # only a server that serves small thumbnails needs it loaded

    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("RGB", (side, side))  # JPEG decodes straight at a smaller scale
        small = image.convert("RGB")
        small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=78, optimize=True)
    return buffer.getvalue()
