"""S3 object events, as the cloud delivers them: at least once, in any order, URL-encoded.

Only keys under `images/` are images; the rest of the bucket is the system's own. Ordering
and idempotency come from the ingest path (per-key S3 sequencers, content-addressed ids,
Ingestor.apply), so handling the same event twice, or an old one late, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import unquote_plus

from imgsearch.results import IMAGES_PREFIX, ObjectEvent


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
        kind: Literal["created", "removed"] = (
            "created" if name.startswith("ObjectCreated") else "removed"
        )
        events.append(ObjectEvent(kind, key.removeprefix(IMAGES_PREFIX), obj.get("sequencer")))
    return events
