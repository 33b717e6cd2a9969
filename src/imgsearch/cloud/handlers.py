"""What the Lambda functions do, as plain functions; functions/*/app.py only wires them up.

- `cold_start`: the service, with the parts a function needs loaded during Lambda's init
  phase (once per execution environment, before the first request waits for them).
- `embed_event`: the embed function. S3 sends object events to an SQS queue; each message
  holds one S3 notification. Messages are applied one by one (Powertools' BatchProcessor
  reports the failed ones, so only those are delivered again), then the index is built once
  for the whole batch (`process_image_events`). Every few minutes its schedule invokes it
  to apply what builds left queued (`drain_index`). A build keeps within half of what remains
  of the invocation (`build_budget`), so it ends well inside the function's timeout.
- Every handler writes its metrics when it returns (Powertools' `log_metrics`: see
  cloud/metrics.py for what each function measures).
- `http_handler`: the search, change and feedback functions, the FastAPI app behind API
  Gateway.

Ingest is idempotent (content-addressed ids, per-key S3 sequencers, conditional writes), so
redelivered messages need no de-duplication: Powertools' idempotency utility would add a table
and a write per message to guarantee what ingest already does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from imgsearch.cloud.metrics import (
    PENDING_COUNT_LIMIT,
    MeteredImageSearch,
    metrics,
    record_batch,
)
from imgsearch.cloud.s3_events import parse_s3_records
from imgsearch.config import get_settings
from imgsearch.results import BuildReport, Preloadable
from imgsearch.service import ImageSearch

# Structured JSON logs; the service name comes from POWERTOOLS_SERVICE_NAME (one per function).
logger = Logger()

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def cold_start(load: tuple[Preloadable, ...] = ()) -> ImageSearch:
    """The service, configured from the environment, with the parts in `load` loaded now."""
    # The core logs through the standard library; send it through the Powertools logger
    # (which configures registered loggers only: register the package's).
    logging.getLogger("imgsearch")
    copy_config_to_registered_loggers(source_logger=logger, include={"imgsearch"})
    # Queries are timed around the facade's calls (cloud/metrics.py); nothing else changes.
    service = MeteredImageSearch(get_settings())
    service.preload(load)
    return service


# Embed function ----------------------------------------------------------------------------

# The share of what remains of an invocation that its index build may take: a batch that
# takes longer than the builder estimated still ends well before Lambda's timeout.
BUILD_SHARE = 0.5


def embed_event(
    service: ImageSearch, event: dict[str, Any], context: LambdaContext | None
) -> dict[str, Any]:
    """The embed function: a batch of the image queue's messages, or its schedule's event."""
    if event.get("source") == "aws.events":  # EventBridge's "Scheduled Event"
        return drain_index(service, context)
    return dict(process_image_events(service, event, context))


def build_budget(service: ImageSearch, context: LambdaContext | None) -> float | None:
    """Seconds an index build may take in this invocation: the `index_build_seconds` setting,
    and at most `BUILD_SHARE` of the time the invocation has left."""
    configured = service.settings.index_build_seconds
    if context is None:
        return configured
    share = context.get_remaining_time_in_millis() / 1000 * BUILD_SHARE
    return share if configured is None else min(configured, share)


def drain_index(service: ImageSearch, context: LambdaContext | None) -> dict[str, Any]:
    """Apply what index builds left queued (out of time, or killed mid-batch with their
    sandbox) and what dead sandboxes left half-done, within the invocation's budget."""
    # The index lag alarm's metric, also when no image arrives to report it.
    return asdict(_recover_and_record(service, context, [], "index built on schedule"))


def process_image_events(
    service: ImageSearch, event: dict[str, Any], context: LambdaContext | None
) -> PartialItemFailureResponse:
    """Apply a batch of SQS messages carrying S3 notifications; returns the failed messages
    (all of them, if all failed: SQS then delivers them again like any other failure).
    Adds the batch's metrics (cloud/metrics.py), which the handler's log_metrics writes out.

    Raises, so that the whole batch comes back, if the index build fails.
    """
    max_receives = service.settings.max_receive_count
    outcomes: list[str] = []
    response = process_partial_response(
        event=event,
        record_handler=lambda record: outcomes.extend(apply_message(service, record, max_receives)),
        processor=BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False),
        context=context,
    )
    # Once per batch, after the failures were counted: changes to keys that a dead sandbox
    # left half-done (after 15 minutes, or at once if it was this machine's) are finished or
    # rolled back, and what was queued is indexed; a failed build must come back to be
    # retried, so it raises.
    _recover_and_record(service, context, outcomes, "index built")
    return response


