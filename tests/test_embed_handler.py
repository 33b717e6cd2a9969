"""The embed function, driven by S3 notification records exactly as S3 sends them, on moto."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from urllib.parse import quote_plus

import boto3
import pytest
from aws_resources import create_bucket, create_tables
from conftest import REPO, demo_image
from moto import mock_aws

from imgsearch.config import get_settings

BUCKET = "imgsearch-test-images"
TABLES = {"CatalogTable": "test-catalog", "FeedbackTable": "test-feedback"}


@pytest.fixture
def aws(monkeypatch, tmp_path):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "IMGSEARCH_BACKEND": "aws",
        "IMGSEARCH_BUCKET": BUCKET,
        "IMGSEARCH_CATALOG_TABLE": TABLES["CatalogTable"],
        "IMGSEARCH_FEEDBACK_TABLE": TABLES["FeedbackTable"],
        "IMGSEARCH_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with mock_aws():
        s3 = boto3.client("s3")
        create_bucket(s3, BUCKET)
        create_tables(boto3.client("dynamodb"), TABLES)
        yield s3
    get_settings.cache_clear()


def load_function(name: str):
    """Import functions/<name>/app.py as Lambda would: a fresh module, its own cold start."""
    path = REPO / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"{name}_app_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def s3_record(s3, event_name: str, key: str, sequencer: str) -> dict:
    """One record of an S3 event notification (event structure version 2.1)."""
    obj = {"key": quote_plus(key), "sequencer": sequencer}
    if event_name.startswith("ObjectCreated"):
        head = s3.head_object(Bucket=BUCKET, Key=key)
        obj.update(
            size=head["ContentLength"],
            eTag=head["ETag"].strip('"'),
            versionId=head.get("VersionId"),
        )
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T10:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURI"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "ImageUploaded",
            "bucket": {
                "name": BUCKET,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{BUCKET}",
            },
            "object": obj,
        },
    }


def test_uploads_become_searchable_and_deletions_leave(aws) -> None:
    s3 = aws
    embed = load_function("embed")
    s3.put_object(
        Bucket=BUCKET, Key="images/holiday 2026/elephant 1.jpg", Body=demo_image("elephant")
    )
    s3.put_object(Bucket=BUCKET, Key="images/pizza.jpg", Body=demo_image("pizza"))
    s3.put_object(Bucket=BUCKET, Key="images/broken.jpg", Body=b"\xff\xd8 not really")
    created = [
        s3_record(
            s3, "ObjectCreated:Put", "images/holiday 2026/elephant 1.jpg", "0062E5A7A3F2B9C401"
        ),
        s3_record(s3, "ObjectCreated:Put", "images/pizza.jpg", "0062E5A7A3F2B9C402"),
        s3_record(s3, "ObjectCreated:Put", "images/broken.jpg", "0062E5A7A3F2B9C403"),
    ]
    assert embed.handler({"Records": created}, None) == {"processed": 3}
    # At-least-once delivery: the same records again change nothing.
    embed.handler({"Records": created}, None)

    service = embed.service
    assert service.count() == 2
    elephant = service.find_key("holiday 2026/elephant 1.jpg")
    assert elephant is not None and elephant.status == "indexed"
    assert service.catalog.key("broken.jpg").status == "refused"
    found = service.search_text("elephant", limit=1, session=None).hits
    assert [hit.image_id for hit in found] == [elephant.id]
    shards = s3.list_objects_v2(Bucket=BUCKET, Prefix="index/")["KeyCount"]
    assert shards >= 6  # a manifest and a shard build's files, in the bucket

    s3.delete_object(Bucket=BUCKET, Key="images/pizza.jpg")
    removed = s3_record(s3, "ObjectRemoved:Delete", "images/pizza.jpg", "0062E5A7A3F2B9C409")
    embed.handler({"Records": [removed]}, None)
    assert service.count() == 1
    # A late duplicate of the old "created" event must not bring the image back.
    embed.handler({"Records": [created[1]]}, None)
    assert service.count() == 1


def test_test_events_and_foreign_keys_are_ignored(aws) -> None:
    embed = load_function("embed")
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}
    assert embed.handler(test_event, None) == {"processed": 0}
    aws.put_object(Bucket=BUCKET, Key="index/manifest.json", Body=b"{}")
    record = s3_record(aws, "ObjectCreated:Put", "index/manifest.json", "01")
    assert embed.handler({"Records": [record]}, None) == {"processed": 0}


def test_the_function_directory_holds_only_a_thin_handler() -> None:
    for name in ("embed", "search", "feedback"):
        source = Path(REPO / "functions" / name / "app.py").read_text()
        assert len(source.splitlines()) <= 20, name
