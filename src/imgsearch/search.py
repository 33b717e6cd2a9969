"""The search policy: what a query by words, by an indexed image or by a photo returns, and
in what order. The one place that decides:
- whether words are understood (`Interpretation.level`): understood words rank by their
  classes; guessed words share the first page with a spread of the collection; unknown
  words get the spread only, until votes teach them;
- how votes re-rank (a term's learned model blended with the keyword ranking, the session's
  own "relevant" images first, its "not relevant" ones left out, for text and photo queries);
- what "more like this" is (the stored neighbourhood, or a live search beyond it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from imgsearch.feedback import Feedback
from imgsearch.index.base import SearchIndex
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.index.shards import normalise_rows
from imgsearch.learning import Learner, Taught
from imgsearch.vocabulary import Interpretation, Level, Reading, Vocabulary

FIRST_PAGE = 20
CANDIDATES = 200  # keyword hits considered for re-ranking by a learned model

# Why a hit is where it is: it matches the words; users' votes placed it; this session voted it
# relevant; it is shown for variety while the words are not understood; it looks like the query;
# it is listed (browsing, or found by its key), not ranked.
Reason = Literal["keyword", "learned", "voted", "explore", "similar", "listed"]
# The share of the first page that keyword guesses fill, by how well the words are understood.
GUESS_SHARE: dict[Level, float] = {"high": 1.0, "low": 0.5, "none": 0.0}


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float  # higher is better; never increases down a ranking
    reason: Reason = "keyword"

    @property
    def learned(self) -> bool:
        """Placed by what users taught, not by the model's classes alone."""
        return self.reason in ("learned", "voted")


@dataclass(frozen=True)
class Learned:
    """What votes taught about a term, as one session sees it."""

    votes: int
    sessions: int
    clients: int
    strength: float  # 0..1: how far the learned ranking outweighs the keyword one
    method: str  # the learning method (settings.feedback_method)


@dataclass(frozen=True)
class TextResults:
    interpretation: Interpretation  # with a "learned" reading for a word only votes taught
    hits: list[Hit]
    learned: Learned | None = None  # None: nothing taught for the term (to this session)


def text_search(
    index: SearchIndex,
    vocabulary: Vocabulary,
    learner: Learner,
    query: str,
    *,
    limit: int,
    offset: int,
    session: str | None,
    exclude_classes: Collection[int] = (),
) -> TextResults:
    """Images for a few words, best first, re-ranked by what users taught for them.
    `exclude_classes`: ImageNet classes the user struck from the interpretation."""
    interpretation = vocabulary.interpret(query)
    term = interpretation.query
    weights = class_weights(interpretation, exclude_classes)
    wanted = offset + limit
    taught = learner.taught(term, session) if term else None
    hidden = taught.hidden if taught else set()
    if taught is not None and taught.examples.evidence > 0:
        keyword = index.ranked_by_classes(weights, max(wanted, CANDIDATES))
        candidates, fit = learner.fit(taught, [i for i, _ in keyword], max(wanted, FIRST_PAGE))
        hits = learned_ranking(taught, keyword, candidates, fit, wanted)
    elif interpretation.level == "high":
        ranked = index.ranked_by_classes(weights, wanted, exclude=hidden)
        hits = [Hit(i, s) for i, s in ranked]
    else:
        # Nothing relevant found yet: keep exploring, away from what was rejected.
        hits = explore_page(
            # The whole first page's guesses, whatever `limit`: pages must not overlap.
            index.ranked_by_classes(weights, max(wanted, FIRST_PAGE), exclude=hidden),
            index.spread(FIRST_PAGE, exclude=hidden),
            interpretation.level,
            rejected=len(hidden),
        )
    learned = None
    if taught is not None:
        learned = Learned(
            taught.votes, taught.sessions, taught.clients, taught.strength(), learner.method
        )
        if interpretation.level == "none":  # a word only users taught
            interpretation = replace(
                interpretation, readings=(*interpretation.readings, _learned_reading(taught))
            )
    return TextResults(interpretation, hits[offset:wanted], learned)


def class_weights(
    interpretation: Interpretation, exclude_classes: Collection[int] = ()
) -> dict[int, float]:
    """The classes the words ask for and their weights (> 0), but the excluded ones."""
    weights = interpretation.class_weights
    classes = np.flatnonzero(weights > 0)
    found = dict(zip(classes.tolist(), weights[classes].tolist(), strict=True))
    for c in exclude_classes:
        found.pop(c, None)
    return found


