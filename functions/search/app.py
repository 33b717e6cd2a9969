"""Search function: the read side of the HTTP API, behind API Gateway."""

from mangum import Mangum

from imgsearch.api.app import create_app
from imgsearch.config import get_settings
from imgsearch.service import ImageSearch

service = ImageSearch(get_settings())
handler = Mangum(create_app(service, routers=("health", "images", "search")), lifespan="off")
