"""Retrieval metrics on judged rankings: precision@k, recall against a reference, rounds.

Precision is out of what a page could hold: with `available` relevant images in the
collection, p@k = relevant among the first k / min(k, available). When every label has at least
k images (Corel-1k, and the study) this is the usual p@k; on a set with 12 images per label
(the demo) it still reaches 100% for a perfect ranking, where plain p@20 would stop at 60%.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def precision_at_k(relevant: Sequence[bool], k: int, available: int | None = None) -> float:
    """Share of the first `k` results that are relevant, out of min(k, `available`).

    A ranking shorter than `k` counts its missing places as not relevant.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    places = k if available is None else min(k, available)
    if places <= 0:
        return 0.0
    return sum(bool(r) for r in relevant[:k]) / places


def precision_curve(
    relevant: Sequence[bool], depth: int, available: int | None = None
) -> list[float]:
    """precision_at_k for k = 1..depth."""
    return [precision_at_k(relevant, k, available) for k in range(1, depth + 1)]


def recall_at_k(found: Sequence[str], reference: Sequence[str], k: int) -> float:
    """Share of the reference's first `k` results that `found`'s first `k` also hold."""
    expected = set(reference[:k])
    if not expected:
        return 1.0
    return len(expected & set(found[:k])) / len(expected)


def mean_curve(curves: Iterable[Sequence[float]]) -> list[float]:
    stacked = np.array(list(curves), dtype=float)
    return stacked.mean(axis=0).tolist() if len(stacked) else []


def milliseconds(seconds: Sequence[float]) -> tuple[float, float]:
    """Median and 95th percentile of query times, in milliseconds."""
    if not seconds:
        return 0.0, 0.0
    in_ms = np.asarray(seconds) * 1000.0
    return float(np.median(in_ms)), float(np.percentile(in_ms, 95))


@dataclass(frozen=True)
class RoundsToTarget:
    """When a simulated user's pages reached the target precision.

    Page 0 is the first query; page i is shown after i rounds of votes.
    """

    reached: int | None  # the first page at or above the target; None: never (within the cap)
    first_relevant: int | None  # the first page that showed a relevant image

    @property
    def from_first_query(self) -> int | None:
        """Feedback rounds needed from the first query (0: the first page was good enough)."""
        return self.reached

    @property
    def from_first_relevant(self) -> int | None:
        """Feedback rounds needed after the first page showing a relevant image (the study's
        count: voting cannot start before a relevant image is seen)."""
        if self.reached is None or self.first_relevant is None:
            return None
        return self.reached - self.first_relevant


def rounds_to_target(
    precisions: Sequence[float], relevant_shown: Sequence[int], target: float
) -> RoundsToTarget:
    """Per page, its precision and how many relevant images it showed."""
    reached = next((i for i, p in enumerate(precisions) if p >= target), None)
    first_relevant = next((i for i, n in enumerate(relevant_shown) if n > 0), None)
    return RoundsToTarget(reached, first_relevant)


def mean_first_relevant_page(rounds: Sequence[RoundsToTarget]) -> float | None:
    """The mean page (1: the first query's) on which a relevant image first appeared, over the
    runs that showed one; None if none did."""
    pages = [r.first_relevant + 1 for r in rounds if r.first_relevant is not None]
    return statistics.fmean(pages) if pages else None


def share_none_first(rounds: Sequence[RoundsToTarget]) -> float:
    """The share of runs whose first page showed no relevant image."""
    return sum(r.first_relevant != 0 for r in rounds) / len(rounds) if rounds else 0.0


def mean_reached(rounds: Iterable[int | None]) -> float | None:
    """Mean over the runs that reached the target; None if none did."""
    reached = [r for r in rounds if r is not None]
    return statistics.fmean(reached) if reached else None


def share_never(rounds: Sequence[int | None]) -> float:
    return sum(r is None for r in rounds) / len(rounds) if rounds else 0.0
