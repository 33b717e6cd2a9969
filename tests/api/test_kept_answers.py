"""Answers a server process keeps (api/kept.py): the same bytes as the response models make,
and never older than the collection: a removal, a publication or a vote by another process
shows in the next answer; votes drop no kept "more like this" page."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from support.demo import demo_image, near_copy
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, make_service

from imgsearch.api import presenters
from imgsearch.api.app import create_app
from imgsearch.api.kept import PAGE_OVERHEAD
from imgsearch.api.schemas import Duplicates, Explore, Result, Results, Stack, Topic
from imgsearch.results import Hit, ImageRecord
from imgsearch.service import ImageSearch

CATEGORIES = ("elephant", "pizza", "chair")
# Keys whose JSON must be escaped as pydantic escapes it: quotes, non-ASCII, a line separator.
ODD_KEYS = ('a "quoted" name.jpg', "éléphant ünïcode 🐘.jpg", "line\u2028sep.jpg")


@pytest.fixture
def collection(service: ImageSearch) -> ImageSearch:
    """Four photos of each of three categories, three of them under odd keys, indexed with
    their neighbour lists; served without waiting between index refreshes."""
    for category in CATEGORIES:
        for number in range(1, 5):
            service.ingest(f"{category}/{number}.jpg", demo_image(category, number))
    for key, number in zip(ODD_KEYS, range(5, 8), strict=True):
        service.ingest(key, demo_image("elephant", number))
    service.build_index()
    service.parts.index.refresh_interval = 0.0  # follow every publication at once
    return service


@pytest.fixture
def served(collection: ImageSearch) -> Iterator[TestClient]:
    with TestClient(create_app(collection), headers={API_KEY_HEADER: API_KEY}) as client:
        yield client


def _request(client: TestClient) -> Request:
    """A request to the client's app as the test client sends them (the same URL base)."""
    scope = {
        "type": "http",
        "app": client.app,
        "headers": [(b"host", b"testserver")],
        "scheme": "http",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "server": ("testserver", 80),
    }
    return Request(scope)


def _fresh(service: ImageSearch, path: str) -> bytes:
    """What a server process that kept nothing answers (a new service on the same data)."""
    other = _another_process(service)
    other.parts.index.refresh_interval = 0.0
    with TestClient(create_app(other)) as client:
        return client.get(path).content


def _another_process(service: ImageSearch, **settings: object) -> ImageSearch:
    """A service on the same data directory with its own connections and caches, as
    another server process would have."""
    return make_service(
        service.settings.data_dir,
        service.parts.embedder,
        service.parts.vocabulary,
        shard_size=service.settings.shard_size,
        **settings,
    )


def _results(
    request: Request, service: ImageSearch, hits: list[Hit], records: dict[str, ImageRecord]
) -> list[Result]:
    """`Result` objects for hits, made field by field from the images' records (what the
    JSON that presenters.py writes without them must equal), skipping an image without one."""
    urls = presenters.ImageUrls(request)
    out = []
    for hit in hits:
        record = records.get(hit.image_id)
        if record is None:
            continue
        url, thumbnail = urls.of(hit.image_id)
        out.append(
            Result(
                id=hit.image_id,
                key=record.key,
                url=url,
                thumbnail=thumbnail,
                tile=urls.tile(hit.image_id),
                score=round(hit.score, 6),
                learned=hit.learned,
                reason=hit.reason,
                tier=hit.tier,
                width=record.width,
                height=record.height,
                label=service.class_names[record.classes[0][0]] if record.classes else None,
            )
        )
    return out


def _ids(body: dict) -> list[str]:
    return [r["id"] for r in body["results"]]


