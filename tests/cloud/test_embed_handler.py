"""The embed function, driven by S3 notification records exactly as S3 sends them (inside SQS
messages, as the image queue delivers them), on moto."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws
from support.aws_resources import FAKE_CREDENTIALS
from support.demo import demo_image
from support.dynamodb import install_cheap_transactions
from support.lambda_events import (
    FakeContext,
    lambda_logging,
    load_function,
    s3_record,
    sqs_event,
)

from imgsearch.config import get_settings
from imgsearch.results import BuildReport
from imgsearch.storage.aws_resources import create_bucket, create_tables

pytestmark = pytest.mark.model  # the embed function loads the model

BUCKET = "imgsearch-test-images"
TABLES = {"CatalogTable": "test-catalog", "FeedbackTable": "test-feedback"}


@pytest.fixture
def aws(monkeypatch, tmp_path):
    for name, value in {
        **FAKE_CREDENTIALS,
        "IMGSEARCH_BACKEND": "aws",
        "IMGSEARCH_BUCKET": BUCKET,
        "IMGSEARCH_CATALOG_TABLE": TABLES["CatalogTable"],
        "IMGSEARCH_FEEDBACK_TABLE": TABLES["FeedbackTable"],
        "IMGSEARCH_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    install_cheap_transactions()
    with mock_aws(), lambda_logging():
        s3 = boto3.client("s3")
        create_bucket(s3, BUCKET)
        create_tables(boto3.client("dynamodb"), TABLES)
        yield s3
    get_settings.cache_clear()


def invoke(embed, *records: dict) -> dict:
    """The embed handler on one message per S3 record, as S3 sends them to the queue."""
    return embed.handler(sqs_event(*({"Records": [r]} for r in records)), FakeContext())


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
            s3,
            BUCKET,
            "ObjectCreated:Put",
            "images/holiday 2026/elephant 1.jpg",
            "0062E5A7A3F2B9C401",
        ),
        s3_record(s3, BUCKET, "ObjectCreated:Put", "images/pizza.jpg", "0062E5A7A3F2B9C402"),
        s3_record(s3, BUCKET, "ObjectCreated:Put", "images/broken.jpg", "0062E5A7A3F2B9C403"),
    ]
    assert invoke(embed, *created) == {"batchItemFailures": []}
    # At-least-once delivery: the same records again change nothing.
    invoke(embed, *created)

    service = embed.service
    assert service.count() == 2
    elephant = service.find_key("holiday 2026/elephant 1.jpg")
    assert elephant is not None and elephant.status == "indexed"
    assert service.parts.catalog.key("broken.jpg").status == "refused"
    found = service.search_text("elephant", limit=1, session=None).hits
    assert [hit.image_id for hit in found] == [elephant.id]
    shards = s3.list_objects_v2(Bucket=BUCKET, Prefix="index/")["KeyCount"]
    assert shards >= 6  # a manifest and a shard build's files, in the bucket

    s3.delete_object(Bucket=BUCKET, Key="images/pizza.jpg")
    removed = s3_record(
        s3, BUCKET, "ObjectRemoved:Delete", "images/pizza.jpg", "0062E5A7A3F2B9C409"
    )
    invoke(embed, removed)
    assert service.count() == 1
    # A late duplicate of the old "created" event must not bring the image back.
    invoke(embed, created[1])
    assert service.count() == 1


def test_test_events_and_foreign_keys_are_ignored(aws) -> None:
    embed = load_function("embed")
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}
    assert embed.handler(sqs_event(test_event), FakeContext()) == {"batchItemFailures": []}
    # An object outside images/ (were the notification's prefix filter ever lost).
    aws.put_object(Bucket=BUCKET, Key="exports/photo.jpg", Body=demo_image("pizza"))
    record = s3_record(aws, BUCKET, "ObjectCreated:Put", "exports/photo.jpg", "01")
    assert invoke(embed, record) == {"batchItemFailures": []}
    assert embed.service.count() == 0


def test_a_failure_is_retried_until_the_last_delivery_then_recorded(aws, monkeypatch) -> None:
    embed = load_function("embed")
    aws.put_object(Bucket=BUCKET, Key="images/a.jpg", Body=demo_image("pizza"))
    record = s3_record(aws, BUCKET, "ObjectCreated:Put", "images/a.jpg", "0062E5A7A3F2B9C401")

    def fails(*args: object, **kwargs: object) -> None:
        raise TimeoutError("DynamoDB is slow today")

    message = {"Records": [record]}
    with monkeypatch.context() as patch:
        patch.setattr(embed.service.parts.ingestor, "add", fails)
        first = embed.handler(sqs_event(message, receive_count=1), FakeContext())
        assert len(first["batchItemFailures"]) == 1
        assert embed.service.parts.catalog.key("a.jpg") is None
        last = embed.handler(sqs_event(message, receive_count=5), FakeContext())
        assert last == {"batchItemFailures": []}
    failed = embed.service.parts.catalog.key("a.jpg")
    assert failed.status == "failed" and failed.reason == "TimeoutError: DynamoDB is slow today"
    # The failure keeps no sequencer of its own: the same event sent again is not stale.
    assert invoke(embed, record) == {"batchItemFailures": []}
    assert embed.service.parts.catalog.key("a.jpg").status == "present"


def test_a_key_holding_an_image_keeps_it_when_a_later_event_fails(aws, monkeypatch) -> None:
    embed = load_function("embed")
    aws.put_object(Bucket=BUCKET, Key="images/a.jpg", Body=demo_image("pizza"))
    invoke(embed, s3_record(aws, BUCKET, "ObjectCreated:Put", "images/a.jpg", "01"))
    held = embed.service.parts.catalog.key("a.jpg")
    aws.put_object(Bucket=BUCKET, Key="images/a.jpg", Body=demo_image("elephant"))
    newer = s3_record(aws, BUCKET, "ObjectCreated:Put", "images/a.jpg", "02")
    monkeypatch.setattr(embed.service.parts.ingestor, "add", lambda *a, **k: 1 / 0)
    last = embed.handler(sqs_event({"Records": [newer]}, receive_count=5), FakeContext())
    assert last == {"batchItemFailures": []}
    assert embed.service.parts.catalog.key("a.jpg") == held


class _SandboxDied(BaseException):
    """The Lambda sandbox vanished mid-ingest (timeout, out of memory): nothing runs after."""


def test_an_ingest_a_dead_sandbox_left_half_done_is_finished_by_the_next_batch(
    aws, monkeypatch
) -> None:
    embed = load_function("embed")
    service = embed.service
    aws.put_object(Bucket=BUCKET, Key="images/a.jpg", Body=demo_image("pizza"))

    def dies(*args: object, **kwargs: object) -> None:
        raise _SandboxDied

    with monkeypatch.context() as patch:
        patch.setattr(type(service.parts.ingestor), "_undo", lambda self, journal: None)
        patch.setattr(service.parts.catalog, "put_key", dies)
        with pytest.raises(_SandboxDied):
            service.parts.ingestor.add("a.jpg", demo_image("pizza"), store_original=False)
    # The image record lists the key, which does not hold it: half done.
    assert service.parts.catalog.key("a.jpg") is None
    (change,) = service.parts.catalog.changes()
    # It was another sandbox's, which died 16 minutes ago (its pid means nothing here).
    stale = {**change.attrs(), "owner": "elsewhere/boot:7.1:dead", "started_at": 1.0}
    service.parts.catalog.table.put("change", change.token, stale)

    # The next batch, about another image, finishes it.
    aws.put_object(Bucket=BUCKET, Key="images/b.jpg", Body=demo_image("elephant"))
    other = s3_record(aws, BUCKET, "ObjectCreated:Put", "images/b.jpg", "0062E5A7A3F2B9C401")
    assert invoke(embed, other) == {"batchItemFailures": []}
    assert not service.parts.catalog.changes()
    held = service.parts.catalog.key("a.jpg")
    assert held.status == "present" and service.image(held.image_id).status == "indexed"
    assert service.count() == 2


def emitted_metrics(output: str) -> dict[str, list[float]]:
    """The metrics in the embedded metric format lines a function printed, by name."""
    found: dict[str, list[float]] = {}
    for line in output.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "imgsearch"
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                found.setdefault(metric["Name"], []).extend(
                    values if isinstance(values, list) else [values]
                )
    return found


def test_each_batch_reports_what_it_indexed_refused_and_left_waiting(aws, capsys) -> None:
    embed = load_function("embed")
    capsys.readouterr()
    aws.put_object(Bucket=BUCKET, Key="images/pizza.jpg", Body=demo_image("pizza"))
    aws.put_object(Bucket=BUCKET, Key="images/elephant.jpg", Body=demo_image("elephant"))
    aws.put_object(Bucket=BUCKET, Key="images/broken.jpg", Body=b"\xff\xd8 not really")
    records = [
        s3_record(aws, BUCKET, "ObjectCreated:Put", f"images/{name}.jpg", f"0{i}")
        for i, name in enumerate(("pizza", "elephant", "broken"))
    ]
    assert invoke(embed, *records) == {"batchItemFailures": []}
    first = emitted_metrics(capsys.readouterr().out)
    assert first["ImagesIndexed"] == [2] and first["ImagesRefused"] == [1]
    assert first["ImagesFailed"] == [0] and first["PendingImages"] == [0]
    assert len(first["BuildSeconds"]) == 1 and first["BuildSeconds"][0] > 0

    # The build fails: the whole batch comes back, and nothing is counted as indexed.
    aws.delete_object(Bucket=BUCKET, Key="images/pizza.jpg")
    removed = s3_record(aws, BUCKET, "ObjectRemoved:Delete", "images/pizza.jpg", "09")
    embed.service.parts.builder.run = lambda *a, **k: 1 / 0
    with pytest.raises(ZeroDivisionError):
        invoke(embed, removed)
    failed = emitted_metrics(capsys.readouterr().out)
    assert "ImagesIndexed" not in failed
    # Another builder holds the index lease: the batch is applied, this one builds nothing,
    # and what waits for the index (the index's lag) is what it reports.
    embed.service.parts.builder.run = lambda *a, **k: BuildReport(busy=True)
    aws.put_object(Bucket=BUCKET, Key="images/chair.jpg", Body=demo_image("chair"))
    invoke(embed, removed, s3_record(aws, BUCKET, "ObjectCreated:Put", "images/chair.jpg", "0A"))
    waiting = emitted_metrics(capsys.readouterr().out)
    assert waiting["PendingImages"] == [2] and waiting["ImagesIndexed"] == [0]
    # The lease is free again: the next batch indexes both, and nothing waits.
    del embed.service.parts.builder.run
    embed.handler(sqs_event({"Service": "Amazon S3", "Event": "s3:TestEvent"}), FakeContext())
    done = emitted_metrics(capsys.readouterr().out)
    assert done["ImagesIndexed"] == [1] and done["ImagesRemoved"] == [1]
    assert done["PendingImages"] == [0]
