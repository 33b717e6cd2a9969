"""The engine's results as the API's response models."""

from __future__ import annotations

import json

from imgsearch.api.presenters import interpretation
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
