"""Ingest: bytes under a key become an image in the catalog, queued for the index.

Idempotent per content: an image's id is the hash of its bytes, so the same bytes under two
keys are one image that remembers both keys. Ordered per key: when events carry an S3
`sequencer`, an older event never undoes a newer one. A refused file is recorded under its
key with the reason and changes nothing else.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from imgsearch.catalog import MAX_CAS_ATTEMPTS, Catalog, ImageRecord, KeyRecord
from imgsearch.decode_pool import Decoder
from imgsearch.embedding import Embedder
from imgsearch.images import DecodedImage, DecodeLimits, ImageRefused
from imgsearch.storage import PreconditionFailed
from imgsearch.storage.validation import validate_key

THUMBNAIL_SIDE = 384
TOP_CLASSES = 5

IngestStatus = Literal["added", "duplicate", "unchanged", "refused", "removed", "stale"]


@dataclass(frozen=True)
class IngestResult:
    key: str
    status: IngestStatus
    image_id: str | None = None
    reason: str | None = None  # why a file was refused, for people
    code: str | None = None  # the same as a short code, for programs
    replaced: str | None = None  # the other image the key held until now


def content_id(data: bytes) -> str:
    """An image's id: the same bytes always get the same id."""
    return hashlib.sha256(data).hexdigest()[:16]


def sequencer_is_newer(candidate: str | None, current: str | None) -> bool:
    """S3 sequencers: right-pad the shorter with zeros, then compare as hex strings."""
    if candidate is None or current is None:
        return True
    width = max(len(candidate), len(current))
    return candidate.ljust(width, "0").upper() > current.ljust(width, "0").upper()


class Ingestor:
    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
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
        return self.decoder.decode(
            data,
            limits or self.limits,
            draft_size=self.embedder.spec.input_size * 2,
        )

    def add(
        self, key: str, data: bytes, *, store_original: bool = True, sequencer: str | None = None
    ) -> IngestResult:
        """Make `data` the image under `key`, queued for the index (ingest it if it is new)."""
        validate_key(key)
        image_id = content_id(data)
        for _ in range(MAX_CAS_ATTEMPTS):
            held = self.catalog.key(key)
            if held and not sequencer_is_newer(sequencer, held.sequencer):
                return IngestResult(key, "stale", held.image_id)
            record = self.catalog.image(image_id)
            created = False
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
                    self.catalog.put_original(key, data, content_type(decoded.format))
                record, created = self._create(image_id, key, len(data), decoded, record)
            else:
                if store_original and not (held and held.image_id == image_id):
                    self.catalog.put_original(key, data, content_type(record.format))
                if record.status == "pending":  # re-queue, in case a crash lost the first one
                    self.catalog.mark_pending(image_id, "add")
            self._attach(image_id, key)
            new = KeyRecord(key, "present", image_id, sequencer=sequencer or _kept(held))
            try:
                self.catalog.put_key(new, expected_version=held.version if held else 0)
            except PreconditionFailed:
                continue  # another event for this key won the race: re-decide against it
            replaced = None
            if held and held.status == "present" and held.image_id != image_id:
                self._detach(held.image_id, key)
                replaced = held.image_id
            if created:
                return IngestResult(key, "added", image_id, replaced=replaced)
            same = held is not None and held.status == "present" and held.image_id == image_id
            status = "unchanged" if same else "duplicate"
            return IngestResult(key, status, image_id, replaced=replaced)
        raise RuntimeError(f"key {key}: too much contention")

    def remove(
        self, key: str, *, delete_original: bool = True, sequencer: str | None = None
    ) -> IngestResult:
        """Forget `key`; the image leaves the index once no key holds it."""
        validate_key(key)
        for _ in range(MAX_CAS_ATTEMPTS):
            held = self.catalog.key(key)
            if held and not sequencer_is_newer(sequencer, held.sequencer):
                return IngestResult(key, "stale", held.image_id)
            # The tombstone stays, so that an older "created" event arriving late is ignored.
            tombstone = KeyRecord(key, "removed", sequencer=sequencer or _kept(held))
            try:
                self.catalog.put_key(tombstone, expected_version=held.version if held else 0)
            except PreconditionFailed:
                continue
            if delete_original:
                self.catalog.delete_original(key)
            image_id = held.image_id if held and held.status == "present" else None
            if image_id:
                self._detach(image_id, key)
            return IngestResult(key, "removed", image_id)
        raise RuntimeError(f"key {key}: too much contention")

    def _create(
        self,
        image_id: str,
        key: str,
        size: int,
        decoded: DecodedImage,
        previous: ImageRecord | None,
    ) -> tuple[ImageRecord, bool]:
        """Embed and record a new image; False with the record if a concurrent ingest of the
        same bytes created it first."""
        embedding = self.embedder.embed(decoded.image)
        thumbnail = _thumbnail(decoded)
        top = np.argsort(-embedding.probabilities)[:TOP_CLASSES]
        record = ImageRecord(
            id=image_id,
            keys=(key,),
            width=decoded.width,
            height=decoded.height,
            format=decoded.format,
            size=size,
            classes=tuple((int(c), round(float(embedding.probabilities[c]), 5)) for c in top),
        )
        if previous is None:
            # What is derived first, so that no reader finds a record without it.
            self.catalog.put_embedding(image_id, embedding.features, embedding.probabilities)
            self.catalog.put_thumbnail(image_id, thumbnail)
            if not self.catalog.create_image(record):
                return self.catalog.image(image_id) or record, False
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
            self.catalog.put_embedding(
                image_id, embedding.features, embedding.probabilities, overwrite=True
            )
            self.catalog.put_thumbnail(image_id, thumbnail)
        self.catalog.mark_pending(image_id, "add")
        return record, True

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
