"""Every route of the HTTP API, through real HTTP requests to the FastAPI app."""

from __future__ import annotations

import pytest
from support.demo import demo_image
from support.hostile_files import encode, photo
from support.openapi import API_KEY_HEADER, parameter
from support.services import API_KEY
from support.votes import term_votes

from imgsearch.api.deps import get_client


def _keys(results: list[dict]) -> list[str]:
    return [r["key"] for r in results]


def _id_of(client, key: str) -> str:
    (found,) = client.get("/api/images", params={"key": key}).json()["results"]
    return found["id"]


def test_health_counts_the_images(demo_client) -> None:
    assert demo_client.get("/api/health").json() == {
        "status": "ok",
        "images": 192,
        "recovering": False,
        "class_counts_known": True,
    }


@pytest.mark.model  # what the model sees
def test_keyword_search_finds_the_demo_elephants_first(demo_client) -> None:
    body = demo_client.get("/api/search", params={"q": "elephant"}).json()
    assert body["query"] == "elephant"
    top = _keys(body["results"][:10])
    assert all(key.startswith("elephant/") for key in top), top
    assert any("elephant" in c["label"].lower() for c in body["interpretation"]["classes"])
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.model  # what the model sees
def test_search_says_how_sure_it_is(demo_client) -> None:
    body = demo_client.get("/api/search", params={"q": "elephant", "limit": 20}).json()
    tiers = [r["tier"] for r in body["results"]]
    assert 0 < body["matches"] < 20 and body["did_you_mean"] is None
    assert tiers == ["match"] * body["matches"] + ["guess"] * (20 - body["matches"])
    assert all(r["key"].startswith("elephant/") for r in body["results"][: body["matches"]])
    classes = body["interpretation"]["classes"]
    assert all(isinstance(c["photos"], int) for c in classes)
    assert sum(c["photos"] for c in classes) >= body["matches"]
    misspelt = demo_client.get("/api/search", params={"q": "elefant"}).json()
    assert misspelt["did_you_mean"] == "elephant" and misspelt["matches"] == 0
    similar = demo_client.get(f"/api/images/{body['results'][0]['id']}/similar").json()
    assert {r["tier"] for r in similar["results"]} == {None}


def test_search_pages_do_not_overlap(demo_client) -> None:
    first = demo_client.get("/api/search", params={"q": "flower", "limit": 5}).json()["results"]
    second = demo_client.get("/api/search", params={"q": "flower", "limit": 5, "offset": 5}).json()[
        "results"
    ]
    assert len(first) == len(second) == 5
    assert not set(_keys(first)) & set(_keys(second))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "x" * (parameter("get", "/api/search", "q")["maxLength"] + 1)},
        {"q": "cat", "limit": 0},
        {"q": "cat", "limit": 10_000},
        {"q": "cat", "offset": -1},
        {"q": "cat", "session": "has spaces"},
    ],
)
def test_bad_search_requests_get_422_with_a_detail(demo_client, params) -> None:
    response = demo_client.get("/api/search", params=params)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_browse_and_find_by_key(demo_client) -> None:
    page = demo_client.get("/api/images", params={"limit": 10, "offset": 5}).json()
    assert page["total"] == 192 and len(page["results"]) == 10
    found = demo_client.get("/api/images", params={"key": "pagoda/image_0003.jpg"}).json()
    assert _keys(found["results"]) == ["pagoda/image_0003.jpg"] and found["total"] == 1
    # Listed, not ranked: no result claims to match words.
    assert {r["reason"] for r in page["results"] + found["results"]} == {"listed"}
    missing = demo_client.get("/api/images", params={"key": "no/such.jpg"}).json()
    assert missing == {"results": [], "total": 0}