def _learned_reading(taught: Taught) -> Reading:
    note = (
        f"taught by {taught.votes} votes from {taught.sessions} sessions "
        f"and {taught.clients} clients"
    )
    return Reading(taught.term, "learned", round(taught.strength(), 3), (), note)


def similar_images(
    index: SearchIndex, neighbourhoods: Neighbourhoods, image_id: str, *, limit: int, offset: int
) -> list[Hit] | None:
    """Images most like an indexed one: its stored neighbourhood, or a live search beyond it.
    None if the image is not indexed."""
    if image_id not in index:
        return None
    wanted = offset + limit
    neighbours = neighbourhoods.get(image_id)
    if len(neighbours) < min(wanted, len(index) - 1):
        vector = index.vector(image_id)
        if vector is None:  # removed since the check above
            return None
        neighbours = index.nearest(vector, wanted, exclude={image_id})
    return [Hit(i, 1.0 - d, "similar") for i, d in neighbours[offset:wanted]]


def photo_search(
    index: SearchIndex,
    features: np.ndarray,
    *,
    limit: int,
    offset: int,
    hidden: Collection[str] = (),
) -> list[Hit]:
    """Images most like a photo's features; `hidden`: what the session voted not relevant."""
    vector = normalise_rows(features[np.newaxis])[0]
    nearest = index.nearest(vector, offset + limit, exclude=hidden)
    return [Hit(i, 1.0 - d, "similar") for i, d in nearest[offset:]]


def session_hidden(feedback: Feedback, term: str | None, session: str | None) -> set[str]:
    """What a session voted not relevant for a term: left out of its results."""
    if not term or not session:
        return set()
    return {i for i, vote in feedback.session_votes(term, session).items() if vote < 0}


def explore_page(
    guesses: list[tuple[str, float]],
    spread: list[str],
    level: Level,
    *,
    rejected: int = 0,
    page: int = FIRST_PAGE,
) -> list[Hit]:
    """The keyword guesses, with a spread of the collection woven into the first page.

    When the words are understood (`level` "high") the guesses fill the page. When they are
    guessed at ("low"), half the first page shows the collection's variety instead (weak
    guesses are often right, but a spread of the collection covers its kinds of pictures), so
    that something relevant appears and one vote can start the learning; words not understood
    at all ("none") get only the variety. Each page of `rejected` guesses halves the guesses'
    share. Beyond the first page come the remaining guesses.
    """
    share = GUESS_SHARE[level] * 0.5 ** (rejected / page)
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
    rest: list[tuple[str, float | None]] = [
        (i, s) for i, s in guesses[n_guesses:] if i not in shown
    ]
    return _non_increasing(
        [(i, s, "keyword" if s is not None else "explore") for i, s in first + rest]
    )


def learned_ranking(
    taught: Taught,
    keyword: list[tuple[str, float]],
    candidates: list[str],
    fit: np.ndarray,
    wanted: int,
) -> list[Hit]:
    """Re-rank with a term's learned model: the session's relevant images first, the rest by
    learned `fit` (0..1, per candidate, see Learner.fit) blended with the keyword score, as
    far as what was taught outweighs the words."""
    if not candidates:
        return []
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
    hits: list[tuple[str, float | None, Reason]] = []
    for j in order[:wanted]:
        image_id = candidates[j]
        score = 1.0 + float(fit[j]) if image_id in pinned else float(blended[j])
        reason: Reason
        if image_id in pinned:
            reason = "voted"
        elif strength * fit[j] > (1.0 - strength) * keyword_fit[j]:
            reason = "learned"
        else:
            reason = "keyword"
        hits.append((image_id, score, reason))
    return _non_increasing(hits)


def _non_increasing(ranked: list[tuple[str, float | None, Reason]]) -> list[Hit]:
    """Hits whose scores never increase down the list. An image placed for coverage (score
    None) takes the score of the place it was put in: it is there to explore, not as a match."""
    hits = []
    previous = max((s for _, s, _ in ranked if s is not None), default=0.0)
    for image_id, score, reason in ranked:
        if score is not None:
            previous = min(previous, score)
        hits.append(Hit(image_id, previous, reason))
    return hits
