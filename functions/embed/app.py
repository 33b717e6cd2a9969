"""Embed function: S3 object events in, images embedded and indexed."""

from imgsearch.config import get_settings
from imgsearch.events import apply_events, parse_s3_records
from imgsearch.service import ImageSearch

service = ImageSearch(get_settings())


def handler(event: dict, context: object) -> dict:
    results = apply_events(service, parse_s3_records(event.get("Records", [])))
    return {"processed": len(results)}