@pytest.mark.model  # what the model sees
def test_image_detail_bytes_and_thumbnail(demo_client) -> None:
    image_id = _id_of(demo_client, "sunflower/image_0001.jpg")
    detail = demo_client.get(f"/api/images/{image_id}").json()
    assert detail["key"] == "sunflower/image_0001.jpg"
    assert detail["width"] > 0 and detail["height"] > 0
    assert len(detail["classes"]) == 5
    assert any("daisy" in c["label"] or "sunflower" in c["label"] for c in detail["classes"][:3])
    original = demo_client.get(detail["url"])
    assert original.content == demo_image("sunflower")
    assert original.headers["content-type"] == "image/jpeg"
    thumbnail = demo_client.get(detail["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize("path", ["", "/similar", "/file", "/thumbnail"])
def test_unknown_and_malformed_image_ids(demo_client, path) -> None:
    assert demo_client.get(f"/api/images/0123456789abcdef{path}").status_code == 404
    assert demo_client.get(f"/api/images/..%2F..%2Fetc{path}").status_code in (404, 422)
    assert demo_client.get(f"/api/images/NOT-AN-ID{path}").status_code == 422


@pytest.mark.model  # what the model sees
def test_similar_images_are_from_the_same_category(demo_client) -> None:
    image_id = _id_of(demo_client, "starfish/image_0002.jpg")
    results = demo_client.get(f"/api/images/{image_id}/similar", params={"limit": 5}).json()
    keys = _keys(results["results"])
    assert len(keys) == 5 and "starfish/image_0002.jpg" not in keys
    assert sum(key.startswith("starfish/") for key in keys) >= 4, keys


def test_pages_of_similar_images_neither_repeat_nor_skip(demo_client) -> None:
    """The stored neighbourhood (50, ranked by expanded vectors) then a live search beyond it:
    the page past the 50th continues the same ranking that one long page shows."""
    image_id = _id_of(demo_client, "laptop/image_0004.jpg")
    path = f"/api/images/{image_id}/similar"

    def ids(**params: int) -> list[str]:
        return [r["id"] for r in demo_client.get(path, params=params).json()["results"]]

    whole = ids(limit=96)
    assert len(whole) == len(set(whole)) == 96 and image_id not in whole
    assert ids(limit=48) + ids(limit=48, offset=48) == whole
    photo = demo_image("laptop", 4)

    def found(**params: int) -> list[str]:
        files = {"file": ("query.jpg", photo, "image/jpeg")}
        answer = demo_client.post("/api/search/image", files=files, data=params)
        return [r["id"] for r in answer.json()["results"]]

    assert found(limit=48) + found(limit=48, offset=48) == found(limit=96)


def test_reverse_image_search_finds_the_same_photo_first(demo_client) -> None:
    files = {"file": ("query.jpg", demo_image("laptop", 4), "image/jpeg")}
    results = demo_client.post("/api/search/image", files=files).json()["results"]
    assert results[0]["key"] == "laptop/image_0004.jpg"
    assert 0.99 < results[0]["score"] <= 1.0  # a cosine similarity, never above 1
    assert results[0]["width"] > 0 and results[0]["height"] > 0 and results[0]["label"]
    files = {"file": ("query.jpg", demo_image("laptop", 4), "image/jpeg")}
    second = demo_client.post("/api/search/image", files=files, data={"offset": 1, "limit": 3})
    assert [r["id"] for r in second.json()["results"]] == [r["id"] for r in results[1:4]]


def test_a_photos_reverse_search_is_its_copys_more_like_this(demo_client) -> None:
    """Expanded the same way (index/expansion.py), a photo and its copy in the collection get
    the same page: the copy, then its "more like this"."""
    files = {"file": ("query.jpg", demo_image("pizza", 7), "image/jpeg")}
    reverse = demo_client.post("/api/search/image", files=files, data={"limit": 21}).json()
    similar = demo_client.get(
        f"/api/images/{_id_of(demo_client, 'pizza/image_0007.jpg')}/similar", params={"limit": 20}
    ).json()
    assert reverse["results"][0]["key"] == "pizza/image_0007.jpg"
    assert [r["id"] for r in reverse["results"][1:]] == [r["id"] for r in similar["results"]]
    assert [r["score"] for r in reverse["results"][1:]] == [r["score"] for r in similar["results"]]


def test_reverse_search_refuses_a_bad_file(demo_client) -> None:
    files = {"file": ("query.jpg", b"not an image", "image/jpeg")}
    response = demo_client.post("/api/search/image", files=files)
    assert response.status_code == 415 and "supported format" in response.json()["detail"]
    assert demo_client.post("/api/search/image").status_code == 422


@pytest.mark.model  # what the model sees
def test_upload_makes_an_image_searchable(client) -> None:
    files = {"file": ("my elephant.jpg", demo_image("elephant", 3), "image/jpeg")}
    response = client.post("/api/images", files=files)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "added" and body["key"] == "uploads/my elephant.jpg"
    found = client.get("/api/search", params={"q": "elephant"}).json()["results"]
    assert [r["id"] for r in found] == [body["id"]]
    again = client.post("/api/images", files=files).json()
    assert again["status"] == "unchanged" and again["id"] == body["id"]


def test_an_upload_under_a_taken_name_does_not_replace_another_image(client) -> None:
    one = client.post("/api/images", files={"file": ("a.jpg", demo_image("pizza"))}).json()
    two = client.post("/api/images", files={"file": ("a.jpg", demo_image("watch"))}).json()
    assert one["key"] == "uploads/a.jpg" and two["key"] != one["key"]
    assert client.get("/api/health").json()["images"] == 2


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"", 422), (b"<html>hello</html>", 415), (encode(photo(), "JPEG")[:500], 422)],
)
def test_refused_uploads_say_why_and_change_nothing(client, data, status) -> None:
    response = client.post("/api/images", files={"file": ("x.jpg", data, "image/jpeg")})
    assert response.status_code == status
    assert response.json()["detail"]
    assert client.get("/api/health").json()["images"] == 0


