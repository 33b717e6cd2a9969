"""Shared fixtures: the real model and vocabulary, services on temporary data directories."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.demo import DEMO
from support.services import API_KEY, make_service

from imgsearch.api.app import create_app
from imgsearch.bulk import ingest_tree
from imgsearch.config import Settings
from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.service import ImageSearch
from imgsearch.storage import Storage, open_storage
from imgsearch.storage.aws_resources import create_bucket, create_tables
from imgsearch.vocabulary import Vocabulary


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(ModelSpec.load(Settings().model_path))


@pytest.fixture(scope="session")
def vocabulary() -> Vocabulary:
    return Vocabulary.load(Settings().vocabulary_dir)


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


@pytest.fixture(scope="module")
def aws_admin() -> Iterator[tuple[Any, Any]]:
    """One moto per test module, with S3 and DynamoDB clients to create resources.

    Starting moto and creating clients costs more than most tests, so tests share it and each
    gets its own bucket and tables instead (module scope: other modules' tests never run
    inside this mock). moto is imported here, not at the top, because processes that tests
    spawn import the test modules and need none of it.
    """
    import boto3
    from moto import mock_aws
    from moto.core.botocore_stubber import BotocoreStubber

    # moto's in-memory backends check a condition and then write without a lock, so threads
    # racing through moto could both pass a check that S3 or DynamoDB would let only one
    # pass. The real services apply each request atomically; so does moto, one at a time.
    moto_lock = threading.Lock()
    process_request = BotocoreStubber.process_request

    def process_request_atomically(self: BotocoreStubber, request: Any) -> Any:
        with moto_lock:
            return process_request(self, request)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(BotocoreStubber, "process_request", process_request_atomically)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        for name in (
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL_DYNAMODB",
        ):
            monkeypatch.delenv(name, raising=False)
        with mock_aws():
            yield boto3.client("s3"), boto3.client("dynamodb")


_aws_resource_numbers = itertools.count()


@pytest.fixture(params=["local", "aws"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The storage `open_storage` gives for each backend, empty (AWS: on moto, resources
    made from infra/template.yaml)."""
    if request.param == "local":
        return open_storage(Settings(backend="local", data_dir=tmp_path / "data"))
    s3, dynamodb = request.getfixturevalue("aws_admin")
    number = next(_aws_resource_numbers)
    settings = Settings(
        backend="aws",
        bucket=f"imgsearch-test-{number}",
        catalog_table=f"imgsearch-test-{number}-catalog",
        feedback_table=f"imgsearch-test-{number}-feedback",
        cache_dir=tmp_path / "cache",
    )
    create_bucket(s3, settings.bucket)
    create_tables(
        dynamodb,
        {"CatalogTable": settings.catalog_table, "FeedbackTable": settings.feedback_table},
    )
    return open_storage(settings)
