"""Change function: the routes that change the collection (uploads through the API, presigned
upload forms, deletions), behind API Gateway's API key check."""

from imgsearch.cloud.handlers import cold_start, http_handler

service = cold_start(load=("index", "embedder"))
handler = http_handler(service, routers=("images", "uploads"))
