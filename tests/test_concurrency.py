"""Many writers at once, and events as the cloud delivers them: nothing lost, nothing twice."""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.demo import demo_image
from support.services import API_KEY, make_service

from imgsearch.cloud.s3_events import parse_s3_records
from imgsearch.config import Settings
from imgsearch.index.manifest import read_manifest
from imgsearch.ingest import IngestResult
from imgsearch.service import ImageSearch

IMAGES = [("elephant", 1), ("pizza", 2), ("chair", 3), ("lotus", 4), ("watch", 5), ("camera", 6)]


def _images() -> list[bytes]:
    return [demo_image(category, number) for category, number in IMAGES]


def assert_indexed_exactly_once(service: ImageSearch, expected_ids: set[str]) -> None:
    manifest, _ = read_manifest(service.parts.storage.objects)
    service.parts.index.refresh(force=True)
    listed = [
        i for shard in service.parts.index.shards for i in shard.ids if i in service.parts.index
    ]
    assert sorted(listed) == sorted(expected_ids), "an image is missing or indexed twice"
    assert manifest.image_count == len(expected_ids) == service.count()
    assert not service.parts.catalog.pending()
    for image_id in expected_ids:
        assert service.image(image_id).status == "indexed"


def test_threads_ingesting_the_same_and_different_images(storage, embedder, vocabulary, tmp_path):
    """Four workers, each its own service (as four Lambda instances would be), all ingesting
    the same six images under their own keys at once, on both storage backends."""
    settings = Settings(data_dir=tmp_path / "data", shard_size=4, api_key=API_KEY)
    images = _images()

    def worker(number: int) -> list[IngestResult]:
        service = ImageSearch(settings, storage, embedder=embedder, vocabulary=vocabulary)
        order = random.Random(number).sample(range(len(images)), len(images))
        return [service.add(f"w{number}/{i}.jpg", images[i]) for i in order]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [result for batch in pool.map(worker, range(4)) for result in batch]
    final = ImageSearch(settings, storage, embedder=embedder, vocabulary=vocabulary)
    final.build_index()
    expected = {result.image_id for result in results}
    # Each image is reported added once, and a duplicate by the three workers that lost the race.
    statuses = Counter(result.status for result in results)
    assert statuses == {"added": len(images), "duplicate": 3 * len(images)}
    assert len(expected) == len(images)
    assert_indexed_exactly_once(final, expected)
    for image_id in expected:
        assert len(final.image(image_id).keys) == 4  # every worker's key remembered


def test_threads_bringing_back_a_removed_image_keep_every_key(tmp_path, embedder, vocabulary):
    """The same bytes come back under four keys at once after their image was removed."""
    settings = Settings(data_dir=tmp_path / "data", shard_size=4, api_key=API_KEY)
    data = demo_image("pizza", 2)
    first = ImageSearch(settings, embedder=embedder, vocabulary=vocabulary)
    image_id = first.add("gone.jpg", data).image_id
    first.remove_image(image_id)
    first.build_index()
    assert first.image(image_id) is None

    def worker(number: int) -> IngestResult:
        service = ImageSearch(settings, embedder=embedder, vocabulary=vocabulary)
        return service.parts.ingestor.add(f"back/{number}.jpg", data)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(worker, range(4)))
    assert Counter(result.status for result in results) == {"added": 1, "duplicate": 3}
    final = ImageSearch(settings, embedder=embedder, vocabulary=vocabulary)
    final.build_index()
    assert sorted(final.image(image_id).keys) == [f"back/{n}.jpg" for n in range(4)]
    assert_indexed_exactly_once(final, {image_id})


def _ingest_in_process(data_dir: str, number: int) -> list[str]:
    service = ImageSearch(Settings(data_dir=Path(data_dir), shard_size=4))
    images = _images()
    order = random.Random(number).sample(range(len(images)), len(images))
    return [service.add(f"p{number}/{i}.jpg", images[i]).image_id for i in order]


@pytest.mark.model  # the processes load the model
def test_processes_ingesting_into_one_data_directory(tmp_path, embedder, vocabulary) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        results = pool.starmap(_ingest_in_process, [(str(tmp_path), n) for n in range(3)])
    final = make_service(tmp_path, embedder, vocabulary, shard_size=4)
    final.build_index()
    assert_indexed_exactly_once(final, {i for ids in results for i in ids})


