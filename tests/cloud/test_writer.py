"""The index writer in the cloud: killed mid-batch as Lambda kills a function at its timeout,
its work is lost for nobody, and the next invocation (the schedule's) finishes it as soon as
the dead writer's short lease expires: seconds, not minutes.

The embed function runs in a subprocess against a moto server, with the real handler and an
SQS event of S3 notifications, and SIGKILLs itself mid-batch. It passes for another Lambda
sandbox (another machine), whose death the next invocation cannot see: only the lease's
expiry frees the index.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import boto3
import pytest
import requests
from cloud.test_embed_handler import BUCKET
from moto.server import ThreadedMotoServer
from support.aws_resources import FAKE_CREDENTIALS
from support.demo import REPO, demo_image
from support.dynamodb import install_cheap_transactions
from support.lambda_events import (
    FakeContext,
    lambda_logging,
    load_function,
    s3_record,
    scheduled_event,
    sqs_event,
)

from imgsearch.config import get_settings
from imgsearch.index.builder import LEASE_SECONDS
from imgsearch.storage.aws_resources import create_bucket, create_tables

# The embed function loads the model.
pytestmark = pytest.mark.model

TABLES = {"CatalogTable": "writer-catalog", "FeedbackTable": "writer-feedback"}
FREED_WITHIN = 30  # seconds after the kill by which the index is free again: not minutes
# The killed writer's lease, shorter than a real one (LEASE_SECONDS, which must be within
# FREED_WITHIN): the test waits it out, and the real lease would cost 15 s of waiting each time.
# Long enough for the writer's heartbeat to keep it on a busy machine (it renews every third).
WRITER_LEASE_SECONDS = 5.0
CATEGORIES = ("elephant", "pizza", "chair", "lotus", "watch", "camera")

# Where the writer dies: with the batch's shard build written but the manifest not switched,
# and with the manifest switched but the batch's neighbour lists not written nor its queue
# items cleared.
KILL_POINTS = {
    "before_manifest": ("imgsearch.index.shard_writer", "write_manifest"),
    "before_neighbour_lists": ("imgsearch.catalog.Catalog", "put_neighbour_lists"),
}

WRITER = """
import importlib, json, os, signal, sys

import imgsearch.index.builder
import imgsearch.owners

# Another Lambda sandbox: its pid means nothing here, so its lease must expire.
imgsearch.owners.MACHINE = "sandbox-killed-at-its-timeout/boot"

module_name, attribute, lease_seconds = sys.argv[1:4]
imgsearch.index.builder.LEASE_SECONDS = float(lease_seconds)
path = module_name.split(".")
try:
    owner = importlib.import_module(module_name)
except ModuleNotFoundError:
    owner = getattr(importlib.import_module(".".join(path[:-1])), path[-1])

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, attribute, killed)

from support.lambda_events import FakeContext, load_function

embed = load_function("embed")
embed.handler(json.loads(sys.stdin.read()), FakeContext())
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def moto_server(monkeypatch, tmp_path):
    port = _free_port()
    install_cheap_transactions()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    environment = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        **FAKE_CREDENTIALS,
        "IMGSEARCH_BACKEND": "aws",
        "IMGSEARCH_BUCKET": BUCKET,
        "IMGSEARCH_CATALOG_TABLE": TABLES["CatalogTable"],
        "IMGSEARCH_FEEDBACK_TABLE": TABLES["FeedbackTable"],
        "IMGSEARCH_CACHE_DIR": str(tmp_path / "cache"),
        "IMGSEARCH_DECODE_WORKERS": "0",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    # The servers of one process share moto's state: start from nothing.
    requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10).raise_for_status()
    try:
        create_bucket(boto3.client("s3"), BUCKET)
        create_tables(boto3.client("dynamodb"), TABLES)
        yield environment
    finally:
        get_settings.cache_clear()
        server.stop()


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_a_writer_killed_mid_batch_loses_nothing_and_the_next_invocation_finishes(
    kill_point, moto_server, tmp_path
) -> None:
    s3 = boto3.client("s3")
    records = []
    for number, category in enumerate(CATEGORIES, 1):
        s3.put_object(Bucket=BUCKET, Key=f"images/{category}.jpg", Body=demo_image(category))
        records.append(
            s3_record(
                s3,
                BUCKET,
                "ObjectCreated:Put",
                f"images/{category}.jpg",
                f"0062E5A7A3F2B9C4{number:02d}",
            )
        )
    event = sqs_event(*({"Records": [record]} for record in records))

    started = time.time()
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(WRITER),
            *KILL_POINTS[kill_point],
            str(WRITER_LEASE_SECONDS),
        ],
        input=json.dumps(event).encode(),
        capture_output=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])},
    )
    killed_at = time.time()
    assert writer.returncode == -signal.SIGKILL, writer.stderr.decode()[-3000:]

    with lambda_logging():
        embed = load_function("embed")  # a new sandbox: its own cold start
        service = embed.service
        catalog = service.parts.catalog
        # Nothing is lost: every image is catalogued and still queued for the index.
        queued = {item.image_id for item in catalog.pending()}
        keys = {category: catalog.key(f"{category}.jpg") for category in CATEGORIES}
        assert {record.image_id for record in keys.values()} == queued
        assert len(queued) == len(CATEGORIES)

        # The dead writer's lease blocks builds only until it expires: its duration after the
        # kill at most, which for a real lease (LEASE_SECONDS) is seconds, not minutes.
        lease = catalog.table.get("lease", "indexer")
        assert lease is not None
        expires_at = lease["expires_at"]
        assert started <= expires_at <= killed_at + WRITER_LEASE_SECONDS
        assert LEASE_SECONDS <= FREED_WITHIN
        busy = embed.handler(scheduled_event(), FakeContext())
        assert busy["busy"] and busy["added"] == 0
        time.sleep(max(0.0, expires_at - time.time()) + 0.1)

        # The schedule's next invocation finishes the work in one go.
        report = embed.handler(scheduled_event(), FakeContext())
        assert not report["busy"] and not report["out_of_time"]
        assert not catalog.pending() and not catalog.changes()
        indexed = list(service.indexed_ids())
        assert sorted(indexed) == sorted(queued), "an image is missing or indexed twice"
        for image_id in indexed:
            assert service.image(image_id).status == "indexed"
            neighbours, _ = catalog.neighbours(image_id)
            assert len(neighbours) == len(CATEGORIES) - 1
        hits = service.search_text("elephant", limit=1).hits
        assert [hit.image_id for hit in hits] == [keys["elephant"].image_id]
