"""Feedback function: records votes, and serves the owner's view and controls of what they
taught (routes the authorizer guards), behind API Gateway."""

from imgsearch.cloud.handlers import cold_start, http_handler

service = cold_start(load=("vocabulary",))
handler = http_handler(service, routers=("feedback", "votes"))
