"""Exact k-nearest neighbours by brute force, for batch work and as the yardstick of the index.

Distances: "cosine" (1 - cosine similarity), "euclidean" and "manhattan" (L1). Work is split
into row blocks run in threads: numpy releases the GIL in its kernels, so `jobs` threads use
`jobs` cores without copying the matrix into each.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from imgsearch.vectors import unit_rows

Metric = Literal["cosine", "euclidean", "manhattan"]
METRICS: tuple[Metric, ...] = ("cosine", "euclidean", "manhattan")
_BLOCK = 256  # query rows per task
_L1_CHUNK = 8  # query rows per L1 broadcast, so its temporary stays small


def pairwise_distances(queries: np.ndarray, data: np.ndarray, metric: Metric) -> np.ndarray:
    """Distances [len(queries), len(data)] under `metric`."""
    queries = np.asarray(queries, dtype=np.float32)
    data = np.asarray(data, dtype=np.float32)
    if metric == "cosine":
        cosine: np.ndarray = 1.0 - unit_rows(queries) @ unit_rows(data).T
        return cosine
    if metric == "euclidean":
        squared = (queries**2).sum(1)[:, None] + (data**2).sum(1)[None, :] - 2.0 * queries @ data.T
        euclidean: np.ndarray = np.sqrt(np.maximum(squared, 0.0))
        return euclidean
    if metric == "manhattan":
        out = np.empty((len(queries), len(data)), dtype=np.float32)
        for start in range(0, len(queries), _L1_CHUNK):
            block = queries[start : start + _L1_CHUNK]
            out[start : start + len(block)] = np.abs(block[:, None, :] - data[None, :, :]).sum(-1)
        return out
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def exact_neighbours(
    features: np.ndarray, k: int, *, metric: Metric = "cosine", jobs: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """For every row, the `k` nearest other rows: (indices [n, k], distances [n, k])."""
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    k = max(0, min(k, n - 1))  # none for a single row, or none at all
    indices = np.empty((n, k), dtype=np.int32)
    distances = np.empty((n, k), dtype=np.float32)

    def block(start: int) -> None:
        rows = np.arange(start, min(n, start + _BLOCK))
        d = pairwise_distances(features[rows], features, metric)
        d[np.arange(len(rows)), rows] = np.inf  # a row is not its own neighbour
        best = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(d, 1)[:, :k]
        order = np.take_along_axis(d, best, 1).argsort(axis=1, kind="stable")
        indices[rows] = np.take_along_axis(best, order, 1)
        distances[rows] = np.take_along_axis(d, indices[rows], 1)

    if k > 0:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(block, range(0, n, _BLOCK)))
    return indices, distances
