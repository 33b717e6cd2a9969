"""How a text query's results are ordered: by keyword alone, by what users taught, and what
the first page shows when the words are barely understood."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from imgsearch.learning import Learner, Taught

FIRST_PAGE = 20
CANDIDATES = 200  # keyword hits considered for re-ranking by a learned model

# Why a hit is where it is: it matches the words; users' votes placed it; this session voted it
# relevant; it is shown for variety while the words are not understood; it looks like the query.
Reason = Literal["keyword", "learned", "voted", "explore", "similar"]


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float  # higher is better; never increases down a ranking
    reason: Reason = "keyword"

    @property
    def learned(self) -> bool:
        """Placed by what users taught, not by the model's classes alone."""
        return self.reason in ("learned", "voted")


def explore_page(
    guesses: list[tuple[str, float]],
    spread: list[str],
    confidence: float,
    *,
    high_confidence: float,
    rejected: int = 0,
    page: int = FIRST_PAGE,
) -> list[Hit]:
    """The keyword guesses, with a spread of the collection woven into the first page.

    When the words are understood the guesses fill the page. When they are guessed at, half
    the first page shows the collection's variety instead (weak guesses are often right, but a
    spread of the collection covers its kinds of pictures), so that something relevant
    appears and one vote can start the learning; words not understood at all get only the
    variety. Each page of `rejected` guesses halves the guesses' share. Beyond the first page
    come the remaining guesses.
    """
    share = 1.0 if confidence >= high_confidence else 0.5 if confidence > 0 else 0.0
    share *= 0.5 ** (rejected / page)
    n_guesses = min(len(guesses), round(page * share))
    explore = [i for i in spread if i not in {g for g, _ in guesses[:n_guesses]}]
    n_explore = min(len(explore), page - n_guesses)
    first: list[tuple[str, float | None]] = []
    taken_guesses = taken_explore = 0
    while taken_guesses < n_guesses or taken_explore < n_explore:
        # Interleave evenly: the sequence of each kind is spread over the page.
        if taken_explore >= n_explore or (
            taken_guesses < n_guesses and taken_guesses * n_explore <= taken_explore * n_guesses
        ):
            first.append(guesses[taken_guesses])
            taken_guesses += 1
        else:
            first.append((explore[taken_explore], None))
            taken_explore += 1
    shown = {i for i, _ in first}
    rest = [(i, s) for i, s in guesses[n_guesses:] if i not in shown]
    return _non_increasing(
        [(i, s, "keyword" if s is not None else "explore") for i, s in first + rest]
    )


def learned_ranking(
    learner: Learner, taught: Taught, keyword: list[tuple[str, float]], wanted: int
) -> list[Hit]:
    """Re-rank with a term's learned model: the session's relevant images first, its
    not-relevant ones out, the rest by learned fit blended with the keyword score."""
    hidden = taught.hidden
    candidates = list(
        dict.fromkeys([i for i, _ in keyword] + learner.candidates(taught, max(wanted, FIRST_PAGE)))
    )
    candidates = [i for i in candidates if i not in hidden]
    if not candidates:
        return []
    fit = _unit_range(learner.scores(taught, candidates))
    keyword_score = dict(keyword)
    top_keyword = max(keyword_score.values(), default=0.0) or 1.0
    keyword_fit = np.array([keyword_score.get(i, 0.0) / top_keyword for i in candidates])
    strength = taught.strength()
    blended = strength * fit + (1.0 - strength) * keyword_fit
    pinned = set(taught.pinned)
    order = sorted(
        range(len(candidates)),
        key=lambda j: (candidates[j] not in pinned, -blended[j], candidates[j]),
    )
    hits = []
    for j in order[:wanted]:
        image_id = candidates[j]
        score = 1.0 + float(fit[j]) if image_id in pinned else float(blended[j])
        if image_id in pinned:
            reason: Reason = "voted"
        elif strength * fit[j] > (1.0 - strength) * keyword_fit[j]:
            reason = "learned"
        else:
            reason = "keyword"
        hits.append((image_id, score, reason))
    return _non_increasing(hits)


def _non_increasing(ranked: Sequence[tuple[str, float | None, Reason]]) -> list[Hit]:
    """Hits whose scores never increase down the list. An image placed for coverage (score
    None) takes the score of the place it was put in: it is there to explore, not as a match."""
    hits = []
    previous = max((s for _, s, _ in ranked if s is not None), default=0.0)
    for image_id, score, reason in ranked:
        if score is not None:
            previous = min(previous, score)
        hits.append(Hit(image_id, previous, reason))
    return hits


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.ones_like(values)
