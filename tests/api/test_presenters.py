"""The engine's results as the API's response models."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter
from support.demo import demo_image

from imgsearch.api.presenters import interpretation
from imgsearch.api.schemas import (
    Duplicates,
    Explore,
    ImageSearchResponse,
    Page,
    Results,
    SearchResponse,
)
from imgsearch.vocabulary import Vocabulary


def test_an_interpretation_in_json(vocabulary: Vocabulary) -> None:
    understood = vocabulary.interpret("red cars and xqzvbl")
    out = interpretation(vocabulary.class_names, understood, None, top=5).model_dump()
    json.dumps(out)  # plain JSON types only
    assert out["query"] == "red car and xqzvbl"
    assert out["level"] in {"high", "low", "none"}
    assert isinstance(out["confidence"], float)
    assert [t["phrase"] for t in out["terms"]] == ["red", "car", "xqzvbl"]
    assert [t["source"] for t in out["terms"]][1:] == ["wordnet", "unknown"]
    for term in out["terms"]:
        assert set(term) == {"phrase", "source", "confidence", "note", "classes"}
        assert len(term["classes"]) <= 5 and term["note"]
    assert 1 <= len(out["classes"]) <= 5
    assert all(set(c) == {"id", "label", "weight", "photos"} for c in out["classes"])
    assert all(c["photos"] is None for c in out["classes"])  # no counts given
    assert all(c["label"] in vocabulary.class_names for c in out["classes"])
    weights = [c["weight"] for c in out["classes"]]
    assert weights == sorted(weights, reverse=True)
    assert out["learned"] is None


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("get", "/api/search?q=dog&limit=5", SearchResponse),
        ("get", "/api/search?q=zqxunknown", SearchResponse),
        ("get", "/api/images?limit=3", Page),
        ("get", "/api/images/{id}/similar?limit=4", Results),
        ("get", "/api/images/{id}/duplicates", Results),
        ("get", "/api/explore", Explore),
        ("get", "/api/duplicates?limit=2", Duplicates),
        ("post", "/api/search/image", ImageSearchResponse),
    ],
)
def test_answers_are_the_bytes_fastapi_makes_of_their_models(
    demo_client, method, path, model
) -> None:
    """Routes that serialise their own answers (presenters.results_json, results_body) send
    exactly what FastAPI would send for their `response_model`: its serialiser's bytes."""
    first = demo_client.get("/api/images", params={"limit": 1}).json()["results"][0]
    plain = {"Accept-Encoding": "identity"}  # the bytes themselves, not their gzip
    if method == "get":
        response = demo_client.get(path.format(id=first["id"]), headers=plain)
    else:
        photo = {"file": ("query.jpg", demo_image("laptop", 4), "image/jpeg")}
        response = demo_client.post(path, files=photo, data={"limit": 3}, headers=plain)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    fastapi_bytes = TypeAdapter(model).dump_json(
        model.model_validate_json(response.content), by_alias=True
    )
    assert response.content == fastapi_bytes
    body = response.json()
    assert body.get("results") or body.get("topics") or body.get("stacks")
