"""The search engine's facade: everything the HTTP API, the CLI, the Lambda handlers, the bulk
tools and the evaluation can ask of it. Read the method list to see what the system does.

The facade decides nothing itself: it hands each call to the module where its rules live
(search.py: the search policy; ingest.py: a key's life cycle; keys.py: where uploads go;
feedback.py and learning.py: votes and what they teach; repair.py: checks and repairs) and
answers with the types in results.py. Its parts are wired lazily by parts.py, so a function
that only records votes never loads the model or the index.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

import numpy as np

from imgsearch import keys, repair
from imgsearch.catalog import IMAGES_PREFIX, ImageRecord, thumbnail_name, tile_name
from imgsearch.clients import client_network, is_address, is_client_id, source_address
from imgsearch.config import FeedbackMethod, Settings
from imgsearch.embedding import Embedding
from imgsearch.feedback import LOCAL_CLIENT
from imgsearch.images import TILE_SIDE as TILE_SIDE  # the tile thumbnail's side, for the API
from imgsearch.images import DecodeLimits, ImageRefused, tile_from_thumbnail
from imgsearch.index.base import SearchIndex
from imgsearch.index.builder import BuildReport
from imgsearch.ingest import IngestResult, ObjectEvent, content_type
from imgsearch.integrity import secret_file
from imgsearch.learning import trust
from imgsearch.overview import (
    Stack,
    Topic,
    class_topics,
    duplicate_stacks,
    near_copies,
    word_topics,
)
from imgsearch.parts import Given, Parts, Preloadable
from imgsearch.rate_limits import check_vote_rate
from imgsearch.remembered import Expiring
from imgsearch.results import (
    BackfillProgress,
    DirectUploadsUnavailable,
    IndexInfo,
    LearnedImage,
    ModelInfo,
    NotIndexed,
    NotUnderstood,
    Original,
    PhotoResults,
    TermReport,
    UploadForm,
    UploadOutcome,
    UploadStatus,
)
from imgsearch.search import (
    Hit,
    TextResults,
    photo_search,
    session_hidden,
    similar_images,
    text_search,
)
from imgsearch.storage import (
    DirectUploads,
    InvalidKey,
    NotFound,
    SqliteTable,
    Storage,
    StorageError,
)
from imgsearch.vocabulary import Interpretation, Vocabulary

if TYPE_CHECKING:
    from imgsearch.index.exact import Metric

log = logging.getLogger(__name__)

API_KEY_FILE = "api-key"  # the local API key, in the data directory
# Work items `count`, `browse` and `duplicates` look through for queued removals: one Query
# (DynamoDB pages 1 MB, some ten thousand items); removals queued behind a longer backlog
# count once built.
REMOVALS_LOOKED_AT = 10_000
# ... read at most this often by one process (the public count and browse would otherwise
# read them on every call); this process's own removals are seen at once.
REMOVALS_KEPT_SECONDS = 2.0
STACKS_KEPT_SECONDS = 10.0  # near-copy stacks computed again at most this often per index
UPLOAD_FORM_SECONDS = 600  # a direct upload form: long enough for a slow phone, short to leak


class ImageSearch:
    def __init__(
        self, settings: Settings, storage: Storage | None = None, **given: Unpack[Given]
    ) -> None:
        """Parts not given are made from `settings` when first needed (tests share theirs;
        the evaluation's variants share one index)."""
        self.settings = settings
        # For the engine's own modules and tests; entry points call the methods below.
        self.parts = Parts(settings, storage, **given)
        # True while start-up recovery runs: searches answer from the index as it was.
        self.recovering = False
        self._closing = threading.Event()  # stops the background writer (`close`)
        self._background: threading.Thread | None = None
        # By the index's version (generation, size): the latest only.
        self._stacks: Expiring[tuple[int, int], list[Stack]] = Expiring(1, STACKS_KEPT_SECONDS)
        # The taught words of the start view: (votes here when read, read at, topics),
        # computed by one thread at a time (`_taught_words`).
        self._words: tuple[int, float, list[Topic]] | None = None
        self._words_lock = threading.Lock()
        self._votes_here = 0  # votes changed by this process, which make the kept words stale
        # By this process's removals when read, so that one of its removals (`_removals`, one
        # more) makes them stale, a reading begun before it too: the latest only.
        self._queued_removals: Expiring[int, list[str]] = Expiring(1, REMOVALS_KEPT_SECONDS)
        self._removals = 0
        self._removals_lock = threading.Lock()

    def preload(self, parts: tuple[Preloadable, ...]) -> None:
        """Load these parts now (a Lambda's init phase, before a request waits for them);
        where searches are served (the index and the vocabulary), the class counts of the
        start view too (a first count over every shard's posting lists costs ~160 ms at 100k
        images: not a visitor's to wait for)."""
        self.parts.preload(parts)
        if {"index", "vocabulary"} <= set(parts):
            self._warm_explore()

    def _warm_explore(self) -> None:
        try:
            index = self.parts.index
            index.refresh()
            class_topics(index, self.class_names, 1)
        except Exception:  # only a head start: the first visitor counts them then
            log.exception("counting the start view's classes ahead failed")

    def close(self, *, finish_merges: bool = False) -> None:
        """Stop what runs beside the engine (the background writer, the index's merges, the
        decode workers). The background writer finishes the batch it is building (and lets
        go of the lease) before the parts it uses are closed; merges stop after the one in
        progress, or with `finish_merges` (a bulk tool's last step) all end first."""
        self._closing.set()
        if self._background is not None:
            self._background.join()
        self.parts.close(finish_merges=finish_merges)

    def variant(
        self,
        *,
        votes_file: Path | None = None,
        strategies: frozenset[str] | None = None,
        feedback_method: FeedbackMethod | None = None,
        ann: tuple[int, int] | None = None,
        expansion: bool | None = None,
    ) -> ImageSearch:
        """The same collection seen with other settings (the evaluation's methods), sharing
        this engine's loaded model: votes in their own file (`votes_file`, a fresh SQLite
        table), the vocabulary with other guessing `strategies`, another learning method,
        or other Annoy settings (`ann`: candidates and search_k per query), or similar images
        ranked with or without `expansion` (index/expansion.py). What is not
        changed is shared, the loaded index included."""
        parts = self.parts
        changes: dict[str, object] = {}
        if feedback_method is not None:
            changes["feedback_method"] = feedback_method
        if ann is not None:
            changes |= {"ann_candidates": ann[0], "ann_search_k": ann[1]}
        if expansion is not None:
            changes["expansion"] = expansion
        settings = self.settings.with_changes(**changes) if changes else self.settings
        storage = parts.storage
        if votes_file is not None:
            storage = replace(storage, feedback=SqliteTable(votes_file, "feedback"))
        vocabulary = parts.vocabulary
        if strategies is not None:
            vocabulary = Vocabulary.load(settings.vocabulary_dir, strategies)
        shared: Given = {"embedder": parts.embedder, "vocabulary": vocabulary}
        if parts.loaded("decoder"):
            shared["decoder"] = parts.decoder
        if ann is None:
            shared["index"] = parts.index
        return ImageSearch(settings, storage, **shared)

    # Who is asking -------------------------------------------------------------------------

    def client_id(self, peer: str | None, forwarded_for: list[str] | None = None) -> str:
        """The id of the client a request came from (see clients.py): what votes and rate
        limits are counted against."""
        return self.parts.client_ids.of(self.client_address(peer, forwarded_for))

    def client_address(self, peer: str | None, forwarded_for: list[str] | None = None) -> str:
        """The client a request came from, as `client_id` counts it but unhashed: it reads no
        secret (functions without the feedback table's, and requests other than votes, must
        not need it). For bounds held in memory only; never stored."""
        address = source_address(peer, forwarded_for or [], self.settings.trusted_proxy_networks)
        return client_network(address)

    @staticmethod
    def client_network(address: str) -> str:
        """The network an address counts as one client of (IPv6: its /64), for bounds on
        connections per client."""
        return client_network(address)

    def api_key(self) -> tuple[str, bool]:
        """The local API key and whether it was just created: from the settings, else the data
        directory's key file, else a new random key written there (readable by its owner only).

        Raises UnusableFile for a key file that is empty or cannot be read: a silent lock-out
        (or a new key nobody was shown) would be worse than refusing to start.
        """
        if self.settings.api_key:
            return self.settings.api_key, False
        return secret_file(
            Path(self.settings.data_dir) / API_KEY_FILE,
            lambda: secrets.token_urlsafe(24),
            what="the API key file",
            fix="put a key in it, or delete it to have a new one made, or set IMGSEARCH_API_KEY",
        )

    # The collection ------------------------------------------------------------------------

    def count(self) -> int:
        """The images in the collection: those the index serves, less those whose removal
        is queued (gone for every answer already, for the index at its next build)."""
        index = self.parts.index
        index.refresh()
        return len(index) - len(self._leaving())

    @property
    def class_counts_known(self) -> bool:
        """False while the index has lost its per-class counts (keyword chips then cost a
        query per class) until a reindex: see index/s3vectors.py."""
        return self.parts.index.class_counts_known

    def _leaving(self) -> set[str]:
        """Images the index still serves whose removal is queued."""
        removals = self._removals
        queued = self._queued_removals.get(removals)
        if queued is None:
            queued = self.parts.catalog.queued_removals(REMOVALS_LOOKED_AT)
            self._queued_removals.put(removals, queued)
        return self.parts.index.present(queued) if queued else set()

    def _forget_queued_removals(self) -> None:
        with self._removals_lock:  # += is a read and a write: two removals must both count
            self._removals += 1

    def image(self, image_id: str) -> ImageRecord | None:
        record = self.parts.catalog.image(image_id)
        return record if record and record.status != "removed" else None

    def images(self, image_ids: Iterable[str]) -> dict[str, ImageRecord]:
        """The records of those of `image_ids` in the collection, by id: a page of results
        costs one batched read (DynamoDB: BatchGetItem), not a read per result."""
        found = self.parts.catalog.images(image_ids)
        return {i: record for i, record in found.items() if record.status != "removed"}

    def browse(self, limit: int, offset: int) -> tuple[list[ImageRecord], int]:
        """The collection, newest first, and its size (see `count`)."""
        index = self.parts.index
        index.refresh()
        leaving = self._leaving()
        live = (i for i in index.image_ids() if i not in leaving)
        ids = list(itertools.islice(live, offset, offset + limit))
        records = self.images(ids)
        return [records[i] for i in ids if i in records], len(index) - len(leaving)

    def find_key(self, key: str) -> ImageRecord | None:
        """The image stored under `key`, if any."""
        try:
            held = self.parts.catalog.key(key)
        except InvalidKey:
            return None  # ingest refuses such a key: nothing can be stored under it
        if held is None or held.status != "present" or not held.image_id:
            return None
        return self.image(held.image_id)

    def original(self, image_id: str) -> Original:
        """Where an image's bytes are, or the bytes. Raises NotIndexed, or NotFound if the
        bytes are gone."""
        record = self._existing(image_id)
        catalog = self.parts.catalog
        media_type = content_type(record.format)
        url = catalog.original_url(record.key)
        if url:
            return Original(media_type, url=url)
        return Original(media_type, data=catalog.original(record.key))

    def thumbnail(self, image_id: str, side: int | None = None) -> Original:
        """A JPEG at most 384 pixels on its longer side (see `original`): where it is served
        as static content (`cdn_thumbnail_url`), else where the store says, else the bytes; with
        `side` (smaller than 384) the bytes scaled down to it, wherever the thumbnail is (a
        few KB, which browsers keep: an id names its content); with `side` TILE_SIDE the tile
        thumbnail (`tile`)."""
        self._existing(image_id)
        if side == TILE_SIDE:
            return self.tile(image_id)
        if side is not None:
            return Original("image/jpeg", data=self.parts.catalog.small_thumbnail(image_id, side))
        static = self.cdn_thumbnail_url(image_id)
        if static:
            return Original("image/jpeg", url=static)
        catalog = self.parts.catalog
        url = catalog.thumbnail_url(image_id)
        if url:
            return Original("image/jpeg", url=url)
        return Original("image/jpeg", data=catalog.thumbnail(image_id))

    def tile(self, image_id: str) -> Original:
        """The tile thumbnail, a WebP at most TILE_SIDE pixels made at ingest (see
        `thumbnail`); for an image stored before tiles were made, made now from its thumbnail
        and stored, so that it is a static file from then on."""
        self._existing(image_id)
        static = self.cdn_tile_url(image_id)
        if static:
            return Original("image/webp", url=static)
        catalog = self.parts.catalog
        url = catalog.tile_url(image_id)
        if url:
            return Original("image/webp", url=url)
        try:
            return Original("image/webp", data=catalog.tile(image_id))
        except NotFound:
            tile = tile_from_thumbnail(catalog.thumbnail(image_id))
            catalog.put_tile(image_id, tile)
            return Original("image/webp", data=tile)

    def cdn_tile_url(self, image_id: str) -> str | None:
        """Where a CDN serves the tile thumbnail (see `cdn_thumbnail_url`); else None."""
        base = self.settings.thumbnail_base_url
        return f"{base.rstrip('/')}/{tile_name(image_id)}" if base else None

    def cdn_thumbnail_url(self, image_id: str) -> str | None:
        """The URL (or path from the root) a CDN serves an image's thumbnail at, when one
        serves the bucket's thumbnails (settings.thumbnail_base_url); else None."""
        base = self.settings.thumbnail_base_url
        return f"{base.rstrip('/')}/{thumbnail_name(image_id)}" if base else None

    def _existing(self, image_id: str) -> ImageRecord:
        record = self.image(image_id)
        if record is None:
            raise NotIndexed(image_id)
        return record

    # Changing the collection ---------------------------------------------------------------

    def ingest(self, key: str, data: bytes) -> IngestResult:
        """Store and embed an image under `key`, queued for the next `build_index` (the bulk
        tools build once per batch). Bytes added again cancel their queued removal: the
        removals `count` keeps are read again."""
        result = self.parts.ingestor.add(key, data)
        self._forget_queued_removals()
        return result

    @contextmanager
    def deferred_durability(self) -> Iterator[None]:
        """Within the block, this thread's ingests (and the work they run in parallel) store
        their files without waiting for each to reach the disk: they become durable together,
        before this process's next index build publishes them (`build_index`). For bulk
        ingest, whose batch is acknowledged once built; a crash of the process loses none of
        them either way (see ObjectStore)."""
        with self.parts.storage.objects.deferred_durability():
            yield

    def add(self, key: str, data: bytes, *, wait: float = 60.0) -> IngestResult:
        """Ingest one image under `key` and return once the index serves it (or `wait`
        seconds passed), with the ingest's result (a refusal too: not raised). The upload
        without a key of its own: `upload` calls it under the key it settles on (a name made
        from the file, taken again if another upload replaced it), and tests to add bytes
        under a chosen key."""
        result = self.ingest(key, data)
        if result.status in ("added", "duplicate", "unchanged") and result.image_id:
            try:
                self._wait_indexed(result.image_id, wait)
            except StorageError:
                # The build failed after the image got in (say, releasing the lease on a
                # full disk): the upload is done. Otherwise it stays queued, and the error
                # tells the client its image is not searchable yet.
                record = self.parts.catalog.image(result.image_id)
                if record is None or record.status != "indexed":
                    raise
                log.warning("the index build failed after indexing %s", key, exc_info=True)
        return result

    def upload(self, filename: str, data: bytes, *, key: str | None = None) -> UploadOutcome:
        """Add an uploaded file, under `key` or a key named after the file (keys.py); returns
        once it is searchable. Raises ImageRefused (with its reason), InvalidKey, DecoderBusy."""
        stored_as = key or keys.upload_key(self.parts.catalog, filename, data)
        result = self.add(stored_as, data, wait=self.settings.upload_wait_seconds)
        if key is None and result.image_id and self._lost_key(stored_as, result.image_id):
            # Another upload of other bytes took the name meanwhile and replaced these: they
            # take the name with their content id, as if they had come second (keys.py).
            stored_as = keys.upload_key(self.parts.catalog, filename, data)
            result = self.add(stored_as, data, wait=self.settings.upload_wait_seconds)
        if result.status == "refused" or result.image_id is None:
            raise ImageRefused(result.code or "refused", result.reason or "refused")
        record = self.image(result.image_id)
        if record is None or record.status != "indexed":
            return UploadOutcome(result.image_id, stored_as, "pending")
        match result.status:
            case "added" | "duplicate" | "unchanged" as status:
                return UploadOutcome(result.image_id, stored_as, status)
            case _:  # a removal or an older event: nothing an upload can be
                raise AssertionError(f"an upload ended as {result.status!r}")

    def _lost_key(self, key: str, image_id: str) -> bool:
        """Whether `key` holds other bytes than `image_id`'s, which it was given."""
        held = self.find_key(key)
        return held is not None and held.id != image_id

    def remove_image(self, image_id: str) -> list[IngestResult]:
        """Remove an image: every key holding it is forgotten and its bytes deleted, and its
        removal from the index queued, not built (an API request never drains the queue): it
        leaves every answer at once, since results are checked against the catalog, and the
        index at the next build (the cloud's embed function or its schedule, or the background
        writer of `imgsearch serve`). Raises NotIndexed."""
        record = self._existing(image_id)
        results = [self.parts.ingestor.remove(key) for key in record.keys]
        self._forget_queued_removals()
        return results

    def upload_form(self, filename: str, content_type: str) -> UploadForm:
        """A signed form to upload one image straight into the bucket (cloud only: raises
        DirectUploadsUnavailable on local storage)."""
        store = self.parts.storage.objects
        if not isinstance(store, DirectUploads):
            raise DirectUploadsUnavailable("direct uploads need the cloud backend")
        key = keys.direct_upload_key(filename)
        form = self.parts.catalog.original_upload_form(
            key,
            content_type=content_type,
            max_bytes=self.settings.max_image_bytes,
            expires=UPLOAD_FORM_SECONDS,
        )
        return UploadForm(form.url, form.fields, key, UPLOAD_FORM_SECONDS)

    def upload_status(self, key: str) -> UploadStatus:
        """What became of a key's upload: pending until its event was applied. Raises
        InvalidKey."""
        record = self.parts.catalog.key(key)
        if record is None:
            return UploadStatus(key, "pending")
        return UploadStatus(key, record.status, record.image_id, record.reason)

    def apply_event(self, event: ObjectEvent) -> IngestResult | None:
        """Apply a bucket event (see Ingestor.apply); the index is built by `build_index`."""
        result = self.parts.ingestor.apply(event)
        self._forget_queued_removals()
        return result

    def record_failure(self, event: ObjectEvent, reason: str) -> None:
        """Give up on an event whose retries are spent (see Ingestor.record_failure)."""
        self.parts.ingestor.record_failure(event, reason)

    def backfill(
        self,
        prefix: str = "",
        *,
        start_after: str | None = None,
        reembed: bool = False,
        batch_size: int = 100,
    ) -> Iterator[BackfillProgress]:
        """Index what the store holds under images/`prefix` already (objects put there before
        the bucket's events reached the queue, or whose events were lost), in key order,
        after `start_after`: each object is applied as the bucket's "created" event would be
        (ingest is idempotent: what is indexed already stays as it is), and the index is
        built once per batch. Yields progress after each batch, to resume from its last key.

        `reembed`: after a model change, embed every image again with the configured model
        (images not yet in the catalog are ingested), then rebuild the index from the new
        embeddings once at the end (vectors of two models cannot share an index: until then
        searches are answered from the old one, by other processes).
        """
        listed, indexed, last_key = 0, 0, start_after
        counts: Counter[str] = Counter()
        done: set[str] = set()  # images re-embedded, by id: once, whichever key holds them
        keys = self._stored_keys(prefix, start_after)
        while batch := list(itertools.islice(keys, batch_size)):
            for store_key in batch:
                counts[self._backfill_one(store_key, reembed, done)] += 1
            listed += len(batch)
            last_key = batch[-1]
            if not reembed:
                indexed += self.build_index().added
            yield BackfillProgress(listed, dict(counts), last_key, indexed, False)
        if reembed:
            indexed = self.reindex().added
        yield BackfillProgress(listed, dict(counts), last_key, indexed, True)

    def _stored_keys(self, prefix: str, start_after: str | None) -> Iterator[str]:
        """The store's keys under images/`prefix`, in order, after `start_after`."""
        for info in self.parts.storage.objects.list(IMAGES_PREFIX + prefix):
            if start_after is None or info.key > start_after:
                yield info.key

    def _backfill_one(self, store_key: str, reembed: bool, done: set[str]) -> str:
        """Apply one stored object (see `backfill`); returns what became of it."""
        key = store_key.removeprefix(IMAGES_PREFIX)
        ingestor = self.parts.ingestor
        if reembed:
            held = self.find_key(key)
            if held is not None:
                if held.id in done:
                    return "unchanged"
                try:
                    reembedded = ingestor.reembed(held.id, [key])
                except ImageRefused as refusal:  # the limits changed since it was taken in
                    log.warning("not re-embedded: %s: %s", key, refusal)
                    return "refused"
                if reembedded:
                    done.add(held.id)
                    return "reembedded"
                # Other bytes than its record says, or none any more: applied as they are.
        result = ingestor.apply(ObjectEvent("created", key, None))
        return result.status if result is not None else "ignored"

    # The index -----------------------------------------------------------------------------

    def build_index(self, *, budget: float | None = None, one_batch: bool = False) -> BuildReport:
        """Index what is queued (ingested or removed since the last build), within `budget`
        seconds (None: the `index_build_seconds` setting); the rest stays queued. With
        `one_batch`, index one batch (the builder's batch size at most) and leave what is
        queued meanwhile to the next call: a bulk ingest builds once per batch, instead of
        chasing what its workers add during the build. What was stored with deferred
        durability is made durable first, published or not."""
        self.parts.storage.objects.make_durable()
        if budget is None:
            budget = self.settings.index_build_seconds
        report = self.parts.builder.run(budget=budget, until=(lambda: True) if one_batch else None)
        # Whether or not this build published: an upload's request builds its own image and
        # leaves old builds to the next build_index (the cloud's embed function and schedule).
        # A failure here loses nothing: what was built stays built, the next call collects.
        try:
            self.parts.builder.collect_garbage()
        except Exception:
            log.exception("deleting old shard builds failed; the next build tries again")
        self.parts.index.refresh(force=True)
        return report

    def index_backlog(self, limit: int) -> int:
        """How many images wait for the index build (added or removed, not yet built),
        counted up to `limit`: the index's lag, for the operator's metrics."""
        return len(self.parts.catalog.pending(limit=limit))

    def reindex(self) -> BuildReport:
        """Rebuild the index from the stored embeddings (see IndexBuilder.reindex). Call it
        before anything else touched the index: the old manifest may be unreadable."""
        self.parts.replace_index(self.parts.unloaded_index())
        report = self.parts.builder.reindex()
        self.parts.builder.collect_garbage()
        self.parts.index.refresh(force=True)
        return report

    def recover(self, *, budget: float | None = None) -> BuildReport:
        """Finish or roll back the changes to keys whose process died (see Ingestor), then
        index what is queued (deletions acknowledged but not yet applied, uploads not yet
        searchable) within `budget` seconds (see `build_index`; with what is left of it, a
        slice of an older collection's near-copy lists: `IndexBuilder.run`): what a start does
        after a crash, and the cloud after each batch and on its schedule."""
        recovered = self.parts.ingestor.recover_changes()
        report = self.build_index(budget=budget)
        if recovered:
            log.warning(
                "recovered %d interrupted changes; indexed %d queued additions and %d removals",
                recovered,
                report.added,
                report.removed,
            )
        return report

    def recover_in_background(self) -> threading.Thread:
        """Run `recover` in a thread, so that a start with a long queue serves meanwhile
        (`recovering` tells health checks; removed images are never shown: results are
        checked against the catalog). Then, until `close`, apply what is queued every
        `index_drain_seconds`: deletions only queue their removal from the index, and an
        upload whose request stopped waiting leaves its image queued (the cloud's schedule
        does the same there)."""

        def build() -> BuildReport:  # stops after a batch once `close` is called
            report = self.parts.builder.run(stop=self._closing.is_set)
            self.parts.index.refresh(force=True)
            return report

        def collect_garbage() -> None:
            # Here, not in the uploads' builds: a merged-away shard's files are deleted
            # off the request path, once their grace period is over.
            if self.parts.builder.collect_garbage():
                log.info("deleted shard files no publication names")

        def run() -> None:
            try:
                self.parts.ingestor.recover_changes()
                report = build()
                self._warm_explore()
                if report.batches:
                    log.warning(
                        "indexed %d additions and %d removals queued before the start",
                        report.added,
                        report.removed,
                    )
            except Exception:  # the next round drains the queue all the same
                log.exception("recovery at start failed")
            finally:
                self.recovering = False
            while not self._closing.wait(self.settings.index_drain_seconds):
                try:
                    # What another process left when it died meanwhile (a server worker
                    # killed mid-request), or an undo here that failed: finished each round.
                    self.parts.ingestor.recover_changes()
                    if self.parts.builder.has_work():  # (queued, or near-copy lists)
                        build()
                    collect_garbage()
                except Exception:
                    log.exception("a background index build failed; trying again")

        self.recovering = True
        thread = threading.Thread(target=run, name="imgsearch-recovery", daemon=True)
        thread.start()
        self._background = thread
        return thread

    def _wait_indexed(self, image_id: str, wait: float) -> None:
        """Build until the image is in the index; while another builder holds the lease,
        wait for it (it may index this image too) and try again."""

        def indexed() -> bool:
            record = self.parts.catalog.image(image_id)
            return record is None or record.status != "pending"

        deadline = time.monotonic() + wait
        while True:
            report = self.parts.builder.run(
                until=indexed, budget=max(0.0, deadline - time.monotonic())
            )
            # (drained with the image still pending: it was skipped, nothing will index it)
            if indexed() or report.drained or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        self.parts.index.refresh(force=True)

    # Search --------------------------------------------------------------------------------

    def search_text(
        self,
        query: str,
        *,
        limit: int = 20,
        offset: int = 0,
        session: str | None = None,
        exclude_classes: Collection[int] = (),
    ) -> TextResults:
        """Images for a few words, best first, re-ranked by what users taught (search.py).
        `exclude_classes` drops ImageNet classes the user struck from the interpretation;
        NotUnderstood for an id that names no class."""
        classes = len(self.parts.vocabulary.class_names)
        if any(not 0 <= c < classes for c in exclude_classes):
            raise NotUnderstood(f"exclude: class ids are 0..{classes - 1}")
        parts = self.parts
        parts.index.refresh()
        return text_search(
            parts.index,
            parts.vocabulary,
            parts.learner,
            query,
            limit=limit,
            offset=offset,
            session=session,
            exclude_classes=exclude_classes,
        )

    def similar(self, image_id: str, *, limit: int = 20, offset: int = 0) -> list[Hit]:
        """Images most like an indexed one ("more like this"). Raises NotIndexed, also for an
        image removed whose removal the index has not applied yet."""
        self._existing(image_id)
        parts = self.parts
        parts.index.refresh()
        hits = similar_images(
            parts.index,
            parts.neighbourhoods,
            image_id,
            limit=limit,
            offset=offset,
            expanded=self.settings.expansion,
        )
        if hits is None:
            raise NotIndexed(image_id)
        return hits

    def answers_version(self) -> Hashable | None:
        """A value that stays the same only while every read-only answer (a record, "more
        like this", a result's details) would stay the same: the catalog's change token
        (every write to it, by any process: records, keys, removals, lists; not votes, which
        are in a table of their own and change none of these answers), the
        index generation this process serves (after its usual `refresh`) and the version of
        the neighbour lists it keeps. Read it BEFORE what is kept under it, so that what was
        read before a write is never kept under that write's token. None: the catalog cannot
        tell cheaply (DynamoDB), and nothing may be kept."""
        catalog = self.parts.catalog.change_token()
        if catalog is None:
            return None
        index = self.parts.index
        index.refresh()
        return (catalog, index.generation, self.parts.neighbourhoods.kept_version())

    # What the collection holds -------------------------------------------------------------

    def explore(self, limit: int = 12) -> list[tuple[Topic, ImageRecord]]:
        """Things in the photos, for a start view: the words votes taught and the classes
        most photos show, each with how many photos and a cover photo (overview.py), and the
        cover's record. A topic whose cover was removed since the index last changed waits
        for the next build (which picks another)."""
        index = self.parts.index
        index.refresh()
        words = self._taught_words(index)
        classes = class_topics(index, self.class_names, limit)
        # At most `limit` in all; taught words take up to half, classes fill the rest.
        shown_words = words[: max(limit - len(classes), (limit + 1) // 2)]
        topics = [*shown_words, *classes[: limit - len(shown_words)]]
        covers = self.images(topic.cover for topic in topics)
        return [(topic, covers[topic.cover]) for topic in topics if topic.cover in covers]

    def _taught_words(self, index: SearchIndex) -> list[Topic]:
        """`word_topics`, kept until this process changes a vote and for at most
        `feedback_cache_seconds` (what other processes' votes may take to show anywhere), and
        computed by one thread at a time: every start page asks, and the words voted on are
        many more than those taught."""
        votes_asked_after = self._votes_here
        with self._words_lock:
            kept = self._words
            fresh = time.monotonic() - self.settings.feedback_cache_seconds
            # Any reading begun after the votes this request follows will do: requests that
            # waited here take the one made meanwhile, not one each (with votes landing all
            # the while, each read every taught word in turn, holding a server thread).
            if kept and kept[0] >= votes_asked_after and kept[1] >= fresh:
                return kept[2]
            votes_here, read_at = self._votes_here, time.monotonic()
            words = word_topics(self.parts.feedback, index)
            self._words = (votes_here, read_at, words)
            return words

    def near_copies(self, image_id: str) -> list[Hit]:
        """The images that are near-copies of an indexed one (settings.duplicate_distance),
        nearest first. Raises NotIndexed."""
        self._existing(image_id)
        self.parts.index.refresh()
        found = near_copies(
            self.parts.catalog, self.parts.index, image_id, self.settings.duplicate_distance
        )
        return [Hit(i, 1.0, "similar") for i in found]

    def duplicates(self, limit: int, offset: int = 0) -> tuple[list[tuple[ImageRecord, ...]], int]:
        """A page of the collection's stacks of near-copies, newest first, each its members'
        records newest first, and how many stacks there are. Images whose removal is queued
        are left out of both (as `count` and `browse` leave them), and a stack left with
        fewer than two is none; on the page, so is an image without a record. Stacks come
        from the catalog's near-copy lists (see `_stacks_now`)."""
        leaving = self._leaving()
        stacks = [
            members
            for stack in self._stacks_now()
            if len(members := tuple(i for i in stack.image_ids if i not in leaving)) > 1
        ]
        page = stacks[offset : offset + limit]
        records = self.images(i for members in page for i in members)
        shown = [
            found
            for members in page
            if len(found := tuple(records[i] for i in members if i in records)) > 1
        ]
        return shown, len(stacks)

    def _stacks_now(self) -> list[Stack]:
        """Every stack of near-copies the index serves, newest first (from the catalog's
        near-copy lists; kept until the index changes, and at most STACKS_KEPT_SECONDS: the
        writer updates the lists just after it publishes the index)."""
        index = self.parts.index
        index.refresh()
        generation = (index.generation, len(index))
        stacks = self._stacks.get(generation)
        if stacks is None:
            stacks = duplicate_stacks(self.parts.catalog, index, self.settings.duplicate_distance)
            self._stacks.put(generation, stacks)
        return stacks

    def search_image(
        self,
        data: bytes,
        *,
        limit: int = 20,
        offset: int = 0,
        query: str | None = None,
        session: str | None = None,
    ) -> PhotoResults:
        """Images most like a photo anyone may send (it is not stored), decoded within the
        open endpoint's limits. With `query`, the photo is an example of that word: the
        result names the word as votes must, and leaves out what `session` voted not
        relevant for it. Raises ImageRefused, or DecoderBusy."""
        parts = self.parts
        parts.index.refresh()
        term = parts.vocabulary.normalise(query) if query else None
        hidden = session_hidden(parts.feedback, term, session)
        limits = DecodeLimits.from_settings(self.settings, open_endpoint=True)
        decoded = parts.ingestor.decode(data, limits)
        features = parts.embedder.embed(decoded.image).features
        hits = self.similar_to_features(features, limit=limit, offset=offset, hidden=hidden)
        return PhotoResults(term, hits)

    def similar_to_features(
        self,
        features: np.ndarray,
        *,
        limit: int = 20,
        offset: int = 0,
        hidden: Collection[str] = (),
    ) -> list[Hit]:
        """Images most like a photo's features, as reverse search ranks them (expanded by
        the photo's nearest images unless the `expansion` setting is off)."""
        parts = self.parts
        parts.index.refresh()
        return photo_search(
            parts.index,
            parts.neighbourhoods,
            features,
            limit=limit,
            offset=offset,
            hidden=hidden,
            expanded=self.settings.expansion,
            # A near-copy (resized, re-encoded) gets the page of the image it copies.
            copy_distance=self.settings.duplicate_distance,
        )

    def interpret(self, query: str) -> Interpretation:
        """How the words of a query are understood (without searching)."""
        return self.parts.vocabulary.interpret(query)

    @property
    def class_names(self) -> list[str]:
        """The model's class labels, by class id."""
        return list(self.parts.vocabulary.class_names)

    # Votes ---------------------------------------------------------------------------------

    def vote(
        self, query: str, image_id: str, value: int, session: str, client: str = LOCAL_CLIENT
    ) -> str:
        """Record a vote of `session` (`value` 1: relevant, -1: not), cast from `client` (a
        client id); returns the normalised term it was recorded under (`withdraw` takes a vote
        back). Raises NotIndexed, or NotUnderstood for a query without words."""
        self._existing(image_id)
        term = self.term(query)
        self.parts.feedback.vote(term, image_id, session, value, client)
        self._forget_learned(term)
        return term

    def withdraw(self, query: str, image_id: str, session: str) -> tuple[str, bool]:
        """Take back `session`'s vote on the image, from wherever it was cast; returns the
        normalised term, and whether the session had a vote there to take back."""
        self._existing(image_id)
        term = self.term(query)
        withdrawn = self.parts.feedback.withdraw(term, image_id, session)
        if withdrawn:
            self._forget_learned(term)
        return term, withdrawn

    def _forget_learned(self, term: str | None = None) -> None:
        """Drop what this process keeps of the term's votes (of every term's: None)."""
        self._votes_here += 1
        # Only a learner this process has built can hold the term's old votes; building one
        # here would load the index into a process that only records votes (the feedback
        # function, which has no Annoy).
        if self.parts.loaded("learner"):
            if term is None:
                self.parts.learner.forget_all()
            else:
                self.parts.learner.forget(term)

    def check_vote_rate(self, client: str, session: str) -> None:
        """Count a vote against its session's and client's limits per minute and its client's
        per day; raises TooMany beyond them."""
        check_vote_rate(
            self.parts.storage.feedback,
            session=session,
            client=client,
            per_session=self.settings.votes_per_session_minute,
            per_client=self.settings.votes_per_client_minute,
            per_client_day=self.settings.votes_per_client_day,
        )

    def term(self, query: str) -> str:
        """The query as votes store it; NotUnderstood if it has no words."""
        term = self.parts.vocabulary.normalise(query)
        if not term:
            raise NotUnderstood("the query has no words")
        return term

    # The owner's controls over what votes taught ---------------------------------------------

    def learned(self, query: str) -> TermReport:
        """What votes taught about a query's term, as stored (see feedback.py), with each
        image's weight for other visitors."""
        feedback = self.parts.feedback
        summary = feedback.summary(self.term(query))
        images = []
        for agreement in summary.images:
            record = self.image(agreement.image_id)
            images.append(LearnedImage(agreement, record.key if record else None, trust(agreement)))
        # By weight as shown (4 decimals): votes seconds apart must not reorder equals.
        images.sort(
            key=lambda i: (-abs(round(i.weight, 4)), -i.agreement.up_clients, i.agreement.image_id)
        )
        voters = sorted(feedback.voters(summary.term).items(), key=lambda v: (-sum(v[1]), v[0]))
        return TermReport(summary, images, [(c, up, down) for c, (up, down) in voters])

    def reset_term(self, query: str) -> tuple[str, int]:
        """Forget what votes taught about a term; returns it and how many votes it had."""
        term = self.term(query)
        removed = self.parts.feedback.reset(term)
        self._forget_learned(term)
        return term, removed

    def named_client(self, name: str) -> str:
        """A client id from what the owner names it by: its id, or an address (hashed as a
        request from it would be). NotUnderstood for anything else."""
        if is_client_id(name) or name == LOCAL_CLIENT:
            return name
        if not is_address(name):
            raise NotUnderstood(f"{name[:60]!r} is neither a client id nor an IP address")
        return self.parts.client_ids.of(name)

    def drop_client(self, name: str) -> tuple[str, int]:
        """Remove every vote of a client (by id or address); returns its id and the count."""
        client = self.named_client(name)
        removed = self.parts.feedback.drop_client(client)
        self._forget_learned()
        return client, removed

    # Checks and repairs (repair.py) ----------------------------------------------------------

    def check_at_start(self) -> None:
        """The quick checks before serving; raises DamagedFile or IndexFormatError."""
        repair.check_at_start(self.parts)

    def check(self) -> list[repair.Finding]:
        """Every check of what is stored."""
        return repair.check(self.parts)

    def repair(self, findings: list[repair.Finding]) -> ImageSearch:
        """Fix what `check` found from what is stored; returns the engine to go on with (a
        new one if an SQLite file was rebuilt or begun afresh)."""
        if any(finding.fix == "reset_feedback" for finding in findings):
            repair.close_files(self.parts)  # this engine is done with them
            repair.move_feedback_aside(self.settings)
            parts = self.parts
            # A new engine on the new file, sharing the model and words this one loaded.
            shared: Given = {}
            if parts.loaded("embedder"):
                shared["embedder"] = parts.embedder
            if parts.loaded("vocabulary"):
                shared["vocabulary"] = parts.vocabulary
            fresh = ImageSearch(self.settings, **shared)
            # Only what was found (and reported) before; the caller's next check shows the rest.
            others = [f for f in findings if f.fix != "reset_feedback"]
            return fresh.repair(others) if others else fresh
        if any(finding.fix == "rebuild_catalog" for finding in findings):
            repair.close_files(self.parts)
            return ImageSearch.rebuild_catalog(self.settings)
        if repair.fix_files(self.parts, findings):
            self.reindex()
        else:
            self.build_index()
        return self

    @classmethod
    def replace_damaged_file(
        cls, settings: Settings, name: str, **given: Unpack[Given]
    ) -> ImageSearch:
        """An SQLite file of the data directory (`name`) too damaged to open: the catalog's
        is rebuilt (`rebuild_catalog`); the votes' is moved aside and begun afresh (its votes
        are lost). `given`: parts to use, as for the constructor."""
        if repair.damaged_file_fix(name) == "reset_feedback":
            repair.move_feedback_aside(settings)
            return cls(settings, **given)
        return cls.rebuild_catalog(settings)

    @classmethod
    def rebuild_catalog(cls, settings: Settings) -> ImageSearch:
        """Move a damaged catalog file aside, ingest every stored original into a new one and
        rebuild the index. Votes are in a file of their own (storage.FEEDBACK_FILE) and stay;
        a collection made before that kept them in the catalog's file, and loses them with it
        if it was damaged before its first open by this version (the old file stays beside
        the new one)."""
        repair.move_catalog_aside(settings)
        fresh = cls(settings)
        repair.ingest_originals(fresh.parts)
        fresh.reindex()
        return fresh

    @staticmethod
    def create_cloud_resources(settings: Settings) -> list[str]:
        """Create the bucket and tables the settings name, as infra/template.yaml defines
        them, in an AWS emulator; returns the names of those it created."""
        from imgsearch.storage.aws_resources import create_missing_resources

        return create_missing_resources(settings)

    # Embeddings, for the bulk tools and the evaluation ---------------------------------------

    def model_info(self) -> ModelInfo:
        """The model's name and what it outputs per image (this loads it)."""
        embedder = self.parts.embedder
        return ModelInfo(
            embedder.spec.name, embedder.feature_dim, embedder.num_classes, embedder.runs_at_once
        )

    def embed(self, data: bytes) -> Embedding:
        """Decode and embed an image without storing anything. Raises ImageRefused."""
        decoded = self.parts.ingestor.decode(data)
        return self.parts.embedder.embed(decoded.image)

    def embedding(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The features and class probabilities ingest stored for an image (not normalised).
        Raises NotFound."""
        return self.parts.catalog.embedding(image_id)

    def indexed_ids(self) -> Iterator[str]:
        """The ids of every image the index serves, newest first."""
        index = self.parts.index
        index.refresh()
        return index.image_ids()

    def is_indexed(self, image_id: str) -> bool:
        """Whether the index serves the image."""
        return image_id in self.parts.index

    def nearest_to(self, image_id: str, k: int, *, exact: bool = False) -> list[str]:
        """The k images nearest to an indexed one through the index (its Annoy settings), or
        by exact search over the same vectors. Raises NotIndexed."""
        index = self.parts.index
        vector = index.vector(image_id)
        if vector is None:
            raise NotIndexed(image_id)
        return [i for i, _ in index.nearest(vector, k, exclude={image_id}, exact=exact)]

    def index_info(self) -> IndexInfo:
        """The index's shape and query settings."""
        index = self.parts.index
        index.refresh()
        return IndexInfo(index.shard_count, index.candidates, index.search_k, self.parts.model.name)

    @staticmethod
    def exact_neighbours(
        features: np.ndarray, k: int, *, metric: Metric, jobs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest rows of every row (see index/exact.py): indices and distances."""
        from imgsearch.index.exact import exact_neighbours  # the CLI's: not in Lambda bundles

        return exact_neighbours(features, k, metric=metric, jobs=jobs)
