"""Ingest: idempotent per content, ordered per key, refusals recorded, data kept on restart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support.demo import demo_image
from support.hostile_files import encode, photo
from support.services import make_service

from imgsearch.ingest import sequencer_is_newer
from imgsearch.integrity import DamagedFile


def test_same_bytes_under_two_keys_are_one_image_with_both_keys(service) -> None:
    data = demo_image("elephant")
    first = service.add("a/elephant.jpg", data)
    second = service.add("b/copy.jpg", data)
    again = service.add("a/elephant.jpg", data)
    assert (first.status, second.status, again.status) == ("added", "duplicate", "unchanged")
    assert first.image_id == second.image_id == again.image_id
    record = service.image(first.image_id)
    assert record.keys == ("a/elephant.jpg", "b/copy.jpg")
    assert record.status == "indexed"
    assert service.count() == 1
    assert service.find_key("b/copy.jpg").id == first.image_id


def test_a_refused_file_is_recorded_and_blocks_nothing(service) -> None:
    good = service.add("good.jpg", demo_image("pizza"))
    bad = service.add("bad.jpg", b"GIF89a but then nothing")
    assert bad.status == "refused" and "supported format" in bad.reason
    held = service.parts.catalog.key("bad.jpg")
    assert held.status == "refused" and held.reason == bad.reason
    assert service.count() == 1 and service.image(good.image_id).status == "indexed"


def test_replacing_the_bytes_under_a_key_replaces_the_image(service) -> None:
    old = service.add("photo.jpg", demo_image("camera"))
    new = service.add("photo.jpg", demo_image("chair"))
    assert new.status == "added" and new.image_id != old.image_id
    assert service.image(old.image_id) is None
    assert service.find_key("photo.jpg").id == new.image_id
    assert service.count() == 1


def test_refused_bytes_sent_under_a_key_leave_its_image(service) -> None:
    """Through the API or the CLI the caller holds the bytes: refusing them changes nothing.
    From the bucket, the object itself was replaced by them: its image goes."""
    kept = service.add("photo.jpg", demo_image("camera"))
    refused = service.add("photo.jpg", b"not an image at all")
    assert refused.status == "refused"
    assert service.find_key("photo.jpg").id == kept.image_id
    assert service.image(kept.image_id).status == "indexed" and service.count() == 1

    replaced = service.parts.ingestor.add("photo.jpg", b"not an image at all", store_original=False)
    service.build_index()
    assert (
        replaced.status == "refused" and service.parts.catalog.key("photo.jpg").status == "refused"
    )
    assert service.image(kept.image_id) is None and service.count() == 0


def test_removing_a_key_keeps_an_image_another_key_still_holds(service) -> None:
    data = demo_image("lotus")
    added = service.add("one.jpg", data)
    service.add("two.jpg", data)
    service.parts.ingestor.remove("one.jpg")
    service.build_index()
    assert service.image(added.image_id).keys == ("two.jpg",)
    assert service.count() == 1
    service.parts.ingestor.remove("two.jpg")
    service.build_index()
    assert service.image(added.image_id) is None
    assert service.count() == 0
    assert service.parts.catalog.key("two.jpg").status == "removed"


def test_an_older_event_never_undoes_a_newer_one(service) -> None:
    service.parts.ingestor.remove("late.jpg", sequencer="0062E5A7A3F2B9C4D2")
    stale = service.parts.ingestor.add(
        "late.jpg", demo_image("watch"), sequencer="0062E5A7A3F2B9C4D1"
    )
    assert stale.status == "stale"
    service.build_index()
    assert service.count() == 0
    newer = service.parts.ingestor.add(
        "late.jpg", demo_image("watch"), sequencer="0062E5A7A3F2B9C4D3"
    )
    assert newer.status == "added"


def test_sequencers_compare_as_right_padded_hex() -> None:
    assert sequencer_is_newer("0062E5A7A3F2B9C4D3", "0062E5A7A3F2B9C4D2")
    assert sequencer_is_newer("0062E5A7A3F2B9C4D200", "0062E5A7A3F2B9C4D1")
    assert not sequencer_is_newer("0062E5A7A3F2B9C4D1", "0062E5A7A3F2B9C4D100")
    assert sequencer_is_newer(None, "00AB") and sequencer_is_newer("00AB", None)


def test_the_collection_survives_a_restart(tmp_path, embedder, vocabulary) -> None:
    first = make_service(tmp_path / "data", embedder, vocabulary)
    added = first.add("kept.jpg", encode(photo(), "JPEG"))
    restarted = make_service(tmp_path / "data", embedder, vocabulary)
    assert restarted.count() == 1
    assert restarted.find_key("kept.jpg").id == added.image_id
    assert restarted.similar(added.image_id) == []  # alone: nothing is similar yet


def test_an_upload_that_loses_its_name_to_another_is_stored_under_a_name_of_its_own(
    service, monkeypatch
) -> None:
    """Two uploads of different photos with one file name at once: both find the name free,
    the later write takes the key, and the earlier photo, replaced, leaves. Its upload is
    stored again under the name with its content id (as if it had come second), searchable,
    not answered "pending" for an image that no key holds."""
    ingest = service.ingest

    def raced(key: str, data: bytes):
        result = ingest(key, data)
        monkeypatch.setattr(service, "ingest", ingest)
        ingest(key, demo_image("pizza"))  # the other upload's write lands just after
        return result

    monkeypatch.setattr(service, "ingest", raced)
    outcome = service.upload("photo.jpg", demo_image("elephant"))
    assert outcome.status == "added" and outcome.key == f"uploads/photo-{outcome.id[:8]}.jpg"
    assert service.find_key(outcome.key).id == outcome.id
    assert service.image(outcome.id).status == "indexed"
    assert service.find_key("uploads/photo.jpg").id != outcome.id  # the other's
    assert service.count() == 2


def test_an_upload_answers_pending_once_its_wait_is_over_and_is_indexed_later(service) -> None:
    """`upload_wait_seconds` bounds the request (the cloud's is below API Gateway's 29 s):
    while another builder holds the index, the upload answers "pending" in about that time,
    and the image is searchable after the next build."""
    from imgsearch.index.builder import Lease

    service.settings = service.settings.model_copy(update={"upload_wait_seconds": 0.5})
    other = Lease(service.parts.catalog.table, "indexer", 30.0)
    other.owner = "another-machine:1:x"  # alive as far as this process can tell
    assert other.acquire()
    outcome = service.upload("waiting.jpg", demo_image("elephant"))
    assert outcome.status == "pending"
    assert service.image(outcome.id).status == "pending" and service.count() == 0
    other.release()
    service.build_index()
    assert service.image(outcome.id).status == "indexed" and service.count() == 1


def test_an_embedding_reads_back_the_same_just_stored_or_from_its_file(service) -> None:
    """The catalog keeps what it just stored for the index builder: what it gives back is
    what its file gives (float32 features, the probabilities as given), and one the file
    would not pass (a NaN) is refused either way."""
    catalog = service.parts.catalog
    features = np.linspace(-1, 1, 1280)  # float64: stored as float32
    probabilities = np.full(1000, 0.001, np.float32)
    catalog.put_embedding("a" * 16, features, probabilities)
    fresh = catalog.embedding("a" * 16)  # kept by the catalog that stored it
    stored = catalog.embedding("a" * 16)  # then read from its file
    for got in (fresh, stored):
        assert got[0].dtype == np.float32 and got[1].dtype == np.float32
        assert np.array_equal(got[0], features.astype(np.float32))
        assert np.array_equal(got[1], probabilities)
    features[0] = np.nan
    catalog.put_embedding("b" * 16, features, probabilities)
    for _ in ("fresh", "from the file"):
        with pytest.raises(DamagedFile, match="wrong shape or values"):
            catalog.embedding("b" * 16)


def test_reembedding_reads_only_bytes_that_are_still_the_image(service) -> None:
    """From the first key that holds the image's bytes (one overwritten since, its event not
    yet applied, holds others), and its record's top classes follow the new embedding."""
    data = demo_image("elephant")
    image_id = service.add("a.jpg", data).image_id
    service.add("b.jpg", data)
    catalog, ingestor = service.parts.catalog, service.parts.ingestor
    classes = service.image(image_id).classes
    catalog.update_image(image_id, lambda record: replace(record, classes=((0, 1.0),)))
    service.parts.storage.objects.put("images/a.jpg", demo_image("pizza"))
    assert not ingestor.reembed(image_id, ["a.jpg", "gone.jpg"])
    assert service.image(image_id).classes == ((0, 1.0),)
    assert ingestor.reembed(image_id)  # b.jpg
    assert service.image(image_id).classes == classes
