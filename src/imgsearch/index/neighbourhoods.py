"""Precomputed nearest neighbours of every image, kept right as images come and go.

"More like this" is answered from these stored lists in one read. When an image arrives it
gets its own list, and it is offered to the lists of the images near it (an image joins the
list of every image that now has it among its k nearest). When one leaves, every list that
held it is recomputed. Lists are checked against brute force in tests/index/test_index.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from imgsearch.catalog import Catalog
from imgsearch.index.base import SearchIndex
from imgsearch.storage import retry_on_conflict

Neighbours = list[tuple[str, float]]

REACH = 200  # how many of a new or removed image's nearest images may list it


class Neighbourhoods:
    def __init__(self, catalog: Catalog, index: SearchIndex, *, k: int = 50) -> None:
        self.catalog = catalog
        self.index = index
        self.k = k
        self.reach = max(REACH, k)

    def get(self, image_id: str) -> Neighbours:
        """The stored list, without images that left the index since it was written."""
        neighbours, _ = self.catalog.neighbours(image_id)
        present = self.index.present(i for i, _ in neighbours)
        return [(i, d) for i, d in neighbours if i in present]

    def compute(self, image_id: str) -> Neighbours:
        vector = self.index.vector(image_id)
        if vector is None:
            return []
        return self.index.nearest(vector, self.k, exclude={image_id})

    def update(self, added: Iterable[str], removed: Mapping[str, np.ndarray]) -> None:
        """Bring every list up to date after `added` joined and `removed` (id -> vector) left.

        Call it after the index has been refreshed to include the change. Idempotent: running
        it again for the same change leaves the lists as they are.
        """
        # Only those still in the index: one removed again meanwhile has no vector.
        vectors = {i: v for i in added if (v := self.index.vector(i)) is not None}
        added_set = set(vectors)
        offers: dict[str, Neighbours] = defaultdict(list)
        for image_id, vector in vectors.items():
            near = self.index.nearest(vector, self.reach, exclude={image_id})
            self._replace(image_id, near[: self.k])
            for other, distance in near:
                if other not in added_set:
                    offers[other].append((image_id, distance))

        stale: set[str] = set()
        for image_id, vector in removed.items():
            self.catalog.delete_neighbours(image_id)
            for other, _ in self.index.nearest(vector, self.reach):
                if other not in added_set:
                    stale.add(other)
        gone = set(removed)
        for other in stale:
            neighbours, _ = self.catalog.neighbours(other)
            if any(i in gone for i, _ in neighbours):
                self._replace(other, self.compute(other))
                offers.pop(other, None)

        for other, offered in offers.items():
            self._merge(other, offered)

    def _replace(self, image_id: str, neighbours: Neighbours) -> None:
        def step() -> None:
            _, version = self.catalog.neighbours(image_id)
            self.catalog.put_neighbours(image_id, neighbours, expected_version=version)

        retry_on_conflict(step, f"neighbours of {image_id}")

    def _merge(self, image_id: str, offered: Neighbours) -> None:
        """Insert offered neighbours that are nearer than the list's current k-th."""

        def step() -> None:
            current, version = self.catalog.neighbours(image_id)
            if not current and version == 0:
                return  # its own list is not computed yet; it will be computed whole
            merged = dict(current)
            for other, distance in offered:
                merged[other] = min(round(distance, 6), merged.get(other, np.inf))
            best = sorted(merged.items(), key=lambda pair: (pair[1], pair[0]))[: self.k]
            if best == current:
                return
            self.catalog.put_neighbours(image_id, best, expected_version=version)

        retry_on_conflict(step, f"neighbours of {image_id}")
