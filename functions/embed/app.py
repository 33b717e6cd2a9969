"""Embed function: S3 object events from the image queue in; images embedded and indexed.
Its schedule's events: what index builds left queued is applied."""

from imgsearch.cloud.handlers import cold_start, embed_event, logger, metrics

service = cold_start(load=("index", "embedder"))


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context
def handler(event: dict, context: object) -> dict:
    return embed_event(service, event, context)
