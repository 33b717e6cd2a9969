"""What the collection holds: GET /api/explore (things in the photos) and the near-duplicate
routes, GET /api/duplicates and GET /api/images/{id}/duplicates; and how answers travel
(compressed JSON, cacheable thumbnails, the small thumbnail)."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.demo import demo_image, near_copy
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, make_service

from imgsearch.api.app import create_app
from imgsearch.config import MAX_DUPLICATE_DISTANCE, Settings
from imgsearch.feedback import QUORUM
from imgsearch.service import ImageSearch

CLASS_PROBABILITY = 0.3  # as overview.py counts a class (checked against brute force below)


def test_explore_counts_classes_as_the_stored_probabilities_say(demo_client, demo_service):
    topics = demo_client.get("/api/explore", params={"limit": 50}).json()["topics"]
    classes = [t for t in topics if t["kind"] == "class"]
    assert classes, topics
    counts = [t["count"] for t in classes]
    assert counts == sorted(counts, reverse=True)
    # Brute force over every image's stored probabilities, against the posting lists' counts.
    names = demo_service.class_names
    probabilities = np.stack(
        [demo_service.embedding(i)[1] for i in demo_service.indexed_ids()]
    ).astype(np.float32)
    expected = (probabilities >= CLASS_PROBABILITY).sum(axis=0)
    for topic in classes:
        class_id = names.index(topic["label"])
        assert topic["count"] == expected[class_id], topic["label"]
        assert topic["query"] == topic["label"]
        cover = demo_service.embedding(topic["cover"]["id"])[1]
        assert cover[class_id] == pytest.approx(probabilities[:, class_id].max(), abs=1e-3)
    assert classes[0]["count"] == int(np.sort(expected)[-1])


@pytest.mark.model  # what the model sees
def test_explore_shows_what_the_demo_photos_hold(demo_client) -> None:
    topics = demo_client.get("/api/explore").json()["topics"]
    assert len(topics) == 12
    labels = [t["label"] for t in topics]
    assert any("elephant" in label for label in labels), labels
    assert all(t["cover"]["thumbnail"].endswith("/thumbnail") for t in topics)


def test_a_topic_whose_cover_was_removed_waits_for_the_next_build(service, client) -> None:
    image_id = client.post("/api/images", files={"file": ("e.jpg", demo_image("elephant"))})
    image_id = image_id.json()["id"]
    topics = client.get("/api/explore").json()["topics"]
    assert topics and {t["cover"]["id"] for t in topics} == {image_id}
    client.delete(f"/api/images/{image_id}")
    assert image_id in service.parts.index  # its removal only queued...
    assert client.get("/api/explore").json()["topics"] == []  # ...but no topic shows it


def test_a_taught_word_joins_explore_once_independent_clients_agree(service, client) -> None:
    """Explore is everyone's start page: a word joins it only when enough clients agree to
    teach others (the quorum a search by the word applies), never by one visitor's votes."""
    ids = [
        client.post("/api/images", files={"file": (f"{c}.jpg", demo_image(c))}).json()["id"]
        for c in ("umbrella", "pizza", "chair")
    ]

    def words() -> list[dict]:
        return [t for t in client.get("/api/explore").json()["topics"] if t["kind"] == "word"]

    def votes_from(address: str, session: str) -> None:
        voter = TestClient(create_app(service), client=(address, 40_000))
        for image_id, vote in ((ids[0], 1), (ids[1], 1), (ids[2], -1)):
            body = {"query": "Picnic", "image_id": image_id, "vote": vote, "session": session}
            assert voter.post("/api/feedback", json=body).status_code == 200

    assert not words()
    votes_from("198.51.100.1", "s1")
    votes_from("198.51.100.1", "s2")  # the same client in another session: still one voice
    assert not words()  # one visitor's word stays theirs
    for n in range(2, QUORUM + 1):
        votes_from(f"198.51.{n}.1", f"s{n + 1}")
    (word,) = words()
    assert (word["label"], word["query"], word["count"]) == ("picnic", "picnic", 2)
    assert word["cover"]["id"] in ids[:2]
    for limit in (1, 2, 5):  # `limit` bounds the whole answer, the taught word first
        topics = client.get("/api/explore", params={"limit": limit}).json()["topics"]
        assert len(topics) == min(limit, 1 + len(ids)), topics
        assert topics[0]["kind"] == "word"


