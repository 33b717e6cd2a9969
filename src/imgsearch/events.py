"""S3 object events, as the cloud delivers them: at least once, in any order, URL-encoded.

Only keys under `images/` are images; the rest of the bucket is the system's own. Ordering
and idempotency come from the ingest path (per-key S3 sequencers, content-addressed ids),
so handling the same event twice, or an old one late, changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from imgsearch.catalog import IMAGES_PREFIX
from imgsearch.ingest import IngestResult
from imgsearch.service import ImageSearch
from imgsearch.storage import InvalidKey, NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectEvent:
    kind: Literal["created", "removed"]
    key: str  # relative to images/
    sequencer: str | None


def parse_s3_records(records: Iterable[Mapping[str, Any]]) -> list[ObjectEvent]:
    """The image events among S3 notification records; test events and other keys are skipped."""
    events = []
    for record in records:
        name = str(record.get("eventName", ""))
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        raw_key = obj.get("key")
        if not raw_key or not (
            name.startswith("ObjectCreated") or name.startswith("ObjectRemoved")
        ):
            continue
        key = unquote_plus(raw_key)
        if not key.startswith(IMAGES_PREFIX) or key.endswith("/"):
            continue
        kind = "created" if name.startswith("ObjectCreated") else "removed"
        events.append(ObjectEvent(kind, key.removeprefix(IMAGES_PREFIX), obj.get("sequencer")))
    return events


def apply_event(service: ImageSearch, event: ObjectEvent) -> IngestResult | None:
    """Ingest a created or forget a removed image; None if there was nothing to do.

    The index is not rebuilt here: callers rebuild it once for a whole batch of events.
    Raises on storage failures so the delivery is retried; refused images are recorded, not
    raised, since retrying cannot make a bad file good.
    """
    try:
        if event.kind == "created":
            try:
                data = service.catalog.original(event.key)
            except NotFound:
                log.info("%s is gone already; its removal event will follow", event.key)
                return None
            result = service.ingestor.add(
                event.key, data, store_original=False, sequencer=event.sequencer
            )
        else:
            result = service.ingestor.remove(
                event.key, delete_original=False, sequencer=event.sequencer
            )
    except InvalidKey as error:
        log.warning("ignoring an object with an unusable key: %s", error)
        return None
    log.info("%s %s: %s %s", event.kind, event.key, result.status, result.reason or "")
    return result


def apply_events(service: ImageSearch, events: Iterable[ObjectEvent]) -> list[IngestResult]:
    """Apply each event (see `apply_event`), then bring the index up to date."""
    results = [result for event in events if (result := apply_event(service, event))]
    service.build_index()
    return results