def test_result_json_is_what_the_response_models_make(collection, served) -> None:
    """The same text as pydantic's serialisation of `Result` objects, for odd keys, every
    reason and tier, scores of any size and sign (float32 included), and a removed image."""
    service = collection
    records = list(service.images(service.parts.index.image_ids()).values())
    assert {r.key for r in records} >= set(ODD_KEYS)
    scores = [1.0, 0.5, 1e-7, -0.25, 123456789.125, np.float32(0.3), np.float64(2 / 3), 0.0]
    reasons = ["keyword", "learned", "voted", "explore", "similar", "listed"]
    tiers = [None, "match", "guess", "explore"]
    hits = [
        Hit(record.id, scores[n % len(scores)], reasons[n % 6], tiers[n % 4])  # type: ignore[arg-type]
        for n, record in enumerate(records)
    ]
    hits.insert(3, Hit("f" * 16, 0.9, "similar"))  # no such image: left out, as before
    request = _request(served)
    read = service.images(hit.image_id for hit in hits)
    expected = Results(results=_results(request, service, hits, read))
    made = presenters.results_body(presenters.results_json(request, service, hits))
    assert made == expected.model_dump_json(by_alias=True).encode()
    kept = served.app.state.kept.under(service.answers_version())
    for _ in range(2):  # and from the kept parts, the second time
        made = presenters.results_body(presenters.results_json(request, service, hits, kept))
        assert made == expected.model_dump_json(by_alias=True).encode()
    assert len(kept.results) == len(records) + 1


def test_overview_json_is_what_the_response_models_make(collection, served) -> None:
    """Explore, the stacks of near-copies and each image's near-copies, written without
    pydantic objects: the bytes pydantic's serialiser makes of their response models."""
    service = collection
    for number in (1, 2):
        service.ingest(f"pizza/{number} copy.jpg", near_copy(demo_image("pizza", number)))
    service.build_index()
    request = _request(served)

    def expected(model: Results | Explore | Duplicates) -> bytes:
        return model.model_dump_json(by_alias=True).encode()

    found = service.explore(50)
    topics = [
        Topic(
            kind=topic.kind,
            label=topic.label,
            query=topic.query,
            count=topic.count,
            cover=_results(request, service, [Hit(topic.cover, 1.0, "listed")], {r.id: r})[0],
        )
        for topic, r in found
    ]
    assert topics
    assert served.get("/api/explore?limit=50").content == expected(Explore(topics=topics))
    assert service.duplicates(200)[1]
    for limit, offset in ((200, 0), (1, 0), (1, 1)):  # every stack, the first, past the end
        stacks, total = service.duplicates(limit, offset)
        shown = []
        for stack in stacks:
            hits = [Hit(r.id, 1.0, "similar") for r in stack]
            copies = _results(request, service, hits, {r.id: r for r in stack})
            shown.append(Stack(count=len(copies), results=copies))
        answer = served.get("/api/duplicates", params={"limit": limit, "offset": offset})
        assert answer.content == expected(Duplicates(stacks=shown, total=total))
    records = service.images(service.parts.index.image_ids())
    near = {i: service.near_copies(i) for i in records}
    assert any(near.values())
    for image_id, hits in near.items():
        copies = Results(results=_results(request, service, hits, records))
        assert served.get(f"/api/images/{image_id}/duplicates").content == expected(copies)


def test_kept_more_like_this_follows_a_removal_in_another_process(collection, served) -> None:
    """An image removed by another server process leaves this one's kept page at its next
    request (not at its next refresh): the catalog's change token says so."""
    service = collection
    image_id = service.find_key("elephant/1.jpg").id
    path = f"/api/images/{image_id}/similar"
    first = served.get(path)
    assert served.get(path).content == first.content  # kept
    removed = _ids(first.json())[0]
    _another_process(service).remove_image(removed)
    after = served.get(path)
    assert after.status_code == 200
    assert removed not in _ids(after.json())
    assert _ids(after.json()) == [i for i in _ids(first.json()) if i != removed]
    assert after.content == _fresh(service, path)
    # Its own page is gone too, and so is it from browsing and keyword answers.
    assert served.get(f"/api/images/{removed}/similar").status_code == 404
    assert removed not in _ids(served.get("/api/images").json())
    assert removed not in _ids(served.get("/api/search", params={"q": "elephant"}).json())


def test_kept_answers_follow_a_publication_in_another_process(collection, served) -> None:
    """An image added and indexed by another process is in this one's next "more like this"
    of an image it is near (new lists, a new index generation), as a fresh process answers."""
    service = collection
    image_id = service.find_key("pizza/1.jpg").id
    path = f"/api/images/{image_id}/similar?limit=50"
    before = served.get(path)
    other = _another_process(service)
    added = other.ingest("pizza/new.jpg", demo_image("pizza", 9)).image_id
    other.build_index()
    after = served.get(path)
    assert added in _ids(after.json()) and added not in _ids(before.json())
    assert after.content == _fresh(service, path)


