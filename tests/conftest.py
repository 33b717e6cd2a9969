"""Shared fixtures: embedders (the fast stand-in and the real model), the vocabulary, services
on temporary data directories, moto and the storage adapters; and the tiers."""

from __future__ import annotations

import fcntl
import gc
import itertools
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.fake_embedder import ColourEmbedder
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, demo_collection, demo_copy, make_service

from imgsearch.api.app import create_app
from imgsearch.config import Settings
from imgsearch.embedding import Embedder, ImageEmbedder, ModelSpec
from imgsearch.rate_limits import RateLimiter
from imgsearch.service import ImageSearch
from imgsearch.storage import Storage, open_storage
from imgsearch.storage.aws_resources import create_bucket, create_tables
from imgsearch.vocabulary import Vocabulary

# Tiers ------------------------------------------------------------------------------------------
#
# The fast tier (`make test-fast`) is every test without one of the markers the Makefile lists
# (NOT_FAST; registered in pyproject.toml); `make test` runs it first, then the marked ones.


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test whose fixtures load the model is marked `model`, so that its tier follows from
    what it uses and cannot be forgotten."""
    for item in items:
        if "model_embedder" in getattr(item, "fixturenames", ()):
            item.add_marker("model")


@pytest.fixture(autouse=True)
def _fast_tier_runs_no_model(request: pytest.FixtureRequest, monkeypatch) -> None:
    """Outside the `model` tier, loading the TFLite model in this process is an error that
    names the marker, not a slow test in the fast tier."""
    if request.node.get_closest_marker("model") is None:

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError(
                "this test loads the TFLite model: mark it @pytest.mark.model, or have its "
                "module-scoped fixtures take model_embedder (see tests/conftest.py)"
            )

        monkeypatch.setattr(Embedder, "__init__", refuse)


# Embedders, services and clients ------------------------------------------------------------------
#
# `embedder`, `service`, `client`, `demo_service` and `demo_client` run the real TFLite model for
# tests marked `model`, and ColourEmbedder, the fast tier's deterministic stand-in
# (tests/support/fake_embedder.py), for the others: what HTTP, storage, votes and the index do
# with vectors holds whatever made them; what rests on what the model sees (a query for
# "elephant" finds the elephants) is marked `model`. Module-scoped fixtures name the embedder
# they need (`model_embedder` or `colour_embedder`); tests using the first are marked for them.


def _on_model(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("model") is not None


@pytest.fixture(scope="session")
def colour_embedder() -> ImageEmbedder:
    return ColourEmbedder()


@pytest.fixture(scope="session")
def model_embedder() -> Embedder:
    return Embedder(ModelSpec.load(Settings().model_path))


@pytest.fixture
def embedder(request: pytest.FixtureRequest) -> ImageEmbedder:
    return request.getfixturevalue("model_embedder" if _on_model(request) else "colour_embedder")


@pytest.fixture(scope="session")
def vocabulary() -> Vocabulary:
    return Vocabulary.load(Settings().vocabulary_dir)


@pytest.fixture
def service(tmp_path: Path, embedder: ImageEmbedder, vocabulary: Vocabulary) -> ImageSearch:
    """An empty collection, for tests that change it."""
    return make_service(tmp_path / "data", embedder, vocabulary)


@pytest.fixture
def one_minute(monkeypatch: pytest.MonkeyPatch) -> float:
    """Pins the rate limiters' clock mid-way through the current minute, so that a test's
    count of votes never straddles two windows (CI once saw a fifth vote let through)."""
    pinned = (time.time() // 60 + 0.5) * 60
    monkeypatch.setattr(RateLimiter, "clock", staticmethod(lambda: pinned))
    return pinned


@pytest.fixture
def client(service: ImageSearch) -> Iterator[TestClient]:
    """A client that sends the API key, as someone allowed to change the collection would."""
    with TestClient(create_app(service), headers={API_KEY_HEADER: API_KEY}) as client:
        yield client


def ingested_demo(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    embedder: ImageEmbedder,
    vocabulary: Vocabulary,
) -> Path:
    """The demo collection's data directory, ingested with `embedder` once per test run and
    closed, to be copied (`demo_copy`): an ingest of the 192 photos costs seconds of the
    model, a copy a fraction of one. Under xdist the first worker to need it ingests it into
    the run's temporary directory, which the workers share, and the others wait for it (one
    ingest's CPU less per worker on two cores)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's, above each worker's
    ingested = root / f"demo-{name}"
    data_dir = ingested / "data"
    with (root / f"demo-{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (ingested / "complete").exists():
            shutil.rmtree(ingested, ignore_errors=True)  # what a failed ingest left
            demo_collection(data_dir, embedder, vocabulary).close(finish_merges=True)
            # SQLite's connections close when they are collected: the last one checkpoints
            # and deletes its write-ahead log, which must not happen while a copy is made.
            gc.collect()
            assert not list(data_dir.rglob("*-wal")), "a SQLite connection outlived the service"
            (ingested / "complete").touch()
    return data_dir


@pytest.fixture(scope="session")
def colour_demo_service(
    tmp_path_factory, colour_embedder: ImageEmbedder, vocabulary: Vocabulary
) -> ImageSearch:
    ingested = ingested_demo(tmp_path_factory, "colour", colour_embedder, vocabulary)
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    return demo_copy(ingested, data_dir, colour_embedder, vocabulary)


@pytest.fixture(scope="session")
def model_demo_data(tmp_path_factory, model_embedder: Embedder, vocabulary: Vocabulary) -> Path:
    """The demo collection ingested with the real model (`ingested_demo`), for modules that
    need a demo collection of their own to copy."""
    return ingested_demo(tmp_path_factory, "model", model_embedder, vocabulary)


@pytest.fixture(scope="session")
def model_demo_service(
    tmp_path_factory, model_demo_data: Path, model_embedder: Embedder, vocabulary: Vocabulary
) -> ImageSearch:
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    return demo_copy(model_demo_data, data_dir, model_embedder, vocabulary)


@pytest.fixture
def demo_service(request: pytest.FixtureRequest) -> ImageSearch:
    """The demo collection (192 photos, 16 categories), made once per session for each
    embedder. Tests must not change it."""
    return request.getfixturevalue(
        "model_demo_service" if _on_model(request) else "colour_demo_service"
    )


@pytest.fixture(scope="session")
def _demo_clients() -> Iterator[dict[int, TestClient]]:
    """One client per demo collection, open for the session."""
    clients: dict[int, TestClient] = {}
    yield clients
    for client in clients.values():
        client.__exit__(None, None, None)


@pytest.fixture
def demo_client(demo_service: ImageSearch, _demo_clients: dict[int, TestClient]) -> TestClient:
    """A client of the demo collection, without the API key."""
    if id(demo_service) not in _demo_clients:
        _demo_clients[id(demo_service)] = TestClient(create_app(demo_service)).__enter__()
    return _demo_clients[id(demo_service)]


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
    from support.aws_resources import FAKE_CREDENTIALS
    from support.dynamodb import install_cheap_transactions

    install_cheap_transactions()

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
            **FAKE_CREDENTIALS,
            "AWS_SESSION_TOKEN": "testing",
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


@pytest.fixture
def aws_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of the AWS backend with a bucket and tables of its own, empty (on moto,
    made from infra/template.yaml)."""
    s3, dynamodb = request.getfixturevalue("aws_admin")
    number = next(_aws_resource_numbers)
    settings = Settings(
        backend="aws",
        bucket=f"imgsearch-test-{number}",
        catalog_table=f"imgsearch-test-{number}-catalog",
        feedback_table=f"imgsearch-test-{number}-feedback",
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
    )
    create_bucket(s3, settings.bucket)
    create_tables(
        dynamodb,
        {"CatalogTable": settings.catalog_table, "FeedbackTable": settings.feedback_table},
    )
    return settings


@pytest.fixture(params=["local", "aws"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The storage `open_storage` gives for each backend, empty (AWS: `aws_settings`)."""
    if request.param == "local":
        return open_storage(Settings(backend="local", data_dir=tmp_path / "data"))
    return open_storage(request.getfixturevalue("aws_settings"))