def test_near_copies_are_stacked_and_others_are_not(client) -> None:
    original = demo_image("sunflower")
    first = client.post("/api/images", files={"file": ("a.jpg", original)}).json()["id"]
    copy = client.post("/api/images", files={"file": ("b.jpg", near_copy(original))}).json()["id"]
    other = client.post("/api/images", files={"file": ("c.jpg", demo_image("elephant"))}).json()
    assert client.get(f"/api/images/{first}/duplicates").json()["results"][0]["id"] == copy
    assert client.get(f"/api/images/{other['id']}/duplicates").json()["results"] == []
    body = client.get("/api/duplicates").json()
    assert body["total"] == 1
    (stack,) = body["stacks"]
    assert stack["count"] == 2
    assert [r["id"] for r in stack["results"]] == [copy, first]  # newest first


def test_a_stack_whose_copies_were_removed_is_not_counted_or_paged(client) -> None:
    """Removals leave the index at its next build; the stacks listed and their total already
    leave them out, so a page and the total agree."""
    ids = {}
    for name in ("sunflower", "elephant"):  # the elephant's stack is the newer
        original = demo_image(name)
        first = client.post("/api/images", files={"file": ("a.jpg", original)}).json()["id"]
        copy = client.post("/api/images", files={"file": ("b.jpg", near_copy(original))})
        ids[name] = (first, copy.json()["id"])
    assert client.get("/api/duplicates").json()["total"] == 2
    client.delete(f"/api/images/{ids['elephant'][1]}")
    body = client.get("/api/duplicates", params={"limit": 1}).json()
    assert body["total"] == 1
    (stack,) = body["stacks"]
    assert [r["id"] for r in stack["results"]] == [ids["sunflower"][1], ids["sunflower"][0]]


def test_duplicates_read_the_near_copy_lists_not_every_neighbour_list(service, client) -> None:
    catalog = service.parts.catalog
    read = []
    lists = catalog.stored_lists
    catalog.stored_lists = lambda ids: read.append(list(ids)) or lists(ids)
    assert client.get("/api/duplicates").json()["total"] == 0
    assert read == []
    original = demo_image("sunflower")
    first = client.post("/api/images", files={"file": ("a.jpg", original)}).json()["id"]
    copy = client.post("/api/images", files={"file": ("b.jpg", near_copy(original))}).json()["id"]
    client.post("/api/images", files={"file": ("c.jpg", demo_image("elephant"))})
    read.clear()  # (the builder reads lists to update them)
    assert client.get("/api/duplicates").json()["total"] == 1
    assert read == []  # from the near-copy lists: only images with a near-copy have one
    near = catalog.near_copy_lists()
    assert set(near) == {first, copy} and near[copy][0][0] == first
    assert all(d <= MAX_DUPLICATE_DISTANCE for found in near.values() for _, d in found)
    # A removed image's list stays (the same bytes may come back) but its stack goes.
    client.delete(f"/api/images/{copy}")
    assert client.get("/api/duplicates").json() == {"stacks": [], "total": 0}
    client.post("/api/images", files={"file": ("b.jpg", near_copy(original))})
    assert client.get("/api/duplicates").json()["total"] == 1


def test_a_collection_indexed_before_near_copy_lists_gets_them_once(service, client) -> None:
    original = demo_image("sunflower")
    client.post("/api/images", files={"file": ("a.jpg", original)})
    client.post("/api/images", files={"file": ("b.jpg", near_copy(original))})
    expected = client.get("/api/duplicates").json()
    table = service.parts.catalog.table
    for image_id in list(service.parts.catalog.near_copy_lists()):  # as before they were kept
        table.delete("near", image_id)
    table.delete("near-complete", "complete")
    client.post("/api/images", files={"file": ("c.jpg", demo_image("elephant"))})  # a change
    # A public read never reads every neighbour list: the writer completes them, once.
    client.get("/api/duplicates")
    assert not service.parts.catalog.near_copy_lists_complete()
    # What a start, the cloud's schedule and each cloud batch run, in a process of the version
    # that keeps them (this one's builder saw them complete: it never looks again).
    parts = service.parts
    ImageSearch(service.settings, embedder=parts.embedder, vocabulary=parts.vocabulary).recover()
    assert client.get("/api/duplicates").json() == expected
    assert service.parts.catalog.near_copy_lists_complete()
    assert len(service.parts.catalog.near_copy_lists()) == 2