def _recover_and_record(
    service: ImageSearch, context: LambdaContext | None, outcomes: list[str], message: str
) -> BuildReport:
    """Recover and build the index within the invocation's budget (`build_budget`), log the
    build's report under `message` and add the batch's metrics (with `outcomes`, the batch's
    images)."""
    started = time.perf_counter()
    report = service.recover(budget=build_budget(service, context))
    build_seconds = time.perf_counter() - started
    logger.info(message, extra=asdict(report))
    record_batch(outcomes, report, build_seconds, _backlog(service, report))
    return report


def _backlog(service: ImageSearch, report: BuildReport) -> int:
    """The index lag for the metrics: none if the build just found the queue empty (one
    Query a batch fewer), else counted."""
    return 0 if report.drained else service.index_backlog(limit=PENDING_COUNT_LIMIT)


def apply_message(service: ImageSearch, record: SQSRecord, max_receives: int) -> list[str]:
    """Apply the events of one message; returns what became of each (an ingest status, or
    "failed"). Errors are raised for a retry, except on the last delivery, when the key is
    recorded as failed instead so that the message leaves the queue.

    Messages whose failure cannot even be recorded (unreadable bodies, a catalog that keeps
    failing) go on raising, and SQS moves them to the dead-letter queue.
    """
    last_delivery = int(record.attributes.approximate_receive_count) >= max_receives
    outcomes = []
    # S3 sends an s3:TestEvent (no Records) when the notification is configured.
    for event in parse_s3_records(record.json_body.get("Records", [])):
        try:
            result = service.apply_event(event)
        except Exception as error:  # any error: on the last delivery, recorded, not lost
            if not last_delivery:
                raise
            service.record_failure(event, f"{type(error).__name__}: {error}")
            outcomes.append("failed")
        else:
            outcomes.append(result.status if result is not None else "ignored")
    return outcomes


# HTTP functions ----------------------------------------------------------------------------


def http_handler(
    service: ImageSearch, routers: tuple[str, ...], *, web_dir: Path | None = None
) -> Handler:
    """The API app with `routers` (and the web page, if `web_dir` exists) for API Gateway
    HTTP API events (payload format 2.0)."""
    # Imported here: the embed function imports this module but serves no HTTP.
    from mangum import Mangum

    from imgsearch.api.app import create_app

    page = web_dir if web_dir is not None and web_dir.is_dir() else None
    app = create_app(service, routers=routers, web_dir=page)
    handler = logger.inject_lambda_context(_declaring_body_length(Mangum(app, lifespan="off")))
    return metrics.log_metrics(handler, capture_cold_start_metric=True)


def _declaring_body_length(handler: Handler) -> Handler:
    """`handler`, given events whose headers declare their body's length. API Gateway hands
    the whole body over in the event, whatever the client's headers said of it (HTTP/2 needs
    no Content-Length; a client may claim 0): the app's guard (api/guard.py) bounds a body by
    its declared length or as it streams in, and took a body declared by neither for none,
    letting the app parse it whole."""

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        body = event.get("body")
        if body:
            if event.get("isBase64Encoded"):
                length = len(body) * 3 // 4 - (len(body) - len(body.rstrip("=")))
            else:
                length = len(body.encode())
            headers = _without_length(event.get("headers")) | {"content-length": str(length)}
            event = event | {"headers": headers}
            if event.get("multiValueHeaders"):  # payload format 1.0: Mangum merges them in
                event["multiValueHeaders"] = _without_length(event["multiValueHeaders"])
        return handler(event, context)

    return handle


def _without_length(headers: dict[str, Any] | None) -> dict[str, Any]:
    return {
        name: value
        for name, value in (headers or {}).items()
        if name.lower() not in ("content-length", "transfer-encoding")
    }