def test_upload_over_the_byte_limit_is_413(client, service) -> None:
    too_big = b"\xff\xd8" + b"\x00" * service.settings.max_image_bytes
    response = client.post("/api/images", files={"file": ("big.jpg", too_big, "image/jpeg")})
    assert response.status_code == 413


def test_votes_pin_and_drop_results_for_that_query(client) -> None:
    ids = {}
    for category in ("elephant", "pizza", "chair"):
        files = {"file": (f"{category}.jpg", demo_image(category), "image/jpeg")}
        ids[category] = client.post("/api/images", files=files).json()["id"]
    before = client.get("/api/search", params={"q": "dinner", "session": "s1"}).json()
    vote = {"query": "Dinner", "image_id": ids["chair"], "vote": 1, "session": "s1"}
    response = client.post("/api/feedback", json=vote)
    assert response.status_code == 200 and response.json() == {"status": "ok", "term": "dinner"}
    after = client.get("/api/search", params={"q": "dinner", "session": "s1"}).json()["results"]
    assert after[0]["id"] == ids["chair"] and after[0]["learned"] is True
    client.post("/api/feedback", json={**vote, "image_id": ids["pizza"], "vote": -1})
    again = client.get("/api/search", params={"q": "dinner", "session": "s1"}).json()["results"]
    assert ids["pizza"] not in [r["id"] for r in again]
    assert before["results"] != again


def test_a_vote_taken_back_leaves_the_results_as_before(client) -> None:
    ids = {}
    for category in ("elephant", "pizza", "chair"):
        files = {"file": (f"{category}.jpg", demo_image(category), "image/jpeg")}
        ids[category] = client.post("/api/images", files=files).json()["id"]
    before = client.get("/api/search", params={"q": "supper", "session": "s9"}).json()
    vote = {"query": "supper", "image_id": ids["chair"], "vote": 1, "session": "s9"}
    assert client.post("/api/feedback", json=vote).status_code == 200
    voted = client.get("/api/search", params={"q": "supper", "session": "s9"}).json()
    assert voted["results"][0]["id"] == ids["chair"] and voted["results"][0]["learned"]
    taken_back = client.post("/api/feedback", json={**vote, "vote": 0})
    assert taken_back.json() == {"status": "ok", "term": "supper", "withdrawn": True}
    after = client.get("/api/search", params={"q": "supper", "session": "s9"}).json()
    assert [r["id"] for r in after["results"]] == [r["id"] for r in before["results"]]
    assert not any(r["learned"] for r in after["results"])
    # Taking back a vote there is not is no error, changes nothing, and says so.
    again = client.post("/api/feedback", json={**vote, "vote": 0})
    assert again.json() == {"status": "ok", "term": "supper", "withdrawn": False}


