"""Services on temporary data directories, as the tests build them."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgsearch.api.app import REFUSAL_STATUS
from imgsearch.bulk import ingest_tree
from imgsearch.config import Settings
from imgsearch.embedding import ImageEmbedder
from imgsearch.service import ImageSearch
from imgsearch.vocabulary import Vocabulary
from support.demo import DEMO

API_KEY = "test-api-key"


def make_service(
    data_dir: Path, embedder: ImageEmbedder, vocabulary: Vocabulary, **settings: object
) -> ImageSearch:
    """A service on its own data directory, sharing the loaded model and vocabulary. It decodes
    in the calling thread (as on Lambda) unless `decode_workers` is given: a pool of worker
    processes per test would cost each test a process start (test_decoding.py tests them)."""
    values = {
        "data_dir": data_dir,
        "shard_size": 64,
        "api_key": API_KEY,
        "decode_workers": 0,
        **settings,
    }
    return ImageSearch(Settings(**values), embedder=embedder, vocabulary=vocabulary)


def demo_collection(data_dir: Path, embedder: ImageEmbedder, vocabulary: Vocabulary) -> ImageSearch:
    """The demo collection (192 photos, 16 categories) ingested into a new service."""
    service = make_service(data_dir, embedder, vocabulary)
    ingest_tree(service, DEMO)
    return service


def demo_copy(
    ingested: Path,
    data_dir: Path,
    embedder: ImageEmbedder,
    vocabulary: Vocabulary,
    **settings: object,
) -> ImageSearch:
    """A service on a copy of an ingested, closed demo data directory (`model_demo_data`): the
    same collection an ingest would make, for the cost of copying its files."""
    shutil.copytree(ingested, data_dir)
    return make_service(data_dir, embedder, vocabulary, **settings)


def http_status(refusal: str) -> int:
    """The HTTP status the API answers a refused image with, by the refusal's reason."""
    return REFUSAL_STATUS.get(refusal, 422)  # the others: content that cannot be used
