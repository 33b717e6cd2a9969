"""Expanded vectors: each image's vector averaged with those of its nearest stored neighbours.

An image's expanded vector is its unit feature vector plus those of the first `neighbours`
images of its stored neighbour list, each weighted by its cosine similarity to the power
`power`, made unit again (average query expansion and database-side augmentation: Chum et al.
2007, Arandjelovic and Zisserman 2012; alpha-weighted as Radenovic et al. 2018). Ranking the
stored neighbourhood by the cosine of expanded vectors on both sides lifts p@20 on every set
measured; the query side alone gains less (docs/evaluation.md, "Expansion", from
bench/expansion_sweep.py, which chose `neighbours` and `power`).

An expanded vector depends only on its image's list, so it is stored with the list and
rewritten exactly when the list is (index/neighbourhoods.py): no other image is touched.
"More like this" reads the image's list and its neighbours' expanded vectors and re-ranks
them; a photo's vector is expanded by its nearest images the same way (`Expansion.of`).
Then the query is expanded once more, by the expanded vectors of the first
`query_neighbours` of that ranking (average query expansion on top of database-side
augmentation), and the same candidates ranked again (`Expansion.rank`): it reads nothing
more, and it gains on every set measured; the other uses of the graph measured (higher
powers, reciprocal neighbours, diffusion) gain less (docs/evaluation.md, "Expansion").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imgsearch.vectors import unit_rows

# A photo at most this cosine distance from an indexed image is taken for a copy of it: its
# page is the copy's own (the copy first), as its stored features would give. The service
# widens it to the near-copy distance (settings.duplicate_distance).
COPY_DISTANCE = 1e-4

Ranked = list[tuple[str, float]]  # (image id, cosine similarity of expanded vectors), best first


@dataclass(frozen=True)
class Expansion:
    neighbours: int  # stored neighbours averaged in (k)
    power: float  # their weight: cosine similarity to this power
    query_neighbours: int  # the first ranked results averaged into the query again

    def of(
        self,
        vector: np.ndarray,
        near: Sequence[tuple[str, float]],
        vectors: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """The expanded unit vector of a unit `vector` whose nearest images are `near` (id,
        cosine distance, nearest first; only the first `neighbours` count) with `vectors`."""
        return self._averaged(vector, near[: self.neighbours], vectors)

    def rank(
        self, query: np.ndarray, candidates: Sequence[str], expanded: Mapping[str, np.ndarray]
    ) -> Ranked:
        """`candidates` ranked by the cosine of expanded vectors with the expanded `query`,
        then again with the query averaged with the expanded vectors of the first
        `query_neighbours` of that ranking (weighted by their cosine**`power`)."""
        ids, matrix = _stacked(candidates, expanded)  # once for both rankings
        first = _ranked(query, ids, matrix, candidates, expanded)
        best = [(i, 1.0 - score) for i, score in first[: self.query_neighbours] if i in expanded]
        if not best:
            return first
        return _ranked(self._averaged(query, best, expanded), ids, matrix, candidates, expanded)

    def _averaged(
        self,
        vector: np.ndarray,
        near: Sequence[tuple[str, float]],
        vectors: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        summed = np.asarray(vector, np.float64).copy()
        for image_id, distance in near:
            if image_id in vectors:
                summed += max(1.0 - distance, 0.0) ** self.power * vectors[image_id]
        return unit_rows(summed, np.float64).astype(np.float32)


def expand_rows(
    vectors: np.ndarray,
    neighbours: np.ndarray,
    similarities: np.ndarray,
    power: float,
    *,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """`Expansion.of` for every row at once (bench/expansion_sweep.py): each unit row of
    `vectors` plus its `neighbours` (row indices into `base`, default `vectors`) weighted by
    `similarities`**`power`."""
    weights = np.maximum(similarities, 0.0) ** power
    rows_of = vectors if base is None else base
    summed = vectors + np.einsum("nk,nkd->nd", weights, rows_of[neighbours])
    return unit_rows(summed, None)


def ranked(
    query: np.ndarray, candidates: Sequence[str], expanded: Mapping[str, np.ndarray]
) -> Ranked:
    """`candidates` by the cosine of their expanded vectors with the expanded `query`, best
    first (ties by id). Those without one (a list written before expansion existed) follow
    in their given order, at the last score: never lost, never above a measured match."""
    return _ranked(query, *_stacked(candidates, expanded), candidates, expanded)


def _stacked(
    candidates: Sequence[str], expanded: Mapping[str, np.ndarray]
) -> tuple[list[str], np.ndarray | None]:
    """The candidates that have an expanded vector, and those vectors as the rows of one
    float32 matrix (None if none has one)."""
    ids = [i for i in candidates if i in expanded]
    if not ids:
        return ids, None
    # (np.array copies them in one C loop; np.stack makes a view of each first)
    return ids, np.array([expanded[i] for i in ids], np.float32)


def _ranked(
    query: np.ndarray,
    ids: list[str],
    matrix: np.ndarray | None,
    candidates: Sequence[str],
    expanded: Mapping[str, np.ndarray],
) -> Ranked:
    """`ranked`, the candidates' expanded vectors stacked already (`_stacked`)."""
    order: Ranked = []
    if matrix is not None:
        scores = matrix @ query
        # Best first, ties by id: a stable sort of the negated scores keeps the given order
        # among equals, which is put right below in the rare case there are any.
        by_score = np.argsort(-scores, kind="stable")
        sorted_scores = scores[by_score]
        order = list(zip([ids[j] for j in by_score.tolist()], sorted_scores.tolist(), strict=True))
        if np.any(sorted_scores[1:] == sorted_scores[:-1]):
            order.sort(key=lambda pair: (-pair[1], pair[0]))
    last = order[-1][1] if order else 0.0
    return order + [(i, last) for i in candidates if i not in expanded]