def test_a_vote_taken_back_from_another_address_goes(client) -> None:
    """A phone votes on wifi and takes the vote back on mobile data (another client id)."""
    files = {"file": ("chair.jpg", demo_image("chair"), "image/jpeg")}
    image_id = client.post("/api/images", files=files).json()["id"]
    vote = {"query": "stool", "image_id": image_id, "vote": 1, "session": "roaming"}
    client.app.dependency_overrides[get_client] = lambda: "wifi"
    assert client.post("/api/feedback", json=vote).json() == {"status": "ok", "term": "stool"}
    client.app.dependency_overrides[get_client] = lambda: "mobile"
    taken_back = client.post("/api/feedback", json={**vote, "vote": 0})
    assert taken_back.json() == {"status": "ok", "term": "stool", "withdrawn": True}
    client.app.dependency_overrides.clear()
    after = client.get("/api/search", params={"q": "stool", "session": "roaming"}).json()
    assert not any(r["learned"] for r in after["results"])
    assert term_votes(client.app.state.service.parts.feedback.table, "stool") == []


@pytest.mark.parametrize(
    "change",
    [
        {"vote": 2},
        {"vote": True},
        {"vote": "1"},
        {"image_id": "0123456789abcdef"},
        {"image_id": "../x"},
        {"session": ""},
        {"query": ""},
        {"query": "q" * 500},
    ],
)
def test_bad_votes_are_refused(client, change) -> None:
    image = client.post("/api/images", files={"file": ("x.jpg", demo_image("umbrella"))}).json()
    vote = {"query": "rain", "image_id": image["id"], "vote": 1, "session": "s1", **change}
    response = client.post("/api/feedback", json=vote)
    assert response.status_code in (404, 422)
    assert response.json()["detail"]
    assert len(response.content) < 1000  # an invalid input is echoed cut short