def test_a_vote_in_another_process_reaches_the_next_keyword_answer(collection, served) -> None:
    """Result parts are kept, rankings are not: a vote cast through another process re-ranks
    this one's next keyword answer (once its vote summaries are read again: at once here)."""
    service = collection
    service.parts.learner.cache_seconds = 0.0
    search = {"q": "dinner", "session": "s1"}
    before = served.get("/api/search", params=search).json()["results"]
    chair = service.find_key("chair/3.jpg").id
    assert before[0]["id"] != chair
    _another_process(service).vote("dinner", chair, 1, "s1")
    after = served.get("/api/search", params=search).json()["results"]
    assert after[0]["id"] == chair and after[0]["learned"] is True


def test_votes_leave_kept_more_like_this_pages(collection, served) -> None:
    """Votes are in a file of their own: neither this process's nor another's drop what is
    kept ("more like this" does not depend on them; keyword pages are never kept whole)."""
    service = collection
    image_id = service.find_key("elephant/1.jpg").id
    path = f"/api/images/{image_id}/similar"
    served.get(path)
    kept = served.app.state.kept.under(service.answers_version())
    page = ("similar", "", image_id, 20, 0)
    assert kept.pages.get(page) is not None
    voted = {"query": "dinner", "image_id": image_id, "vote": 1, "session": "s1"}
    assert served.post("/api/feedback", json=voted).status_code == 200
    _another_process(service).vote("elephant", image_id, -1, "s2")
    assert served.app.state.kept.under(service.answers_version()) is kept
    assert served.get(path).content == kept.pages.get(page) == _fresh(service, path)


def test_a_catalog_write_in_another_process_drops_kept_pages(collection, served) -> None:
    """Any write to the catalog's file, even one that changes no answer (an upload not yet
    indexed), starts what is kept afresh."""
    service = collection
    image_id = service.find_key("chair/1.jpg").id
    served.get(f"/api/images/{image_id}/similar")
    kept = served.app.state.kept.under(service.answers_version())
    assert len(kept.pages) == 1
    _another_process(service).ingest("chair/new.jpg", demo_image("chair", 9))
    now = served.app.state.kept.under(service.answers_version())
    assert now is not kept and len(now.pages) == 0


def test_kept_answers_are_bounded(collection) -> None:
    """Pages by their bytes, result parts by their number, least recently used out first."""
    page_bytes = 3000
    service = _another_process(collection, http_kept_page_bytes=page_bytes, http_kept_results=5)
    with TestClient(create_app(service)) as client:
        ids = list(service.parts.index.image_ids())
        answers = {i: client.get(f"/api/images/{i}/similar?limit=4").content for i in ids}
        kept = client.app.state.kept.under(service.answers_version())
        last = [answers[i] for i in ids[::-1]]
        weights = [len(answer) + PAGE_OVERHEAD for answer in last]
        held = next(n for n in range(len(last)) if sum(weights[: n + 1]) > page_bytes)
        assert len(kept.pages) == held and kept.pages.weight <= page_bytes
        base = ""  # "testserver" is no trusted host: result URLs are paths from the root
        assert kept.pages.get(("similar", base, ids[-1], 4, 0)) == answers[ids[-1]]
        assert kept.pages.get(("similar", base, ids[0], 4, 0)) is None
        assert len(kept.results) == 5
        for i in ids:  # the same answers again, most made afresh
            assert client.get(f"/api/images/{i}/similar?limit=4").content == answers[i]


def test_nothing_is_kept_where_the_catalog_cannot_tell_changes(collection, monkeypatch) -> None:
    """DynamoDB has no cheap change token: every answer is made afresh."""
    service = collection
    monkeypatch.setattr(service.parts.catalog.table, "change_token", lambda: None)
    assert service.answers_version() is None
    with TestClient(create_app(service)) as client:
        image_id = service.find_key("chair/1.jpg").id
        first = client.get(f"/api/images/{image_id}/similar").content
        assert client.get(f"/api/images/{image_id}/similar").content == first
        kept = client.app.state.kept._kept  # what any version kept: nothing
        assert len(kept.pages) == 0 and len(kept.results) == 0