# Events ------------------------------------------------------------------------------------

# (key, event, content, sequencer): a key overwritten, one deleted, one deleted and re-created.
TIMELINE = [
    ("a.jpg", "ObjectCreated:Put", ("elephant", 1), "0A01"),
    ("b.jpg", "ObjectCreated:Put", ("chair", 3), "0B01"),
    ("c.jpg", "ObjectCreated:CompleteMultipartUpload", ("watch", 5), "0C01"),
    ("c.jpg", "ObjectCreated:Put", ("watch", 5), "0C01"),  # multipart: a second event
    ("a.jpg", "ObjectCreated:Put", ("pizza", 2), "0A02"),
    ("b.jpg", "ObjectRemoved:Delete", None, "0B02"),
    ("d.jpg", "ObjectCreated:Put", ("lotus", 4), "0D01"),
    ("d.jpg", "ObjectRemoved:Delete", None, "0D02"),
    ("d.jpg", "ObjectCreated:Put", ("lotus", 4), "0D03"),
    ("e.jpg", "ObjectCreated:Put", ("camera", 6), "0E01"),
    ("e.jpg", "ObjectCreated:Put", None, "0E02"),  # replaced by a broken file
]


def _record(key: str, event: str, sequencer: str) -> dict:
    return {
        "eventName": event,
        "eventSource": "aws:s3",
        "s3": {"object": {"key": f"images/{key}", "sequencer": sequencer}},
    }


def _upload(service: ImageSearch, key: str, event: str, content) -> None:
    if event.startswith("ObjectRemoved"):
        service.parts.catalog.delete_original(key)
    elif content is None:
        service.parts.catalog.put_original(key, b"\xff\xd8\xff broken", "image/jpeg")
    else:
        service.parts.catalog.put_original(key, demo_image(*content), "image/jpeg")


def _state(service: ImageSearch) -> tuple:
    service.parts.index.refresh(force=True)
    keys = {}
    for key in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        held = service.parts.catalog.key(key)
        keys[key] = (held.status, held.image_id) if held else None
    return keys, sorted(service.parts.index.image_ids()), service.count()


def _apply(service: ImageSearch, records: list[dict]) -> None:
    """What the embed function does with a batch: each event applied, then one index build."""
    for event in parse_s3_records(records):
        service.apply_event(event)
    service.build_index()


def test_shuffled_and_duplicated_events_end_in_the_clean_state(tmp_path, embedder, vocabulary):
    clean = make_service(tmp_path / "clean", embedder, vocabulary)
    for key, event, content, sequencer in TIMELINE:  # objects change as the events happen
        _upload(clean, key, event, content)
        _apply(clean, [_record(key, event, sequencer)])
    expected = _state(clean)
    assert expected[2] == 3 and expected[0]["b.jpg"][0] == "removed"
    assert expected[0]["e.jpg"][0] == "refused"

    for seed in range(3):
        rng = random.Random(seed)
        service = make_service(tmp_path / f"shuffled{seed}", embedder, vocabulary)
        for key, event, content, _ in TIMELINE:  # events arrive after the bucket settled
            _upload(service, key, event, content)
        stream = [_record(k, e, s) for k, e, _, s in TIMELINE]
        stream += rng.sample(stream, 5)  # at-least-once: some arrive twice
        rng.shuffle(stream)
        while stream:  # in batches of any size, as SQS hands them over
            size = rng.randint(1, 4)
            batch, stream = stream[:size], stream[size:]
            _apply(service, batch)
        assert _state(service) == expected, f"seed {seed}"


def test_close_waits_for_the_background_writer(tmp_path, embedder, vocabulary) -> None:
    """`imgsearch serve`'s writer is stopped and joined before the parts it uses are closed:
    a build never runs on a closed index or decoder."""
    service = make_service(tmp_path / "data", embedder, vocabulary, index_drain_seconds=0.05)
    service.ingest("queued.jpg", demo_image("pizza"))  # queued, not built
    thread = service.recover_in_background()
    service.close()
    assert not thread.is_alive()
    reopened = make_service(tmp_path / "data", embedder, vocabulary)
    assert reopened.count() == 1  # the build it started was finished, not cut off
