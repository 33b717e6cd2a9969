"""Search function: the read side of the HTTP API (upload status included) and the web page,
behind API Gateway, which routes it only those (infra/template.yaml): the routers' uploads and
deletions go to the change function."""

from pathlib import Path

from imgsearch.cloud.handlers import cold_start, http_handler

service = cold_start(load=("index", "vocabulary"))
handler = http_handler(
    service,
    routers=("health", "images", "search", "uploads", "overview"),
    web_dir=Path(__file__).with_name("web"),  # the bundle's copy of web/ (layers/build.py)
)
