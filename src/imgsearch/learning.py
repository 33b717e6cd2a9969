"""What votes teach: a per-term model in feature space that re-ranks results.

Every vote is one session saying "this image is (not) what I meant by this term". Two things
are learned from votes, with different trust:
- The asking session's own votes count at once and in full (SELF_WEIGHT), so that a session's
  votes change its very next page: the learning speed of one user.
- What teaches everyone else is the agreement of independent clients (source addresses, see
  clients.py), read from the term's summary (feedback.py): per image, the decayed number of
  distinct clients whose voice says "relevant" minus those saying "not relevant". An image
  teaches others only from QUORUM agreeing clients on (`trust`), each further one adding one.
  A client, however many sessions it invents, moves an image's net agreement by at most one
  voice: alone it changes nobody else's page, and beside others it shifts each image by at
  most one voice's weight. Influence grows with independent agreement, never with votes or
  sessions. Why not weigh sessions? Sessions are free to invent; addresses are
  not. Why a quorum of three, not two? Many people hold two addresses (home and phone).
Reading a term costs one summary row per image that a quorum of clients agree on, whatever
the number of votes, sessions or clients that agree with nobody.

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

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from imgsearch.config import FeedbackMethod
from imgsearch.feedback import QUORUM, Agreement, Feedback, TermSummary
from imgsearch.index.base import SearchIndex
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.remembered import Expiring

NEGATIVE_WEIGHT = 0.5
SELF_WEIGHT = 3.0  # the asking session's votes, against one per agreeing client beyond quorum
KNN_EXAMPLES = 3
MAX_CACHED_TERMS = 1024  # term summaries kept at most (the least recently used leave first)


def trust(agreement: Agreement) -> float:
    """An image's weight as an example for others: positive "relevant", negative "not".

    The net decayed agreement of distinct clients beyond the quorum's first voices: 1 or 2
    clients -> 0, 3 agreeing -> 1, 4 -> 2; a client disagreeing takes one back. Voices decay,
    so an agreement fades unless new clients renew it."""
    net = agreement.up - agreement.down
    return float(np.sign(net)) * max(0.0, abs(net) - (QUORUM - 1))


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
        """Effective number of relevant examples (clients' agreement and own votes)."""
        return float(self.positive_weights.sum())


@dataclass(frozen=True)
class Taught:
    """A term as users taught it, seen by one session."""

    term: str
    votes: int
    sessions: int
    examples: Examples
    mine: dict[str, int] = field(default_factory=dict)  # this session's votes
    clients: int = 0

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


class Learner:
    """Builds term models from votes (term summaries cached briefly) and ranks with them."""

    def __init__(
        self,
        feedback: Feedback,
        index: SearchIndex,
        neighbourhoods: Neighbourhoods,
        *,
        method: FeedbackMethod = "rocchio",
        cache_seconds: float = 5.0,
        expanded: bool = False,
    ) -> None:
        self.feedback = feedback
        self.index = index
        self.neighbourhoods = neighbourhoods
        self.method = method
        self.expanded = expanded
        self._summaries: Expiring[str, TermSummary] = Expiring(MAX_CACHED_TERMS, cache_seconds)

    @property
    def cache_seconds(self) -> float:
        """How long a term's summary is kept (votes of other processes take this to count)."""
        return self._summaries.seconds

    @cache_seconds.setter
    def cache_seconds(self, seconds: float) -> None:
        self._summaries.seconds = seconds

    def taught(self, term: str, session: str | None) -> Taught | None:
        """The term's model as `session` sees it, or None if nothing teaches it (no trusted
        agreement, no votes of this session)."""
        summary = self._summary(term)
        mine = self.feedback.session_votes(term, session) if session else {}
        weights: dict[str, float] = {a.image_id: trust(a) for a in summary.images}
        for image_id, value in mine.items():
            weights[image_id] = weights.get(image_id, 0.0) + SELF_WEIGHT * value
        weights = {i: w for i, w in weights.items() if w != 0}
        if not weights and not mine:
            return None
        return Taught(
            term=term,
            votes=max(summary.votes, len(mine)),
            sessions=max(summary.sessions, 1 if mine else 0),
            examples=self._examples(weights),
            mine=mine,
            clients=summary.clients,
        )

    def forget(self, term: str) -> None:
        """Drop the cached summary of a term (after a vote in this process)."""
        self._summaries.forget(term)

    def forget_all(self) -> None:
        """Drop every cached summary (after votes of many terms changed)."""
        self._summaries.clear()

    def _summary(self, term: str) -> TermSummary:
        summary = self._summaries.get(term)
        if summary is None:
            summary = self._summaries.put(term, self.feedback.summary(term, agreed_only=True))
        return summary

    def _examples(self, weights: dict[str, float]) -> Examples:
        """Images with their signed weights as examples (those still indexed)."""
        vectors = self._vectors(weights)
        dim = self.index.dim or 1

        def stack(sign: int) -> tuple[list[str], np.ndarray, np.ndarray]:
            ids = [i for i in vectors if weights[i] * sign > 0]
            matrix = np.stack([vectors[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)
            return ids, matrix, np.array([abs(weights[i]) for i in ids], dtype=np.float32)

        return Examples(*stack(1), *stack(-1))

    # Ranking ---------------------------------------------------------------------------

    def fit(self, taught: Taught, keyword: list[str], k: int) -> tuple[list[str], np.ndarray]:
        """Candidates for a learned ranking, and how well each fits what was taught (0..1).

        The candidates are the keyword ranking's (`keyword`) and those the learned model finds
        through the index (about `k`), without the images the session voted not relevant."""
        hidden = taught.hidden
        found = dict.fromkeys([*keyword, *self.candidates(taught, k)])
        candidates = [i for i in found if i not in hidden]
        if not candidates:
            return [], np.zeros(0, np.float32)
        return candidates, _unit_range(self.scores(taught, candidates))

    def scores(self, taught: Taught, candidates: list[str]) -> np.ndarray:
        """How well each candidate fits what was taught (higher is better), by the method."""
        examples = taught.examples
        if self.method == "neighbours":
            return self._neighbour_scores(examples, candidates)
        stored = self._vectors(candidates)
        # An image removed since the candidates were found fits nothing.
        missing = np.zeros(self.index.dim, np.float32)
        vectors = np.stack([stored.get(i, missing) for i in candidates])
        if self.method == "knn":
            return _knn_scores(examples, vectors)
        rocchio: np.ndarray = vectors @ _rocchio_vector(examples)
        return rocchio

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
        present = self.index.present(found)
        return [i for i in found if i in present]

    def _vectors(self, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The indexed images among `image_ids` with the vectors learning compares: their
        expanded vectors where stored (`expanded`, index/expansion.py), else their features."""
        vectors = self.index.vectors(image_ids)
        if self.expanded:
            vectors.update(self.neighbourhoods.expanded(vectors))
        return vectors

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
    score: np.ndarray = np.sort(similarity, axis=1)[:, -nearest:].mean(axis=1)
    if len(examples.negative):
        score -= NEGATIVE_WEIGHT * (vectors @ examples.negative.T).max(axis=1)
    return score


def _weighted_mean(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    mean: np.ndarray = (vectors * weights[:, None]).sum(axis=0) / max(float(weights.sum()), 1e-12)
    return mean


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.ones_like(values)
