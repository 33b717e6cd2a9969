"""Services on temporary data directories, as the tests build them."""

from __future__ import annotations

from pathlib import Path

from imgsearch.config import Settings
from imgsearch.embedding import Embedder
from imgsearch.service import ImageSearch
from imgsearch.vocabulary import Vocabulary

API_KEY = "test-api-key"


def make_service(
    data_dir: Path, embedder: Embedder, vocabulary: Vocabulary, **settings: object
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
