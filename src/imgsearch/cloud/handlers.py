"""What the Lambda functions do, as plain functions; functions/*/app.py only wires them up.

- `cold_start`: the service, with the parts a function needs loaded during Lambda's init
  phase (once per execution environment, before the first request waits for them).
- `process_image_events`: the embed function. S3 sends object events to an SQS queue; each
  message holds one S3 notification. Messages are applied one by one (Powertools'
  BatchProcessor reports the failed ones, so only those are delivered again), then the index
  is rebuilt once for the whole batch.
- `http_handler`: the search and feedback functions, the FastAPI app behind API Gateway.

Ingest is idempotent (content-addressed ids, per-key S3 sequencers, conditional writes), so
redelivered messages need no de-duplication: Powertools' idempotency utility would add a table
and a write per message to guarantee what ingest already does.
"""

from __future__ import annotations

import logging
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

from imgsearch.cloud.s3_events import parse_s3_records
from imgsearch.config import get_settings
from imgsearch.results import Preloadable
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
    service = ImageSearch(get_settings())
    service.preload(load)
    return service


# Embed function ----------------------------------------------------------------------------


def process_image_events(
    service: ImageSearch, event: dict[str, Any], context: LambdaContext | None
) -> PartialItemFailureResponse:
    """Apply a batch of SQS messages carrying S3 notifications; returns the failed messages
    (all of them, if all failed: SQS then delivers them again like any other failure).

    Raises, so that the whole batch comes back, if the index build fails.
    """
    max_receives = service.settings.max_receive_count
    response = process_partial_response(
        event=event,
        record_handler=lambda record: apply_message(service, record, max_receives),
        processor=BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False),
        context=context,
    )
    # Once per batch, after the failures were counted: changes to keys that a dead sandbox
    # left half-done (after 15 minutes, or at once if it was this machine's) are finished or
    # rolled back, and what was queued is indexed; a failed build must come back to be
    # retried, so it raises.
    report = service.recover()
    logger.info("index built", extra=asdict(report))
    return response


def apply_message(service: ImageSearch, record: SQSRecord, max_receives: int) -> None:
    """Apply the events of one message. Errors are raised for a retry, except on the last
    delivery, when the key is recorded as failed instead so that the message leaves the queue.

    Messages whose failure cannot even be recorded (unreadable bodies, a catalog that keeps
    failing) go on raising, and SQS moves them to the dead-letter queue.
    """
    last_delivery = int(record.attributes.approximate_receive_count) >= max_receives
    # S3 sends an s3:TestEvent (no Records) when the notification is configured.
    for event in parse_s3_records(record.json_body.get("Records", [])):
        try:
            service.apply_event(event)
        except Exception as error:  # any error: on the last delivery, recorded, not lost
            if not last_delivery:
                raise
            service.record_failure(event, f"{type(error).__name__}: {error}")


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
    return logger.inject_lambda_context(Mangum(app, lifespan="off"))
