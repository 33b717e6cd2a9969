"""Embed function: S3 object events from the image queue in; images embedded and indexed."""

from imgsearch.cloud.handlers import cold_start, logger, metrics, process_image_events

service = cold_start(load=("index", "embedder"))


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context
def handler(event: dict, context: object) -> dict:
    return process_image_events(service, event, context)