def test_the_duplicate_distance_is_a_setting() -> None:
    assert 0 < Settings().duplicate_distance < 0.5


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/explore", {"limit": 0}, 422),
        ("/api/explore", {"limit": 10_000}, 422),
        ("/api/explore", {"limit": "x" * 5000}, 422),
        ("/api/duplicates", {"offset": -1}, 422),
        ("/api/duplicates", {"limit": 201}, 422),
        ("/api/images/0123456789abcdef/duplicates", {}, 404),
        ("/api/images/..%2Fx/duplicates", {}, 404),
        ("/api/images/0123456789abcdef/thumbnail", {"size": 192}, 404),
    ],
)
def test_bad_overview_requests_get_a_reason(client, path, params, status) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status
    assert response.json()["detail"]
    assert len(response.content) < 1000  # an invalid input is echoed cut short


def test_a_thumbnail_size_other_than_192_or_256_is_refused(client) -> None:
    image = client.post("/api/images", files={"file": ("x.jpg", demo_image("pizza"))}).json()
    for size in (1, 100, 384, 100_000):
        response = client.get(f"/api/images/{image['id']}/thumbnail", params={"size": size})
        assert response.status_code == 422 and response.json()["detail"]


def test_the_small_thumbnail_is_smaller_and_everything_is_cacheable(client) -> None:
    image = client.post("/api/images", files={"file": ("x.jpg", demo_image("pizza"))}).json()
    thumbnail = f"/api/images/{image['id']}/thumbnail"
    large, small = client.get(thumbnail), client.get(thumbnail, params={"size": 192})
    assert max(Image.open(io.BytesIO(large.content)).size) == 300  # the demo photo's own size
    assert max(Image.open(io.BytesIO(small.content)).size) == 192
    assert len(small.content) < len(large.content) * 0.6
    for response in (large, small):
        assert "immutable" in response.headers["cache-control"]
        assert "content-encoding" not in response.headers  # JPEG: nothing to gain


def _tile_file(service, image_id: str) -> Path:
    return service.settings.data_dir / "objects" / "thumbnails" / f"{image_id}-tile.webp"


def test_ingest_stores_a_tile_thumbnail_that_results_point_to(service, client) -> None:
    image = client.post("/api/images", files={"file": ("x.jpg", demo_image("pizza"))}).json()
    stored = _tile_file(service, image["id"])
    assert stored.is_file()  # made at ingest, beside the thumbnail: a static file
    (listed,) = client.get("/api/images").json()["results"]
    assert listed["tile"].endswith(f"/api/images/{image['id']}/thumbnail?size=256")
    tile = client.get(listed["tile"])
    large = client.get(listed["thumbnail"])
    assert tile.headers["content-type"] == "image/webp"
    assert "immutable" in tile.headers["cache-control"]
    assert tile.content == stored.read_bytes()
    with Image.open(io.BytesIO(tile.content)) as picture:
        assert picture.format == "WEBP" and max(picture.size) == 256
    assert len(tile.content) < len(large.content) * 0.6
    client.delete(f"/api/images/{image['id']}")
    assert not stored.exists()  # removed with the image


def test_an_image_stored_before_tiles_gets_its_tile_once(service, client) -> None:
    image = client.post("/api/images", files={"file": ("x.jpg", demo_image("pizza"))}).json()
    stored = _tile_file(service, image["id"])
    stored.unlink()  # as an image ingested before tiles were made
    tile = client.get(f"/api/images/{image['id']}/thumbnail", params={"size": 256})
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/webp"
    assert max(Image.open(io.BytesIO(tile.content)).size) == 256
    assert stored.read_bytes() == tile.content  # stored: made once, static from then on


