"""Measurements 1 and 2: similar images ("more like this").

1. Which layer and distance: brute force in numpy over the embeddings the system stored at
   ingest (raw features and class probabilities x Manhattan, Euclidean, cosine).
2. What production serves against exact search, through the service: the stored
   neighbourhoods (`ImageSearch.similar`), the Annoy index with exact re-ranking
   (`Index.nearest`) and exact search over every stored vector (`Index.nearest(exact=True)`),
   with their query times.
Relevant = same label; the query image itself is never among its results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from imgsearch.evaluation import DEPTH, PAGE
from imgsearch.evaluation.collection import LabelledCollection
from imgsearch.evaluation.metrics import (
    mean_curve,
    milliseconds,
    precision_at_k,
    precision_curve,
    recall_at_k,
)
from imgsearch.evaluation.progress import Track, untracked
from imgsearch.results import IndexInfo
from imgsearch.service import ImageSearch
from imgsearch.vectors import unit_rows

KS = (5, 10, 20)
WARM_UP_QUERIES = 5  # untimed, so that loading files is not counted as query time
QUERY_CHUNK = 256  # queries whose distances to every image are held at once
# Elements of the (queries x images x dimensions) block Manhattan distances take at once.
MANHATTAN_BLOCK = 1 << 24

Rankings = dict[str, list[str]]  # query image id -> result ids, best first
Search = Callable[[str, int], list[str]]  # (query image id, how many) -> result ids


@dataclass
class RankingResult:
    """How well one way of finding similar images did, averaged over every query image."""

    name: str
    precision: dict[int, float]  # k -> mean p@k
    per_label: dict[str, float]  # label -> mean p@20 of its images
    curve: list[float] = field(default_factory=list)  # mean p@k for k = 1..DEPTH
    recall: float | None = None  # mean recall@20 against exact search
    median_ms: float | None = None
    p95_ms: float | None = None


def query_images(collection: LabelledCollection) -> list[str]:
    """Labelled images with at least one other image of their label, i.e. something to find."""
    return [
        image_id
        for images in collection.by_label.values()
        if len(images) > 1
        for image_id in images
    ]


def score(
    name: str,
    rankings: Rankings,
    collection: LabelledCollection,
    deep_rankings: Rankings | None = None,
) -> RankingResult:
    """Mean p@k over the queries, and per label, out of what each label could hold; the
    curve comes from `deep_rankings` (DEPTH results per query) when the pages are shorter."""
    sizes = collection.sizes

    def judged(query: str, results: list[str]) -> tuple[list[bool], int]:
        """Each result's relevance, and how many relevant images exist besides the query."""
        label = collection.labels[query]
        return [collection.labels.get(i) == label for i in results], sizes[label] - 1

    precision: dict[int, list[float]] = {k: [] for k in KS}
    by_label: dict[str, list[float]] = {}
    for query, results in rankings.items():
        relevant, available = judged(query, results)
        for k in KS:
            precision[k].append(precision_at_k(relevant, k, available))
        label = collection.labels[query]
        by_label.setdefault(label, []).append(precision_at_k(relevant, PAGE, available))
    curves = []
    for query, results in (deep_rankings or rankings).items():
        relevant, available = judged(query, results)
        curves.append(precision_curve(relevant, DEPTH, available))
    return RankingResult(
        name=name,
        precision={k: float(np.mean(v)) for k, v in precision.items()},
        per_label={label: float(np.mean(v)) for label, v in sorted(by_label.items())},
        curve=mean_curve(curves),
    )


# 1. Layer x distance, exact ---------------------------------------------------------------

LAYERS = ("features", "probabilities")
DISTANCES = ("manhattan", "euclidean", "cosine")


