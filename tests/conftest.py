"""Shared fixtures: the real model and vocabulary, services on temporary data directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imgsearch.api.app import create_app
from imgsearch.bulk import ingest_tree
from imgsearch.config import Settings
from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.service import ImageSearch
from imgsearch.vocabulary import Vocabulary

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
API_KEY = "test-api-key"


def demo_image(category: str, number: int = 1) -> bytes:
    return (DEMO / category / f"image_{number:04d}.jpg").read_bytes()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(ModelSpec.load(Settings().model_path))


@pytest.fixture(scope="session")
def vocabulary() -> Vocabulary:
    return Vocabulary.load(Settings().vocabulary_dir)


def make_service(
    data_dir: Path, embedder: Embedder, vocabulary: Vocabulary, **settings: object
) -> ImageSearch:
    """A service on its own data directory, sharing the loaded model and vocabulary."""
    values = {"data_dir": data_dir, "shard_size": 64, "api_key": API_KEY, **settings}
    return ImageSearch(Settings(**values), embedder=embedder, vocabulary=vocabulary)


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder, vocabulary: Vocabulary) -> ImageSearch:
    """An empty collection, for tests that change it."""
    return make_service(tmp_path / "data", embedder, vocabulary)


@pytest.fixture(scope="session")
def demo_service(tmp_path_factory, embedder: Embedder, vocabulary: Vocabulary) -> ImageSearch:
    """The demo collection (192 photos, 16 categories). Tests must not change it."""
    service = make_service(tmp_path_factory.mktemp("demo") / "data", embedder, vocabulary)
    ingest_tree(service, DEMO)
    return service


@pytest.fixture(scope="session")
def demo_client(demo_service: ImageSearch) -> Iterator[TestClient]:
    with TestClient(create_app(demo_service)) as client:
        yield client


@pytest.fixture
def client(service: ImageSearch) -> Iterator[TestClient]:
    """A client that sends the API key, as someone allowed to change the collection would."""
    with TestClient(create_app(service), headers={"X-API-Key": API_KEY}) as client:
        yield client
