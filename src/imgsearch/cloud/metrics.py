"""What the functions measure, as Powertools metrics: CloudWatch's embedded metric format,
JSON lines in the functions' logs that CloudWatch turns into metrics without an API call.

Namespace `imgsearch`, dimension `service` (the function's POWERTOOLS_SERVICE_NAME);
infra/template.yaml's alarms and dashboard read these names:

- the embed function, per batch: ImagesIndexed, ImagesRemoved (by the index build),
  ImagesRefused (not images, too large, bombs), ImagesFailed (parked on their last delivery),
  BuildSeconds (recovery and the index build), PendingImages (what still waits for the index,
  counted up to PENDING_COUNT_LIMIT);
- the search function, per query: QueryLatency in milliseconds, with a `kind` dimension
  (keyword, learned, similar, reverse), timed around the facade's call, so the engine itself
  knows nothing of metrics.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Iterable

from aws_lambda_powertools.metrics import Metrics, MetricUnit, single_metric

from imgsearch.results import BuildReport, Hit, PhotoResults, TextResults
from imgsearch.service import ImageSearch

# Counting what waits reads that many small rows (a query of about 13 read units): enough to
# tell a backlog from a few stragglers once per batch, at a bounded cost.
PENDING_COUNT_LIMIT = 1000

NAMESPACE = "imgsearch"

metrics = Metrics(namespace=NAMESPACE)


def record_batch(
    outcomes: Iterable[str], report: BuildReport, build_seconds: float, pending: int
) -> None:
    """Add one embed batch's metrics (flushed when the handler returns: log_metrics)."""
    counted = Counter(outcomes)
    for name, value in (
        ("ImagesIndexed", report.added),
        ("ImagesRemoved", report.removed),
        ("ImagesRefused", counted["refused"]),
        ("ImagesFailed", counted["failed"]),
        ("PendingImages", pending),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.add_metric(name="BuildSeconds", unit=MetricUnit.Seconds, value=build_seconds)


def record_query(kind: str, started: float) -> None:
    """One query's latency since `started` (time.perf_counter), written out at once."""
    milliseconds = (time.perf_counter() - started) * 1000
    with single_metric(
        name="QueryLatency", unit=MetricUnit.Milliseconds, value=milliseconds, namespace=NAMESPACE
    ) as metric:
        metric.add_dimension(name="kind", value=kind)


class MeteredImageSearch(ImageSearch):
    """The facade, with each query's latency recorded by kind. A learned query is a keyword
    query that what votes taught re-ranked."""

    def search_text(
        self,
        query: str,
        *,
        limit: int = 20,
        offset: int = 0,
        session: str | None = None,
        exclude_classes: Collection[int] = (),
    ) -> TextResults:
        started = time.perf_counter()
        found = super().search_text(
            query, limit=limit, offset=offset, session=session, exclude_classes=exclude_classes
        )
        record_query("keyword" if found.learned is None else "learned", started)
        return found

    def similar(self, image_id: str, *, limit: int = 20, offset: int = 0) -> list[Hit]:
        started = time.perf_counter()
        hits = super().similar(image_id, limit=limit, offset=offset)
        record_query("similar", started)
        return hits

    def search_image(
        self,
        data: bytes,
        *,
        limit: int = 20,
        offset: int = 0,
        query: str | None = None,
        session: str | None = None,
    ) -> PhotoResults:
        started = time.perf_counter()
        found = super().search_image(data, limit=limit, offset=offset, query=query, session=session)
        record_query("reverse", started)
        return found
