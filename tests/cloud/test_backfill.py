"""`imgsearch backfill s3://BUCKET/PREFIX`: what a bucket held before the stack's events reached
the queue gets indexed, resumably, and re-embedded after a model change; on moto."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
from moto import mock_aws
from support.aws_resources import FAKE_CREDENTIALS
from support.demo import demo_image
from support.dynamodb import install_cheap_transactions

from imgsearch.cli import main
from imgsearch.config import Settings, get_settings
from imgsearch.service import ImageSearch
from imgsearch.storage.aws_resources import create_bucket, create_tables

pytestmark = pytest.mark.model  # backfilling embeds the images

BUCKET = "imgsearch-backfill-test"
TABLES = {"CatalogTable": "backfill-catalog", "FeedbackTable": "backfill-feedback"}
OLD = {  # what the bucket held before the stack was deployed, under images/old/
    "elephant 1.jpg": demo_image("elephant"),
    "elephant 2.jpg": demo_image("elephant", 2),
    "pizza.jpg": demo_image("pizza"),
    "plane.jpg": demo_image("airplanes"),
    "chair.jpg": demo_image("chair"),
}


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    for name, value in {
        **FAKE_CREDENTIALS,
        "IMGSEARCH_CATALOG_TABLE": TABLES["CatalogTable"],
        "IMGSEARCH_FEEDBACK_TABLE": TABLES["FeedbackTable"],
        "IMGSEARCH_CACHE_DIR": str(tmp_path / "cache"),
        "IMGSEARCH_DECODE_WORKERS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    get_settings.cache_clear()
    install_cheap_transactions()
    with mock_aws():
        s3 = boto3.client("s3")
        create_bucket(s3, BUCKET)
        create_tables(boto3.client("dynamodb"), TABLES)
        for key, data in OLD.items():
            s3.put_object(Bucket=BUCKET, Key=f"images/old/{key}", Body=data)
        s3.put_object(Bucket=BUCKET, Key="images/old/notes.jpg", Body=b"not an image at all")
        s3.put_object(Bucket=BUCKET, Key="images/other/pizza.jpg", Body=demo_image("pizza", 2))
        yield s3
    get_settings.cache_clear()


def collection() -> ImageSearch:
    return ImageSearch(Settings(backend="aws", bucket=BUCKET, decode_workers=0))


def test_a_backfill_indexes_what_the_bucket_held_and_resumes_where_it_stopped(
    bucket, tmp_path, monkeypatch, capsys
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    url = f"s3://{BUCKET}/images/old/"
    command = ["backfill", url, "--batch", "2", "--checkpoint", str(checkpoint)]

    # The machine running it dies during the second batch's index build.
    builds = 0
    build_index = ImageSearch.build_index

    def dies_on_the_second_build(self: ImageSearch):
        nonlocal builds
        builds += 1
        if builds == 2:
            raise KeyboardInterrupt
        return build_index(self)

    with monkeypatch.context() as patch:
        patch.setattr(ImageSearch, "build_index", dies_on_the_second_build)
        assert main(command) == 130
    saved = json.loads(checkpoint.read_text())
    # Keys in S3's order (chair, elephant 1 ...): the first batch is done, not the second.
    assert saved == {
        "url": url,
        "reembed": False,
        "last_key": "images/old/elephant 1.jpg",
        "done": False,
    }

    capsys.readouterr()
    assert main(command) == 0
    out = capsys.readouterr()
    assert "resuming after images/old/elephant 1.jpg" in out.err
    # Resumed: only the four keys after the checkpoint were listed again.
    assert out.out.startswith("4 objects in ")
    assert "1 refused" in out.out and "done" in out.out
    assert json.loads(checkpoint.read_text())["done"] is True

    service = collection()
    assert service.count() == len(OLD)  # images/other/ was not asked for
    assert service.upload_status("old/notes.jpg").status == "refused"
    assert service.find_key("other/pizza.jpg") is None
    hits = service.search_text("elephant", limit=2).hits
    elephants = {service.find_key(f"old/elephant {n}.jpg").id for n in (1, 2)}
    assert {hit.image_id for hit in hits} == elephants

    # A finished backfill is not run again by accident; --restart runs it (changing nothing).
    assert main(command) == 2
    assert main([*command, "--restart"]) == 0
    assert "5 unchanged" in capsys.readouterr().out
    assert collection().count() == len(OLD)


def test_reembed_replaces_every_embedding_and_rebuilds_the_index(bucket, tmp_path) -> None:
    url = f"s3://{BUCKET}/images/"
    checkpoint = ["--checkpoint", str(tmp_path / "checkpoint.json")]
    assert main(["backfill", url, *checkpoint]) == 0
    service = collection()
    pizza = service.find_key("old/pizza.jpg")
    features, probabilities = service.embedding(pizza.id)
    # As if another model had embedded it: other vectors, other classes.
    catalog = service.parts.catalog
    catalog.put_embedding(
        pizza.id, features[::-1].copy(), probabilities[::-1].copy(), overwrite=True
    )
    catalog.update_image(pizza.id, lambda r: r.__class__(**{**r.__dict__, "classes": ((0, 1.0),)}))

    assert main(["backfill", url, "--reembed", *checkpoint]) == 2  # another backfill's file
    assert main(["backfill", url, "--reembed", "--restart", *checkpoint]) == 0
    service = collection()
    again, probabilities_again = service.embedding(pizza.id)
    assert np.allclose(again, features, atol=1e-5)
    assert np.allclose(probabilities_again, probabilities, atol=1e-5)
    assert service.image(pizza.id).classes == pizza.classes
    # The index was rebuilt from the embeddings: every image, found by its own vector.
    assert service.count() == len(OLD) + 1
    assert service.similar(pizza.id, limit=1)[0].image_id == service.find_key("other/pizza.jpg").id
