"""Ingest: bytes under a key become an image in the catalog, queued for the index.

Idempotent per content: an image's id is the hash of its bytes, so the same bytes under two
keys are one image that remembers both keys. Ordered per key: when events carry an S3
`sequencer`, an older event never undoes a newer one. A refused file is recorded under its
key with the reason and changes nothing else. All or nothing: each change to a key is
journalled (`Change`) from before its first write to after its last, so that one that fails
is undone at once, and one whose process died is finished or rolled back later.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from imgsearch.catalog import (
    Catalog,
    Change,
    ImageRecord,
    KeyRecord,
    PendingOp,
)
from imgsearch.decode_pool import Decoder
from imgsearch.embedding import ImageEmbedder
from imgsearch.images import DecodedImage, DecodeLimits, DraftBox, ImageRefused, tile_webp
from imgsearch.owners import is_this_process, new_owner, owner_is_alive
from imgsearch.storage import (
    InvalidKey,
    NotFound,
    PreconditionFailed,
    StorageError,
    retry_on_conflict,
)
from imgsearch.storage.validation import validate_key

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 384
# A change is recovered once its process is gone, or once it is older than any request or
# Lambda invocation (15 minutes at most) can run.
CHANGE_TIMEOUT_SECONDS = 900.0
TOP_CLASSES = 5

# The changes this process is applying now (their tokens), whichever Ingestor applies them:
# one of this process not among them was left by a failed undo, and is recovered at once.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()

IngestStatus = Literal["added", "duplicate", "unchanged", "refused", "removed", "stale"]


@dataclass(frozen=True)
class IngestResult:
    key: str
    status: IngestStatus
    image_id: str | None = None
    reason: str | None = None  # why a file was refused, for people
    code: str | None = None  # the same as a short code, for programs
    replaced: str | None = None  # the other image the key held until now


@dataclass(frozen=True)
class ObjectEvent:
    """An object of the bucket created or removed, as the cloud reports it: at least once, in
    any order; `sequencer` orders the events of one key (S3's)."""

    kind: Literal["created", "removed"]
    key: str  # relative to images/
    sequencer: str | None


def content_id(data: bytes) -> str:
    """An image's id: the same bytes always get the same id."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class _Journal:
    """A change in progress, and the bytes its key held before it (to undo an add)."""

    change: Change
    version: int = 0  # of the change's record
    original_saved: bool = False
    original: bytes | None = None
    ended: bool = False  # closed by the change's last write (see `Catalog.put_key`)


def sequencer_is_newer(candidate: str | None, current: str | None) -> bool:
    """S3 sequencers: right-pad the shorter with zeros, then compare as hex strings."""
    if candidate is None or current is None:
        return True
    width = max(len(candidate), len(current))
    return candidate.ljust(width, "0").upper() > current.ljust(width, "0").upper()


def _top_classes(probabilities: np.ndarray) -> tuple[tuple[int, float], ...]:
    """What an image record keeps of the model's output: its most probable classes."""
    top = np.argsort(-probabilities)[:TOP_CLASSES]
    return tuple((int(c), round(float(probabilities[c]), 5)) for c in top)


class Ingestor:
    def __init__(
        self,
        catalog: Catalog,
        embedder: ImageEmbedder,
        *,
        limits: DecodeLimits,
        decoder: Decoder,
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.limits = limits
        self.decoder = decoder

    def decode(
        self,
        data: bytes,
        limits: DecodeLimits | None = None,
    ) -> DecodedImage:
        """Decode for the model, within `limits` (by default the collection's). Raises
        ImageRefused, or DecoderBusy when every decoder is taken."""
        return self.decoder.decode(data, limits or self.limits, draft_size=self.draft_box)

    @property
    def draft_box(self) -> DraftBox:
        """The smallest picture a decode may give without losing what the model and the
        thumbnail see: the model's centre square at its input size, the thumbnail's longer
        side (a 12-megapixel JPEG then decodes at 1/8 of its sides)."""
        spec = self.embedder.spec
        return DraftBox(math.ceil(spec.input_size / spec.crop_fraction), THUMBNAIL_SIDE)

    def add(
        self, key: str, data: bytes, *, store_original: bool = True, sequencer: str | None = None
    ) -> IngestResult:
        """Make `data` the image under `key`, queued for the index (ingest it if it is new).

        All or nothing: if a step fails, what the earlier ones wrote is undone before the
        error is raised; if the process dies, `recover_changes` finishes or undoes it later.
        """
        validate_key(key)
        image_id = content_id(data)
        journal = self._begin(key, "add", image_id, sequencer, owns_original=store_original)
        return self._journalled(
            journal, lambda: self._add(key, data, image_id, store_original, sequencer, journal)
        )

    def remove(
        self, key: str, *, delete_original: bool = True, sequencer: str | None = None
    ) -> IngestResult:
        """Forget `key`; the image leaves the index once no key holds it."""
        validate_key(key)
        journal = self._begin(key, "remove", None, sequencer, owns_original=delete_original)
        return self._journalled(
            journal, lambda: self._remove(key, delete_original, sequencer, journal)
        )

    def _journalled(self, journal: _Journal, attempt: Callable[[], IngestResult]) -> IngestResult:
        """Run `attempt` until no other event for the key gets in its way; undo what it wrote
        if it fails, and close the journal once it is done."""
        try:
            try:
                result = retry_on_conflict(attempt, f"key {journal.change.key}")
            except BaseException:
                self._undo(journal)
                raise
            self._end(journal)
            return result
        finally:  # only now may a recovery in this process take the change for abandoned
            with _in_flight_lock:
                _in_flight.discard(journal.change.token)

    def _add(
        self,
        key: str,
        data: bytes,
        image_id: str,
        store_original: bool,
        sequencer: str | None,
        journal: _Journal,
    ) -> IngestResult:
        """One attempt at an add; raises PreconditionFailed if another event for the key was
        recorded since it was read (`add` then decides again)."""
        held, record = self.catalog.key_and_image(key, image_id)
        self._note_previous(journal, held)
        if held and not sequencer_is_newer(sequencer, held.sequencer):
            return IngestResult(key, "stale", held.image_id)
        created = queue = False
        new_record: ImageRecord | None = None  # created by the key's write
        if record is None or record.status == "removed":
            try:
                decoded = self.decode(data)
            except ImageRefused as refusal:
                if store_original and held and held.status == "present":
                    # Refused bytes sent to replace an image: the image stays. (From the
                    # bucket, the object itself was replaced, and its image must go.)
                    return _refused(key, refusal)
                return self._refuse(key, held, refusal, sequencer)
            if store_original:
                self._put_original(journal, data, content_type(decoded.format))
            fresh = record is None
            record, created = self._create(image_id, key, len(data), decoded, record)
            new_record = record if fresh else None
            queue = created
        else:
            stored = False
            if store_original and not (held and held.image_id == image_id):
                self._put_original(journal, data, content_type(record.format))
                stored = True
            if record.status == "pending":
                self._restore_lost_files(
                    journal, data, record, original=store_original and not stored
                )
            # Re-queued, in case a crash lost the first one.
            queue = record.status == "pending"
        if not created:  # a record just created lists the key already
            self._attach(image_id, key)
        replaced = _held_image(held)
        if replaced == image_id:
            replaced = None
        # The image's new record, the key, the image's work item and (when nothing follows)
        # the journal's end: one write, all or nothing. (It fails if a concurrent ingest of
        # the same bytes created the record first: the retry then finds it.)
        new = KeyRecord(key, "present", image_id, sequencer=sequencer or _kept(held))
        self.catalog.put_key(
            new,
            expected_version=held.version if held else 0,
            queue=image_id if queue else None,
            end=journal.change if replaced is None else None,
            create=new_record,
        )
        journal.ended = replaced is None
        if replaced is not None:
            self._detach(replaced, key)
        if created:
            return IngestResult(key, "added", image_id, replaced=replaced)
        same = held is not None and held.status == "present" and held.image_id == image_id
        status: IngestStatus = "unchanged" if same else "duplicate"
        return IngestResult(key, status, image_id, replaced=replaced)

    def _remove(
        self, key: str, delete_original: bool, sequencer: str | None, journal: _Journal
    ) -> IngestResult:
        """One attempt at a removal; raises PreconditionFailed as `_add` does."""
        held = self.catalog.key(key)
        self._note_previous(journal, held)
        if held and not sequencer_is_newer(sequencer, held.sequencer):
            return IngestResult(key, "stale", held.image_id)
        # The tombstone stays, so that an older "created" event arriving late is ignored.
        tombstone = KeyRecord(key, "removed", sequencer=sequencer or _kept(held))
        self.catalog.put_key(tombstone, expected_version=held.version if held else 0)
        if delete_original:
            self.catalog.delete_original(key)
        image_id = _held_image(held)
        if image_id:
            self._detach(image_id, key)
        return IngestResult(key, "removed", image_id)

    # Events from the bucket (the cloud) ---------------------------------------------------

    def apply(self, event: ObjectEvent) -> IngestResult | None:
        """Ingest a created or forget a removed object of the bucket; None if there was
        nothing to do. The original is the bucket's: it is neither stored nor deleted here.

        Raises on storage failures so the delivery is retried; refused images are recorded,
        not raised, since retrying cannot make a bad file good.
        """
        try:
            if event.kind == "created":
                try:
                    data = self.catalog.original(event.key)
                except NotFound:
                    log.info("%s is gone already; its removal event will follow", event.key)
                    return None
                result = self.add(event.key, data, store_original=False, sequencer=event.sequencer)
            else:
                result = self.remove(event.key, delete_original=False, sequencer=event.sequencer)
        except InvalidKey as error:
            log.warning("ignoring an object with an unusable key: %s", error)
            return None
        log.info("%s %s: %s %s", event.kind, event.key, result.status, result.reason or "")
        return result

    def reembed(self, image_id: str, keys: Iterable[str] | None = None) -> bool:
        """Embed an image again with the configured model (after a model change, or in place
        of a damaged embedding), from the original bytes of the first of `keys` (by default
        those its record lists) that still holds them: a key overwritten since holds other
        bytes (their content id tells). Its stored embedding and top classes are replaced.
        False if no key holds its bytes. After a model change the index must then be rebuilt
        from the embeddings (IndexBuilder.reindex): vectors of two models cannot share it.
        Raises ImageRefused (the limits changed since it was taken in), or DecoderBusy."""
        if keys is None:
            record = self.catalog.image(image_id)
            keys = record.keys if record else ()
        data = next(filter(None, (self._original_of(image_id, key) for key in keys)), None)
        if data is None:
            return False
        embedding = self.embedder.embed(self.decode(data).image)
        self.catalog.put_embedding(
            image_id, embedding.features, embedding.probabilities, overwrite=True
        )
        classes = _top_classes(embedding.probabilities)
        self.catalog.update_image(image_id, lambda record: replace(record, classes=classes))
        return True

    def _original_of(self, image_id: str, key: str) -> bytes | None:
        """The bytes `key` holds if they are `image_id`'s."""
        try:
            data = self.catalog.original(key)
        except NotFound:
            return None
        return data if content_id(data) == image_id else None

    def record_failure(self, event: ObjectEvent, reason: str) -> None:
        """Record that applying `event` failed for good (its retries are spent), as the key's
        status "failed".

        A key that still holds an image keeps it: the catalog goes on serving the previous
        bytes, and the failure is only logged (ingest detaches an image only from a key it
        finds present, so overwriting that record would strand the image). The failed record
        keeps the previous sequencer, so that a copy of this event sent again later is not
        mistaken for a stale one.
        """
        context = {"key": event.key, "event": event.kind, "reason": reason}

        def record() -> None:
            held = self.catalog.key(event.key)
            if held and not sequencer_is_newer(event.sequencer, held.sequencer):
                return  # a newer event for the key got through: this one no longer matters
            if held and held.status == "present":
                log.error("giving up on an event; the key keeps its previous image", extra=context)
                return
            failed = KeyRecord(event.key, "failed", reason=reason, sequencer=_kept(held))
            self.catalog.put_key(failed, expected_version=held.version if held else 0)
            log.error("gave up on an event; the key is recorded as failed", extra=context)

        retry_on_conflict(record, f"key {event.key}: recording its failure")

    # Changes that fail or are interrupted --------------------------------------------------

    def _begin(
        self,
        key: str,
        op: PendingOp,
        image_id: str | None,
        sequencer: str | None,
        *,
        owns_original: bool,
    ) -> _Journal:
        change = Change(
            key=key,
            op=op,
            image_id=image_id,
            previous=None,
            sequencer=sequencer,
            owns_original=owns_original,
            owner=new_owner(),
            token=uuid.uuid4().hex,
        )
        with _in_flight_lock:
            _in_flight.add(change.token)
        try:
            return _Journal(change, version=self.catalog.begin_change(change))
        except BaseException:
            with _in_flight_lock:
                _in_flight.discard(change.token)
            raise

    def _note_previous(self, journal: _Journal, held: KeyRecord | None) -> None:
        """Record which image the key holds before it is changed (re-read on each retry)."""
        previous = _held_image(held)
        if previous != journal.change.previous:
            journal.change = replace(journal.change, previous=previous)
            journal.version = self.catalog.begin_change(journal.change, version=journal.version)

    def _put_original(self, journal: _Journal, data: bytes, media_type: str) -> None:
        """Store the bytes under the change's key, keeping the ones they replace for an undo."""
        key = journal.change.key
        if not journal.original_saved:
            journal.original = self._stored_original(key)
            journal.original_saved = True
        self.catalog.put_original(key, data, media_type)

    def _restore_lost_files(
        self, journal: _Journal, data: bytes, record: ImageRecord, *, original: bool
    ) -> None:
        """Write again, from `data`, the files of an image not yet indexed that are missing
        or empty (its `original` under the change's key too, if asked).

        A bulk ingest writes them with deferred durability, flushed only before the build
        that indexes them, while its catalog rows are committed at once: a power cut can keep
        the rows and lose the files, and ingesting the folder again must restore them. Only
        images still pending are checked (the size of each file, from `head`): an
        indexed one is trusted, since a build flushes the files its process deferred before
        it publishes them (a build in another process, e.g. a server's on the same data
        directory, does not: that case is not covered here).
        """
        key = journal.change.key
        if original and not self.catalog.has_original(key, len(data)):
            log.warning("%s: its stored original was lost; written again", key)
            self._put_original(journal, data, content_type(record.format))
        if self.catalog.has_derived(record.id):
            return
        try:
            decoded = self.decode(data)
        except ImageRefused as refusal:  # accepted before, within other limits
            log.warning("%s: cannot restore its lost embedding and thumbnail: %s", key, refusal)
            return
        log.warning("%s: its embedding or thumbnail was lost; computed again", key)
        embedding = self.embedder.embed(decoded.image)
        self.catalog.put_derived(
            record.id,
            embedding.features,
            embedding.probabilities,
            _thumbnail(decoded),
            _tile(decoded),
            overwrite=True,
        )

    def _stored_original(self, key: str) -> bytes | None:
        try:
            return self.catalog.original(key)
        except NotFound:
            return None

    def _end(self, journal: _Journal) -> None:
        if journal.ended:
            return
        try:
            self.catalog.end_change(journal.change)
        except StorageError as error:  # done all the same; recovery will find nothing to do
            log.warning("could not clear the record of a finished change: %s", error)

    def _undo(self, journal: _Journal) -> None:
        """After a failure in this process: roll an add back (its bytes, records and derived
        files), or finish a removal whose key is gone already. Best effort: whatever this
        cannot do (the storage may still be failing) is left to `recover_changes`."""
        change = journal.change
        try:
            holds_new = change.image_id is not None and self._holder(change.key) == change.image_id
            if change.op == "add" and journal.original_saved and not holds_new:
                self._restore_original(change, journal.original)
            self._settle(change)
        except Exception as error:  # the first error is the one to raise
            log.warning(
                "could not undo the unfinished %s of %s (%s); it is done at the next start",
                change.op,
                change.key,
                error,
            )

    def _restore_original(self, change: Change, previous: bytes | None) -> None:
        if previous is None:
            current = self._stored_original(change.key)
            if current is not None and content_id(current) == change.image_id:
                self.catalog.delete_original(change.key)
            return
        record = self.catalog.image(content_id(previous))
        media_type = content_type(record.format) if record else "application/octet-stream"
        self.catalog.put_original(change.key, previous, media_type)

    def recover_changes(self, *, timeout: float = CHANGE_TIMEOUT_SECONDS) -> int:
        """Finish or roll back the changes whose process died (or that ran longer than any
        request can), and those of this process that no longer run (their undo failed): an
        add whose bytes are stored under its key is finished, anything else rolled back.
        Returns how many were recovered."""
        recovered = 0
        for change in self.catalog.changes():
            if not self._abandoned(change, timeout):
                continue
            log.warning("recovering an interrupted %s of %s", change.op, change.key)
            try:
                self._recover(change)
            except StorageError as error:
                log.error("could not recover the %s of %s: %s", change.op, change.key, error)
                continue
            recovered += 1
        return recovered

    @staticmethod
    def _abandoned(change: Change, timeout: float) -> bool:
        if is_this_process(change.owner):
            with _in_flight_lock:
                return change.token not in _in_flight
        return not owner_is_alive(change.owner) or time.time() - change.started_at >= timeout

    def _recover(self, change: Change) -> None:
        if change.op == "add" and change.image_id:
            data = self._stored_original(change.key)
            if data is not None and content_id(data) == change.image_id:
                self.add(change.key, data, store_original=False, sequencer=change.sequencer)
        self._settle(change)

    def _settle(self, change: Change) -> None:
        """Make the images the change touched agree with what the key holds now, then close
        the change: an image that lists the key without being held by it loses the key (and
        leaves the index if it has no other), and derived files without a record go."""
        holder = self._holder(change.key)
        if change.op == "remove" and change.owns_original and holder is None:
            held = self.catalog.key(change.key)
            if held is not None and held.status == "removed":
                self.catalog.delete_original(change.key)
        for image_id in dict.fromkeys((change.image_id, change.previous)):
            if image_id is None or image_id == holder:
                continue
            self._detach(image_id, change.key)
            if self.catalog.image(image_id) is None and not self._in_other_change(image_id, change):
                self.catalog.delete_derived(image_id)
        self.catalog.end_change(change)

    def _holder(self, key: str) -> str | None:
        held = self.catalog.key(key)
        return _held_image(held)

    def _in_other_change(self, image_id: str, change: Change) -> bool:
        return any(
            other.image_id == image_id and other.token != change.token
            for other in self.catalog.changes()
        )

    def _create(
        self,
        image_id: str,
        key: str,
        size: int,
        decoded: DecodedImage,
        previous: ImageRecord | None,
    ) -> tuple[ImageRecord, bool]:
        """Embed a new image, and record it if it comes back after a removal (not queued
        yet); False with the record if a concurrent ingest revived it first. A new record
        (no `previous`) is the caller's to create, with the key's write."""
        embedding = self.embedder.embed(decoded.image)
        thumbnail, tile = _thumbnail(decoded), _tile(decoded)
        record = ImageRecord(
            id=image_id,
            keys=(key,),
            width=decoded.width,
            height=decoded.height,
            format=decoded.format,
            size=size,
            classes=_top_classes(embedding.probabilities),
        )
        if previous is None:
            # What is derived first, so that no reader finds a record without it.
            self.catalog.put_derived(
                image_id, embedding.features, embedding.probabilities, thumbnail, tile
            )
        else:  # the same bytes come back after being removed
            revived = False

            def revive(current: ImageRecord) -> ImageRecord | None:
                nonlocal revived
                revived = current.status == "removed"  # else a concurrent ingest revived it
                return replace(record, created_at=current.created_at) if revived else None

            stored = self.catalog.update_image(image_id, revive)
            if not revived:
                return stored or record, False
            # After the record: the removal may still be deleting the old derived files.
            self.catalog.put_derived(
                image_id,
                embedding.features,
                embedding.probabilities,
                thumbnail,
                tile,
                overwrite=True,
            )
        return record, True  # the caller queues it, with the key's write

    def _attach(self, image_id: str, key: str) -> None:
        def add_key(record: ImageRecord) -> ImageRecord | None:
            if key in record.keys:
                return None
            return replace(record, keys=(*record.keys, key))

        self.catalog.update_image(image_id, add_key)

    def _detach(self, image_id: str, key: str) -> None:
        def drop_key(record: ImageRecord) -> ImageRecord | None:
            if key not in record.keys:
                return None
            keys = tuple(k for k in record.keys if k != key)
            return replace(record, keys=keys, status=record.status if keys else "removed")

        record = self.catalog.update_image(image_id, drop_key)
        if record is not None and not record.keys and record.status == "removed":
            self.catalog.mark_pending(image_id, "remove")
            current = self.catalog.image(image_id)
            if current is not None and current.status == "removed":  # not re-added meanwhile
                self.catalog.delete_derived(image_id)

    def _refuse(
        self, key: str, held: KeyRecord | None, refusal: ImageRefused, sequencer: str | None
    ) -> IngestResult:
        record = KeyRecord(key, "refused", reason=str(refusal), sequencer=sequencer or _kept(held))
        try:
            self.catalog.put_key(record, expected_version=held.version if held else 0)
        except PreconditionFailed:
            pass  # a newer write to this key won; the refusal is still the answer for these bytes
        else:
            if held and held.status == "present" and held.image_id:
                self._detach(held.image_id, key)
        return _refused(key, refusal)


def _refused(key: str, refusal: ImageRefused) -> IngestResult:
    return IngestResult(key, "refused", reason=str(refusal), code=refusal.reason)


def _held_image(held: KeyRecord | None) -> str | None:
    """The image a key holds now, if it holds one."""
    return held.image_id if held and held.status == "present" else None


def _kept(held: KeyRecord | None) -> str | None:
    return held.sequencer if held else None


_CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def content_type(image_format: str) -> str:
    """The MIME type of a decoded image's source format."""
    return _CONTENT_TYPES.get(image_format, "application/octet-stream")


def _thumbnail(decoded: DecodedImage) -> bytes:
    image = decoded.image.copy()
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82, optimize=True)
    return buffer.getvalue()


def _tile(decoded: DecodedImage) -> bytes:
    return tile_webp(decoded.image)
