"""Words whose ImageNet class sits in a later noun sense ("notebook": a book of blank pages,
then the notebook computer) read as that class when the collection holds it: a full first page
of it, never a spread of the collection, at least as good as a plain reading that takes every
noun sense reaching a class. Every such word of the vocabulary whose classes the test's
collection holds is checked, not a chosen few."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support.services import make_service

from imgsearch.index.base import MATCH_PROBABILITY

GROUPS = 16  # kinds of photo (colours), each a class or a few the stand-in classifier sees
PER_GROUP = 24  # more than a page of each
PAGE = 20
PLAIN_CLASSES = 10  # a later sense picturing more classes than this is no plain object word


def _photo(colour: np.ndarray, rng: np.random.Generator) -> bytes:
    pixels = np.clip(colour + rng.normal(0, 6, (64, 64, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def collection(tmp_path_factory, colour_embedder, vocabulary):
    service = make_service(tmp_path_factory.mktemp("senses") / "data", colour_embedder, vocabulary)
    rng = np.random.default_rng(17)
    for group in range(GROUPS):
        # From a colour towards another: the classes of the first fade along the group, so
        # some of its photos are clear matches and the rest must fill the page.
        colour, towards = rng.uniform(0, 255, (2, 3))
        for n in range(PER_GROUP):
            mix = 0.8 * n / PER_GROUP
            service.parts.ingestor.add(
                f"g{group}/{n}.png", _photo((1 - mix) * colour + mix * towards, rng)
            )
    service.build_index()
    ids = list(service.indexed_ids())
    probabilities = np.stack([service.embedding(i)[1] for i in ids])
    return service, ids, probabilities


def _held_later_sense_words(service, probabilities) -> dict[str, tuple[int, ...]]:
    held = np.flatnonzero(probabilities.max(axis=0) >= 0.3)
    return {
        word: classes
        for word, classes in service.parts.vocabulary.later_sense_words().items()
        if len(classes) <= PLAIN_CLASSES and set(classes) & set(held.tolist())
    }


def test_the_vocabulary_lists_words_with_a_class_in_a_later_sense(vocabulary) -> None:
    words = vocabulary.later_sense_words()
    names = vocabulary.class_names
    assert len(words) > 300
    assert [names[c] for c in words["notebook"]] == ["notebook computer"]
    assert "dog" not in words  # its first sense is the dog
    assert all(classes for classes in words.values())


def test_a_class_in_a_later_sense_fills_the_page_when_the_collection_holds_it(
    collection,
) -> None:
    service, ids, probabilities = collection
    words = _held_later_sense_words(service, probabilities)
    assert len(words) >= 5, words  # the test checks many words, whatever the stand-in sees
    checked_fill = 0
    for word, classes in words.items():
        # What the classifier clearly assigns to the later sense: the photos to find.
        wanted_scores = probabilities[:, list(classes)].sum(axis=1)
        wanted = {i for i, s in zip(ids, wanted_scores, strict=True) if s >= MATCH_PROBABILITY}
        found = service.search_text(word, limit=PAGE)
        page = [hit.image_id for hit in found.hits]
        assert len(page) == PAGE and "explore" not in {hit.tier for hit in found.hits}, word
        assert found.matches >= 1, word
        assert sum(i in wanted for i in page) == min(PAGE, len(wanted)), word
        # As many of them as a plain reading's page, which takes every noun sense that
        # reaches classes, each fully.
        senses = found.interpretation.senses
        plain = {c: 1.0 for sense in senses for c in sense.classes}
        baseline = [i for i, _ in service.parts.index.ranked_by_classes(plain, PAGE)]
        assert sum(i in wanted for i in page) >= sum(i in wanted for i in baseline), word
        checked_fill += len(wanted) < PAGE
    assert checked_fill >= 1  # some word's page is filled beyond its matches