def test_openapi_and_docs_are_served(demo_client) -> None:
    spec = demo_client.get("/openapi.json").json()
    for path in (
        "/api/health",
        "/api/images",
        "/api/search",
        "/api/search/image",
        "/api/feedback",
        "/api/images/{image_id}/similar",
    ):
        assert path in spec["paths"]
    assert demo_client.get("/docs").status_code == 200
    # The README's contract: the API key is the X-API-Key header (tests take it from here).
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_the_openapi_document_describes_every_answer(demo_client) -> None:
    """Each JSON answer has a schema, and each route lists its refusals with their body."""
    spec = demo_client.get("/openapi.json").json()
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) >= 14
    for name, operation in operations:
        answers = operation["responses"]
        success = next(answers[s] for s in answers if s.startswith("2"))
        json_body = success.get("content", {}).get("application/json", {}).get("schema")
        if (
            "{image_id}/file" in name
            or "thumbnail" in name
            or name.startswith("DELETE /api/images")
        ):
            assert not json_body, name  # bytes, a redirect, or nothing
        else:
            assert json_body not in (None, {}), name
        refusals = {s for s in answers if s.startswith(("4", "5"))}
        assert {"400", "413", "431"} <= refusals, name
        for status in refusals:
            schema = answers[status]["content"]["application/json"]["schema"]
            assert schema["$ref"].rsplit("/", 1)[-1] in {"Problem", "HTTPValidationError"}, name
    search = dict(operations)["GET /api/search"]["responses"]["200"]
    assert search["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    interpretation = spec["components"]["schemas"]["Interpretation"]["properties"]
    assert {"query", "level", "terms", "classes", "learned"} <= set(interpretation)


def test_the_web_page_is_served_at_the_root(service) -> None:
    from fastapi.testclient import TestClient

    from imgsearch.api.app import create_app
    from imgsearch.cli import WEB_DIR

    with TestClient(create_app(service, web_dir=WEB_DIR)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<title>imgsearch</title>" in page.text
        assert client.get("/api/health").status_code == 200


def test_changing_the_collection_needs_the_api_key(service) -> None:
    from fastapi.testclient import TestClient

    from imgsearch.api.app import create_app

    files = {"file": ("e.jpg", demo_image("elephant"), "image/jpeg")}
    with TestClient(create_app(service)) as anonymous:
        assert anonymous.post("/api/images", files=files).status_code == 401
        wrong = anonymous.post("/api/images", files=files, headers={API_KEY_HEADER: "guess"})
        assert wrong.status_code == 403 and wrong.json()["detail"]
        added = anonymous.post("/api/images", files=files, headers={API_KEY_HEADER: API_KEY})
        image_id = added.json()["id"]
        assert anonymous.delete(f"/api/images/{image_id}").status_code == 401
        assert anonymous.get("/api/search", params={"q": "elephant"}).status_code == 200
        assert anonymous.get("/api/health").json()["images"] == 1


def test_delete_removes_the_image_and_its_bytes(client) -> None:
    files = {"file": ("e.jpg", demo_image("elephant"), "image/jpeg")}
    image_id = client.post("/api/images", files=files).json()["id"]
    assert client.delete(f"/api/images/{image_id}").status_code == 204
    assert client.get(f"/api/images/{image_id}").status_code == 404
    assert client.get(f"/api/images/{image_id}/file").status_code == 404
    assert client.get("/api/search", params={"q": "elephant"}).json()["results"] == []
    assert client.delete(f"/api/images/{image_id}").status_code == 404


def test_delete_only_queues_the_removal_from_the_index(service, client) -> None:
    """DELETE answers without building the index (it may hold a long queue); the image leaves
    every answer at once all the same, and the index at the next build."""
    files = {"file": ("e.jpg", demo_image("elephant"), "image/jpeg")}
    image_id = client.post("/api/images", files=files).json()["id"]
    other = client.post(
        "/api/images", files={"file": ("p.jpg", demo_image("pizza"), "image/jpeg")}
    ).json()["id"]
    service.build_index()
    # "More like this" read (and kept) the lists and expanded vectors that hold it.
    before = client.get(f"/api/images/{other}/similar").json()["results"]
    assert image_id in [r["id"] for r in before]
    assert client.delete(f"/api/images/{image_id}").status_code == 204
    assert [(i.image_id, i.op) for i in service.parts.catalog.pending()] == [(image_id, "remove")]
    assert image_id in service.parts.index  # not built yet...
    results = client.get("/api/search", params={"q": "elephant"}).json()["results"]
    assert image_id not in [r["id"] for r in results]  # ...but gone from every answer
    similar = client.get(f"/api/images/{other}/similar").json()["results"]
    assert image_id not in [r["id"] for r in similar]
    assert client.get(f"/api/images/{image_id}/similar").status_code == 404  # its own, too
    browsed = client.get("/api/images").json()
    assert [r["id"] for r in browsed["results"]] == [other]
    # The totals count it out at once too, not at the next build.
    assert browsed["total"] == 1 and client.get("/api/health").json()["images"] == 1
    service.build_index()  # the next build: serve's background writer, the cloud's schedule
    assert image_id not in service.parts.index and not service.parts.catalog.pending()
    assert client.get("/api/health").json()["images"] == 1
    assert client.get("/api/images").json()["total"] == 1


def test_an_image_added_again_counts_at_once(client) -> None:
    """Its removal was queued, and read for the totals: adding the bytes again cancels it."""
    data = demo_image("sunflower")
    image_id = client.post("/api/images", files={"file": ("a.jpg", data)}).json()["id"]
    client.delete(f"/api/images/{image_id}")
    assert client.get("/api/images").json()["total"] == 0
    client.post("/api/images", files={"file": ("a.jpg", data)})
    assert client.get("/api/images").json()["total"] == 1


def test_a_local_api_key_is_made_once_and_kept(tmp_path) -> None:
    from imgsearch.config import Settings
    from imgsearch.service import ImageSearch

    service = ImageSearch(Settings(data_dir=tmp_path))
    key, created = service.api_key()
    again, created_again = service.api_key()
    assert created and not created_again and key == again and len(key) >= 32
    assert (tmp_path / "api-key").stat().st_mode & 0o077 == 0


@pytest.mark.model  # what the model sees
def test_classes_struck_from_the_interpretation_leave_the_results(demo_client) -> None:
    body = demo_client.get("/api/search", params={"q": "elephant", "limit": 10}).json()
    elephants = [c["id"] for c in body["interpretation"]["classes"][:3]]  # Asian, African, tusker
    assert _count_prefix(body["results"], "elephant/") == 10
    narrowed = demo_client.get(
        "/api/search", params={"q": "elephant", "limit": 10, "exclude": elephants}
    ).json()
    assert {c["id"] for c in narrowed["interpretation"]["classes"]} >= set(elephants)
    assert _count_prefix(narrowed["results"], "elephant/") < 10
    bad = demo_client.get("/api/search", params={"q": "elephant", "exclude": 1000})
    assert bad.status_code == 422


def _count_prefix(results: list[dict], prefix: str) -> int:
    return sum(r["key"].startswith(prefix) for r in results)


@pytest.mark.model  # what the model sees
def test_teaching_a_new_word_by_example(client) -> None:
    ids = {}
    for category in ("elephant", "pizza", "lotus"):
        for number in (1, 2):
            files = {"file": (f"{category}{number}.jpg", demo_image(category, number))}
            ids[category, number] = client.post("/api/images", files=files).json()["id"]
    photo = {"file": ("mine.jpg", demo_image("lotus", 3), "image/jpeg")}
    form = {"query": "Zqxwaterlilies", "session": "teacher"}
    found = client.post("/api/search/image", files=photo, data=form).json()
    assert found["query"] == "zqxwaterlilies"  # normalised as votes and search normalise it
    assert found["results"][0]["id"] in (ids["lotus", 1], ids["lotus", 2])
    assert found["results"][0]["reason"] == "similar"
    before = client.get("/api/search", params={"q": "zqxwaterlilies"}).json()
    assert (
        before["interpretation"]["level"] == "none" and before["interpretation"]["learned"] is None
    )
    for result in found["results"][:2]:
        vote = {"query": found["query"], "image_id": result["id"], "vote": 1, "session": "teacher"}
        assert client.post("/api/feedback", json=vote).status_code == 200
    after = client.get("/api/search", params={"q": "zqxwaterlilies", "session": "teacher"}).json()
    learned = after["interpretation"]["learned"]
    assert learned["votes"] == 2 and learned["sessions"] == 1
    assert after["interpretation"]["terms"][-1]["source"] == "learned"
    top = [r["id"] for r in after["results"][:2]]
    assert set(top) == {ids["lotus", 1], ids["lotus", 2]}
    assert all(r["learned"] for r in after["results"][:2])
    # One client alone teaches only its own session (tests/test_trust.py: several teach all).
    other = client.get("/api/search", params={"q": "zqxwaterlilies", "session": "someone"}).json()
    assert other["interpretation"]["learned"] is None


def test_pages_of_a_guessed_word_join_up_whatever_their_size(demo_client) -> None:
    """A word only guessed at gets a first page woven of guesses and a spread of the collection:
    four pages of five must be that page of twenty, with nothing shown twice."""

    def ids(limit: int, offset: int) -> list[str]:
        params = {"q": "forest", "limit": limit, "offset": offset}
        body = demo_client.get("/api/search", params=params).json()
        assert body["interpretation"]["level"] == "low"
        return [r["id"] for r in body["results"]]

    whole = ids(20, 0)
    assert len(whole) == 20
    assert [i for offset in (0, 5, 10, 15) for i in ids(5, offset)] == whole


def test_a_word_taught_by_votes_reads_as_learned_at_once(client) -> None:
    """Interpretations are remembered by their words, but what votes taught is read on every
    request: the query asked just before the vote reads as the taught word just after it."""
    ids = [
        client.post("/api/images", files={"file": (f"{c}.jpg", demo_image(c))}).json()["id"]
        for c in ("elephant", "pizza")
    ]
    query = {"q": "Zqxcachedword", "session": "teacher"}
    before = client.get("/api/search", params=query).json()["interpretation"]
    assert before["level"] == "none" and before["learned"] is None
    assert [t["source"] for t in before["terms"]] == ["unknown"]
    vote = {"query": "zqxcachedword", "image_id": ids[1], "vote": 1, "session": "teacher"}
    assert client.post("/api/feedback", json=vote).status_code == 200
    after = client.get("/api/search", params=query).json()
    assert [t["source"] for t in after["interpretation"]["terms"]] == ["unknown", "learned"]
    assert after["interpretation"]["learned"]["votes"] == 1
    assert after["results"][0]["id"] == ids[1] and after["results"][0]["reason"] == "voted"