def test_with_a_cdn_the_tile_is_beside_the_thumbnail(tmp_path, embedder, vocabulary) -> None:
    """...and the small thumbnail is still the one asked for (the CDN holds only the
    thumbnail and the tile)."""
    cdn = make_service(tmp_path / "data", embedder, vocabulary, thumbnail_base_url="/t")
    with TestClient(create_app(cdn), headers={API_KEY_HEADER: API_KEY}) as client:
        added = client.post("/api/images", files={"file": ("x.jpg", demo_image("pizza"))})
        (listed,) = client.get("/api/images").json()["results"]
        image_id = added.json()["id"]
        thumbnail = f"/api/images/{image_id}/thumbnail"
        small = client.get(thumbnail, params={"size": 192}, follow_redirects=False)
        large = client.get(thumbnail, follow_redirects=False)
    assert listed["thumbnail"].endswith(f"/t/{image_id}.jpg")
    assert listed["tile"].endswith(f"/t/{image_id}-tile.webp")
    assert large.status_code in (302, 307) and large.headers["location"] == f"/t/{image_id}.jpg"
    assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(small.content)).size) == 192


def test_json_is_compressed_for_clients_that_accept_it(demo_client) -> None:
    plain = demo_client.get("/api/images", params={"limit": 48}, headers={"Accept-Encoding": ""})
    packed = demo_client.get("/api/images", params={"limit": 48})
    assert packed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert packed.json() == plain.json()
    assert int(packed.headers["content-length"]) < len(plain.content) / 4


def test_the_start_views_words_are_kept_until_a_vote_here_or_a_few_seconds(
    service, client, monkeypatch
) -> None:
    """Every start page asks for the taught words: one process reads them once, again after
    a vote of its own at once, and after `feedback_cache_seconds` for other processes'."""
    image_id = client.post("/api/images", files={"file": ("u.jpg", demo_image("umbrella"))})
    image_id = image_id.json()["id"]
    feedback = service.parts.feedback
    reads: list[str] = []
    table = feedback.table

    class Counted:
        def query(self, pk: str, **options):
            reads.append(pk)
            return table.query(pk, **options)

        def __getattr__(self, name: str):
            return getattr(table, name)

    monkeypatch.setattr(feedback, "table", Counted())
    for _ in range(3):
        assert client.get("/api/explore").status_code == 200
    assert reads.count("taught") == 1
    body = {"query": "picnic", "image_id": image_id, "vote": 1, "session": "s"}
    assert client.post("/api/feedback", json=body).status_code == 200
    client.get("/api/explore")
    assert reads.count("taught") == 2  # this process's vote: read again at once
    later = time.monotonic() + service.settings.feedback_cache_seconds + 1
    with monkeypatch.context() as patched:
        patched.setattr(time, "monotonic", lambda: later)
        client.get("/api/explore")
    assert reads.count("taught") == 3  # and after a few seconds, for other processes' votes


def test_start_views_waiting_for_the_taught_words_take_the_reading_made_meanwhile(
    service, monkeypatch
) -> None:
    """Requests that waited while one read the taught words take the next reading, not one
    each: with votes landing here all the while, each waiting start view read every taught
    word in turn, so that a few at once held as many server threads for that many readings."""
    import imgsearch.service as service_module

    reading, release = threading.Event(), threading.Event()
    readings = []
    real = service_module.word_topics

    def read_slowly(feedback, index):
        readings.append(None)
        service._forget_learned("picnic")  # a vote of this process lands during each reading
        if len(readings) == 1:
            reading.set()
            release.wait(10)
        return real(feedback, index)

    monkeypatch.setattr(service_module, "word_topics", read_slowly)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(service.explore, 12)
        assert reading.wait(10)
        waiting = [pool.submit(service.explore, 12) for _ in range(5)]
        time.sleep(0.3)  # all of them waiting for the first reading
        release.set()
        for future in [first, *waiting]:
            future.result(timeout=30)
    assert len(readings) == 2  # the first, and one after the votes the others waited behind
