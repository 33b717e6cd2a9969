"""What votes teach: a per-term model in feature space that re-ranks results for everyone.

Every vote is one session saying "this image is (not) what I meant by this term". A term's
model is learned from all sessions' votes, each session's influence bounded, plus the asking
session's own votes at full weight, so that a session's votes change its very next page.

Methods (chosen by `imgsearch eval`, see docs/evaluation.md):
    rocchio     rank by cosine to (relevant centroid - 0.5 x not-relevant centroid)
    knn         rank by mean cosine to the nearest relevant examples, minus the nearest
                not-relevant one: follows a term made of several kinds of pictures
    neighbours  the original system's: images in the stored 50-nearest lists of relevant
                examples, by how near and how often
Candidates always come from the index (a learned vector searched through Annoy, the stored
neighbourhoods, the keyword ranking), never from a scan of the collection.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from imgsearch.feedback import Feedback, Vote
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.index.reader import Index

Method = Literal["rocchio", "knn", "neighbours"]
METHODS: tuple[Method, ...] = ("rocchio", "knn", "neighbours")
NEGATIVE_WEIGHT = 0.5
SELF_WEIGHT = 3.0  # the asking session's votes, against at most 1.0 for any other session
KNN_EXAMPLES = 3
MAX_CACHED_TERMS = 1024  # beyond this many cached terms, expired ones are dropped


@dataclass(frozen=True)
class Examples:
    """Voted images of one term as weighted unit vectors: relevant and not relevant."""

    positive_ids: list[str]
    positive: np.ndarray  # [p, d]
    positive_weights: np.ndarray  # [p]
    negative_ids: list[str]
    negative: np.ndarray  # [q, d]
    negative_weights: np.ndarray  # [q]

    @property
    def evidence(self) -> float:
        """Effective number of relevant examples (spread over sessions by their weights)."""
        return float(self.positive_weights.sum())


@dataclass(frozen=True)
class Taught:
    """A term as users taught it, seen by one session."""

    term: str
    votes: int
    sessions: int
    examples: Examples
    mine: dict[str, int] = field(default_factory=dict)  # this session's votes

    @property
    def pinned(self) -> list[str]:
        return [image_id for image_id, value in self.mine.items() if value > 0]

    @property
    def hidden(self) -> set[str]:
        return {image_id for image_id, value in self.mine.items() if value < 0}

    def strength(self) -> float:
        """How far learned ranking outweighs the keyword ranking, 0..1: one coherent relevant
        example already counts for more than the guess."""
        evidence = self.examples.evidence
        return evidence / (evidence + 0.5)


def session_weights(votes: list[Vote], vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """A weight per session, at most 1: a session's relevant votes count by how coherent they
    are (the length of the mean of their unit vectors), so one session voting everything up
    (a spammer, or a mistake) carries little, and no session carries more than one vote's
    worth of direction however many votes it casts."""
    positives: dict[str, list[np.ndarray]] = defaultdict(list)
    for vote in votes:
        if vote.value > 0 and vote.image_id in vectors:
            positives[vote.session].append(vectors[vote.image_id])
    weights = {}
    for session, examples in positives.items():
        resultant = float(np.linalg.norm(np.mean(examples, axis=0)))
        weights[session] = resultant if len(examples) > 1 else 1.0
    return weights


class Learner:
    """Builds term models from votes (others' cached briefly) and ranks with them."""

    def __init__(
        self,
        feedback: Feedback,
        index: Index,
        neighbourhoods: Neighbourhoods,
        *,
        method: Method = "rocchio",
        cache_seconds: float = 5.0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown feedback method {method!r}; known: {', '.join(METHODS)}")
        self.feedback = feedback
        self.index = index
        self.neighbourhoods = neighbourhoods
        self.method = method
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, list[Vote]]] = {}
        self._lock = threading.Lock()

    def taught(self, term: str, session: str | None) -> Taught | None:
        """The term's model as `session` sees it, or None if nobody voted on it."""
        votes = [v for v in self._all_votes(term) if v.session != session]
        mine = self.feedback.session_votes(term, session) if session else {}
        votes += [Vote(session, image_id, value) for image_id, value in mine.items()]
        if not votes:
            return None
        examples = self._examples(votes, session)
        return Taught(
            term=term,
            votes=len(votes),
            sessions=len({v.session for v in votes}),
            examples=examples,
            mine=mine,
        )

    def forget(self, term: str) -> None:
        """Drop the cached votes of a term (after a vote in this process)."""
        with self._lock:
            self._cache.pop(term, None)

    def _all_votes(self, term: str) -> list[Vote]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(term)
            if cached and cached[0] > now:
                return cached[1]
        votes = self.feedback.term_votes(term).votes
        with self._lock:
            if len(self._cache) >= MAX_CACHED_TERMS:  # many distinct queries: drop the stale
                self._cache = {t: entry for t, entry in self._cache.items() if entry[0] > now}
            self._cache[term] = (now + self.cache_seconds, votes)
        return votes

    def _examples(self, votes: list[Vote], session: str | None) -> Examples:
        vectors = {}
        for vote in votes:
            if vote.image_id not in vectors:
                vector = self.index.vector(vote.image_id)
                if vector is not None:
                    vectors[vote.image_id] = vector
        weights = session_weights([v for v in votes if v.session != session], vectors)
        usable = [v for v in votes if v.image_id in vectors]
        # Spread a session's weight over its votes, so that many votes are not many voices.
        counts = Counter((v.session, v.value) for v in usable)
        positive: dict[str, float] = defaultdict(float)
        negative: dict[str, float] = defaultdict(float)
        for vote in usable:
            if vote.session == session:
                weight = SELF_WEIGHT
            else:
                weight = weights.get(vote.session, 1.0) / counts[vote.session, vote.value]
            (positive if vote.value > 0 else negative)[vote.image_id] += weight

        def stack(weighted: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
            ids = [i for i, w in weighted.items() if w > 0]
            dim = self.index.manifest.dim or 1
            matrix = np.stack([vectors[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)
            return ids, matrix, np.array([weighted[i] for i in ids], dtype=np.float32)

        return Examples(*stack(positive), *stack(negative))

    # Ranking ---------------------------------------------------------------------------

    def scores(self, taught: Taught, candidates: list[str]) -> np.ndarray:
        """How well each candidate fits what was taught (higher is better), by the method."""
        examples = taught.examples
        if self.method == "neighbours":
            return self._neighbour_scores(examples, candidates)
        vectors = np.stack([self._vector_or_zeros(i) for i in candidates])
        if self.method == "knn":
            return _knn_scores(examples, vectors)
        return vectors @ _rocchio_vector(examples)

    def _vector_or_zeros(self, image_id: str) -> np.ndarray:
        # An image removed since the candidates were found fits nothing.
        vector = self.index.vector(image_id)
        return vector if vector is not None else np.zeros(self.index.manifest.dim, np.float32)

    def candidates(self, taught: Taught, k: int) -> list[str]:
        """Images the learned model could rank first, found through the index."""
        examples = taught.examples
        found: dict[str, None] = dict.fromkeys(examples.positive_ids)
        if self.method == "neighbours":
            for image_id in examples.positive_ids:
                found.update(dict.fromkeys(i for i, _ in self.neighbourhoods.get(image_id)))
        elif self.method == "knn":
            for vector in examples.positive[np.argsort(-examples.positive_weights)[:8]]:
                found.update(dict.fromkeys(i for i, _ in self.index.nearest(vector, k)))
        else:
            vector = _rocchio_vector(examples)
            found.update(dict.fromkeys(i for i, _ in self.index.nearest(vector, 2 * k)))
        return [i for i in found if i in self.index]

    def _neighbour_scores(self, examples: Examples, candidates: list[str]) -> np.ndarray:
        score = dict.fromkeys(candidates, 0.0)
        for sign, ids, weights in (
            (1.0, examples.positive_ids, examples.positive_weights),
            (-NEGATIVE_WEIGHT, examples.negative_ids, examples.negative_weights),
        ):
            for image_id, weight in zip(ids, weights, strict=True):
                score[image_id] = score.get(image_id, 0.0) + sign * weight
                for other, distance in self.neighbourhoods.get(image_id):
                    if other in score:
                        score[other] += sign * weight * (1.0 - distance)
        return np.array([score[i] for i in candidates], dtype=np.float32)


def _rocchio_vector(examples: Examples) -> np.ndarray:
    vector = _weighted_mean(examples.positive, examples.positive_weights)
    if len(examples.negative):
        vector = vector - NEGATIVE_WEIGHT * _weighted_mean(
            examples.negative, examples.negative_weights
        )
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _knn_scores(examples: Examples, vectors: np.ndarray) -> np.ndarray:
    similarity = (
        vectors
        @ examples.positive.T
        * examples.positive_weights
        / (examples.positive_weights.max())
    )
    nearest = min(KNN_EXAMPLES, similarity.shape[1])
    score = np.sort(similarity, axis=1)[:, -nearest:].mean(axis=1)
    if len(examples.negative):
        score -= NEGATIVE_WEIGHT * (vectors @ examples.negative.T).max(axis=1)
    return score


def _weighted_mean(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (vectors * weights[:, None]).sum(axis=0) / max(float(weights.sum()), 1e-12)