def manhattan(queries: np.ndarray, images: np.ndarray) -> np.ndarray:
    block = max(1, MANHATTAN_BLOCK // max(1, images.size))
    out = np.empty((len(queries), len(images)), dtype=np.float32)
    for start in range(0, len(queries), block):
        chunk = queries[start : start + block, None, :]
        out[start : start + block] = np.abs(chunk - images[None]).sum(axis=-1)
    return out


def euclidean(queries: np.ndarray, images: np.ndarray) -> np.ndarray:
    q, x = queries.astype(np.float64), images.astype(np.float64)
    squared = (q * q).sum(1)[:, None] + (x * x).sum(1)[None] - 2.0 * q @ x.T
    distances: np.ndarray = np.sqrt(np.maximum(squared, 0.0))
    return distances


def cosine(queries: np.ndarray, images: np.ndarray) -> np.ndarray:
    distances: np.ndarray = 1.0 - unit_rows(queries, np.float64) @ unit_rows(images, np.float64).T
    return distances


DISTANCE_FUNCTIONS = {"manhattan": manhattan, "euclidean": euclidean, "cosine": cosine}


def stored_embeddings(
    service: ImageSearch, image_ids: list[str], track: Track = untracked
) -> dict[str, np.ndarray]:
    """Layer -> [images, dims]: what ingest stored for each image, before any normalisation."""
    features, probabilities = [], []
    for image_id in track(image_ids, "reading embeddings"):
        f, p = service.embedding(image_id)
        features.append(f)
        probabilities.append(p)
    return {
        "features": np.asarray(features, np.float32),
        "probabilities": np.asarray(probabilities, np.float32),
    }


def brute_force(
    matrix: np.ndarray, image_ids: list[str], queries: list[str], distance: str
) -> Rankings:
    """The DEPTH nearest other images of each query, by exact distance on `matrix` rows."""
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    measure = DISTANCE_FUNCTIONS[distance]
    depth = min(DEPTH, len(image_ids) - 1)
    rankings: Rankings = {}
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[start : start + QUERY_CHUNK]
        rows = np.array([row_of[q] for q in chunk])
        distances = measure(matrix[rows], matrix).astype(np.float64)
        distances[np.arange(len(rows)), rows] = np.inf  # never the query itself
        nearest = np.argpartition(distances, depth - 1, axis=1)[:, :depth]
        for query, candidates, row in zip(chunk, nearest, distances, strict=True):
            ordered = candidates[np.argsort(row[candidates], kind="stable")]
            rankings[query] = [image_ids[i] for i in ordered]
    return rankings


def layer_distance_table(
    service: ImageSearch, collection: LabelledCollection, track: Track = untracked
) -> list[RankingResult]:
    """Every layer x distance, exact, over every image the index serves."""
    image_ids = sorted(service.indexed_ids())
    embeddings = stored_embeddings(service, image_ids, track)
    queries = query_images(collection)
    combinations = [(layer, distance) for layer in LAYERS for distance in DISTANCES]
    results = []
    for layer, distance in track(combinations, "layer x distance"):
        rankings = brute_force(embeddings[layer], image_ids, queries, distance)
        results.append(score(f"{layer}, {distance}", rankings, collection))
    return results


# 2. Production against exact -----------------------------------------------------------------


def ann_settings(
    index: IndexInfo, candidates: Sequence[int] = (), search_ks: Sequence[int] = ()
) -> list[tuple[int, int]]:
    """Extra (candidates, search_k) pairs to measure: every combination of those given, the
    production value standing in for an option not given."""
    if not candidates and not search_ks:
        return []
    return [(c, s) for c in candidates or [index.candidates] for s in search_ks or [index.search_k]]


def production_searches(
    service: ImageSearch, extra_settings: Iterable[tuple[int, int]] = ()
) -> dict[str, Search]:
    """Name -> search, the reference (exact) first; `extra_settings`: more (candidates,
    search_k) pairs to query the same index files with."""

    def nearest(reader: ImageSearch, *, exact: bool = False) -> Search:
        def search(image_id: str, k: int) -> list[str]:
            return reader.nearest_to(image_id, k, exact=exact)

        return search

    def neighbourhood(image_id: str, k: int) -> list[str]:
        return [hit.image_id for hit in service.similar(image_id, limit=k)]

    searches = {"exact": nearest(service, exact=True), "index": nearest(service)}
    for candidates, search_k in extra_settings:
        reader = service.variant(ann=(candidates, search_k))
        searches[f"index, candidates={candidates}, search_k={search_k}"] = nearest(reader)
    raw = service.variant(expansion=False)

    def raw_neighbourhood(image_id: str, k: int) -> list[str]:
        return [hit.image_id for hit in raw.similar(image_id, limit=k)]

    def reverse(image_id: str, k: int) -> list[str]:
        """Reverse search with the image's own stored features, the image itself left out."""
        features, _ = service.embedding(image_id)
        hits = service.similar_to_features(features, limit=k + 1)
        return [hit.image_id for hit in hits if hit.image_id != image_id][:k]

    # Raw and expanded side by side (issue 19); the last row is what `similar` serves.
    searches["neighbourhoods, raw"] = raw_neighbourhood
    searches["reverse search"] = reverse
    searches["neighbourhoods"] = neighbourhood
    return searches


def timed(search: Search, queries: list[str], k: int) -> tuple[Rankings, list[float]]:
    for query in queries[:WARM_UP_QUERIES]:
        search(query, k)
    rankings, seconds = {}, []
    for query in queries:
        started = time.perf_counter()
        rankings[query] = search(query, k)
        seconds.append(time.perf_counter() - started)
    return rankings, seconds


def production_table(
    service: ImageSearch,
    collection: LabelledCollection,
    extra_settings: Iterable[tuple[int, int]] = (),
    track: Track = untracked,
) -> list[RankingResult]:
    """Each production search against exact search: recall@20, p@k, query time per PAGE."""
    queries = query_images(collection)
    searches = production_searches(service, extra_settings)
    reference: Rankings = {}
    results = []
    for name, search in track(list(searches.items()), "exact vs index"):
        pages, seconds = timed(search, queries, PAGE)
        reference = reference or pages  # the first search is exact
        deep = {query: search(query, DEPTH) for query in queries}
        result = score(name, pages, collection, deep)
        result.recall = float(np.mean([recall_at_k(pages[q], reference[q], PAGE) for q in queries]))
        result.median_ms, result.p95_ms = milliseconds(seconds)
        results.append(result)
    return results
