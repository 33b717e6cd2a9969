"""What the collection holds, for a start view: its most represented classes and the words
votes taught (each with a count and a cover photo, each a search), and its near-duplicates
(stacks of near-copies of one photo, from the stored neighbourhood lists).

Classes are read off the index's posting lists (counts kept per shard build), never by
visiting the images; taught words off the feedback table's list of voted terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from imgsearch.catalog import Catalog
from imgsearch.feedback import Feedback
from imgsearch.index.base import SearchIndex
from imgsearch.learning import trust

# An image "holds" a class when the model gives it at least this probability: a confident
# reading, not one of the many faint ones every photo has.
CLASS_PROBABILITY = 0.3


@dataclass(frozen=True)
class Topic:
    """One thing in the photos: a class or a taught word, how many photos show it, one of
    them, and the words that search for it."""

    kind: Literal["class", "word"]
    label: str
    query: str
    count: int
    cover: str  # an image id


def class_topics(index: SearchIndex, class_names: Sequence[str], limit: int) -> list[Topic]:
    """The classes most photos show with confidence, most photos first."""
    counted = sorted(index.class_counts(CLASS_PROBABILITY), key=lambda c: (-c[1], c[0]))
    return [
        Topic("class", class_names[class_id], class_names[class_id], count, cover)
        for class_id, count, cover in counted[:limit]
    ]


def word_topics(feedback: Feedback, index: SearchIndex) -> list[Topic]:
    """The words votes taught everyone, most photos first: count is how many photos enough
    independent clients call relevant to teach others (`learning.trust`, as a search by the
    word reads them), the cover the one most call relevant. One visitor's votes teach only
    their own session, so they never put a word on everyone's start page, and the words only
    they voted on are not even read (`Feedback.taught_terms`)."""
    topics = []
    for term in feedback.taught_terms():
        relevant = [
            a
            for a in feedback.summary(term, agreed_only=True).images
            if trust(a) > 0 and a.image_id in index
        ]
        if relevant:
            cover = max(relevant, key=lambda a: (a.up_clients, a.up)).image_id
            topics.append(Topic("word", term, term, len(relevant), cover))
    topics.sort(key=lambda t: (-t.count, t.label))
    return topics


@dataclass(frozen=True)
class Stack:
    """Near-copies of one photo: the newest first (the one a grid shows)."""

    image_ids: tuple[str, ...]


def near_copies(catalog: Catalog, index: SearchIndex, image_id: str, distance: float) -> list[str]:
    """The images whose stored distance to `image_id` is at most `distance`, nearest first."""
    neighbours, _ = catalog.neighbours(image_id)
    close = [i for i, d in neighbours if d <= distance]
    present = index.present(close)
    return [i for i in close if i in present]


def duplicate_stacks(catalog: Catalog, index: SearchIndex, distance: float) -> list[Stack]:
    """Every group of images linked by stored distances of at most `distance` (transitively),
    newest stack first; each in the index's newest-first order. From the catalog's near-copy
    lists (one partition, a few items: only images with a near-copy have one; a collection
    indexed before they were kept gets them from the index builder, once, never on this read
    path: index/builder.py)."""
    edges = [
        (image_id, other)
        for image_id, near in catalog.near_copy_lists().items()
        for other, d in near
        if d <= distance
    ]
    # Only the images the index serves, in its order (an engine over the network asks once).
    served = index.in_order({i for edge in edges for i in edge})
    order = {image_id: n for n, image_id in enumerate(served)}
    parent = {image_id: image_id for image_id in order}

    def root(image_id: str) -> str:
        while parent[image_id] != image_id:
            parent[image_id] = parent[parent[image_id]]
            image_id = parent[image_id]
        return image_id

    for image_id, other in edges:
        if image_id in parent and other in parent:
            a, b = root(image_id), root(other)
            if a != b:
                parent[max(a, b, key=order.__getitem__)] = min(a, b, key=order.__getitem__)
    groups: dict[str, list[str]] = {}
    for image_id in sorted(order, key=order.__getitem__):
        groups.setdefault(root(image_id), []).append(image_id)
    stacks = [Stack(tuple(members)) for members in groups.values() if len(members) > 1]
    stacks.sort(key=lambda s: order[s.image_ids[0]])
    return stacks
