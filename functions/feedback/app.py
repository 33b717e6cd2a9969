"""Feedback function: records votes, behind API Gateway."""

from imgsearch.aws_lambda import cold_start, http_handler

service = cold_start(load=("vocabulary",))
handler = http_handler(service, routers=("feedback",))
