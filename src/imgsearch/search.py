"""The search policy: what a query by words, by an indexed image or by a photo returns, and
in what order. The one place that decides:
- what is a confident match: an image the collection's own evidence says the words name (the
  classes of a sense of the words the collection holds, with probability >= MATCH_PROBABILITY
  in the image: a cut index/base.py holds, as S3 Vectors keeps its counts at it). A sense the
  collection holds (an image at >= HELD_PROBABILITY) reads fully, whatever its rank among the
  word's senses; matches come first, tier "match";
- what fills the rest (tier "guess" or "explore"): understood words, and words a sense of
  which the collection holds, continue by their classes; other guessed words share the page
  with exploration of the collection; unknown words get exploration only, until votes
  teach them. Exploration covers the collection's kinds of pictures and, after "not relevant"
  votes, moves to the kinds farthest from what was rejected;
- how votes re-rank (a term's learned model blended with the keyword ranking, the session's
  own "relevant" images first, its "not relevant" ones left out, for text and photo queries);
- what "more like this" is (the stored neighbourhood, or a live search beyond it).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from imgsearch.config import FeedbackMethod
from imgsearch.feedback import Feedback
from imgsearch.index.base import MATCH_PROBABILITY, SearchIndex
from imgsearch.index.expansion import COPY_DISTANCE
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.learning import Learner, Taught
from imgsearch.vectors import unit_rows
from imgsearch.vocabulary import Interpretation, Level, Reading, Sense, Vocabulary

log = logging.getLogger(__name__)

FIRST_PAGE = 20
CHIP_CLASSES = 10  # classes whose photos are counted for the interpretation
CANDIDATES = 200  # keyword hits considered for re-ranking by a learned model; matches counted
# A sense of the words is held by the collection when one of its images has the sense's
# classes with at least this probability: evidence enough to read the words as that sense.
HELD_PROBABILITY = 0.3
# Representatives of the collection exploration chooses from (a first page and a few more).
EXPLORE_POOL = 4 * FIRST_PAGE

# Why a hit is where it is: it matches the words; users' votes placed it; this session voted it
# relevant; it is shown for variety while the words are not understood; it looks like the query;
# it is listed (browsing, or found by its key), not ranked.
Reason = Literal["keyword", "learned", "voted", "explore", "similar", "listed"]
# How sure a text search is of a hit: a confident match, a guess, or a pick to explore.
Tier = Literal["match", "guess", "explore"]
# The share of the first page that keyword guesses fill, by how well the words are understood.
GUESS_SHARE: dict[Level, float] = {"high": 1.0, "low": 0.5, "none": 0.0}
# Below the "low" share, guesses take the words' confidence, but never less than this: measured
# (docs/evaluation.md), a floor of 0.3 (6 of 20 places) shows a relevant photo on the first
# page for as many labels as no floor, and takes back 3 of the 8 points of the demo's p@20 a
# share of the confidence alone lost; 0.4 and 0.5 lose 2 and 4 of scene15's 15 labels.
MIN_GUESS_SHARE = 0.3


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float  # higher is better; never increases down a ranking
    reason: Reason = "keyword"
    tier: Tier | None = None  # text searches only

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
    method: FeedbackMethod  # the learning method (settings.feedback_method)


@dataclass(frozen=True)
class TextResults:
    interpretation: Interpretation  # with a "learned" reading for a word only votes taught
    hits: list[Hit]
    learned: Learned | None = None  # None: nothing taught for the term (to this session)
    matches: int = 0  # confident matches in the collection (counted up to CANDIDATES)
    did_you_mean: str | None = None  # a spelling the vocabulary knows, for unknown words
    class_photos: dict[int, int] = field(default_factory=dict)  # class -> photos it holds


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
    # The chips' counts (a first page's) do not depend on the ranking: asked beside it (on S3
    # Vectors, their queries then overlap the ranking's instead of following them).
    chips = interpretation.combined_classes()[:CHIP_CLASSES] if offset == 0 else []
    learned_path = taught is not None and taught.examples.evidence > 0
    # Without held senses, the ranking by the words alone comes next: as deep as the path
    # that follows reads it (asked ahead where queries wait for a round trip: held_matches).
    depth = max(wanted, CANDIDATES if learned_path else FIRST_PAGE)
    (held, matched), photos = index.together(
        lambda: held_matches(
            index, interpretation, exclude_classes, weights, max(wanted, CANDIDATES), hidden, depth
        ),
        lambda: class_photos(index, chips),
    )
    if taught is not None and learned_path:
        keyword = index.ranked_by_classes(
            {**weights, **held}, max(wanted, CANDIDATES), exclude=hidden
        )
        candidates, fit = learner.fit(taught, [i for i, _ in keyword], max(wanted, FIRST_PAGE))
        hits = learned_ranking(taught, keyword, candidates, fit, wanted)
        confident = set(matched) | set(taught.pinned)
        hits = [replace(h, tier="match" if h.image_id in confident else "guess") for h in hits]
    else:
        hits = first_pages(
            index,
            interpretation.level,
            {**weights, **held},
            matched,
            hidden,
            wanted,
            interpretation.confidence,
        )
        confident = set(matched)
    learned = None
    if taught is not None:
        learned = Learned(
            taught.votes, taught.sessions, taught.clients, taught.strength(), learner.method
        )
        if interpretation.level == "none":  # a word only users taught
            interpretation = replace(
                interpretation, readings=(*interpretation.readings, _learned_reading(taught))
            )
    # For the first page only (the page reads it there), as the chips' counts below.
    did_you_mean = (
        vocabulary.suggest(query) if interpretation.level != "high" and offset == 0 else None
    )
    return TextResults(
        interpretation,
        hits[offset:wanted],
        learned,
        matches=len(confident),
        did_you_mean=did_you_mean,
        # A query per class (over the network on S3 Vectors): for the first page only.
        class_photos=photos,
    )


def held_matches(
    index: SearchIndex,
    interpretation: Interpretation,
    exclude_classes: Collection[int],
    weights: dict[int, float],
    k: int,
    hidden: Collection[str],
    depth: int = FIRST_PAGE,
) -> tuple[dict[int, float], list[tuple[str, float]]]:
    """The held classes of the words' senses and up to `k` confident matches of them.

    Which senses are held decides which rankings follow. Where each query waits for a round
    trip (`SearchIndex.round_trips`: S3 Vectors), the rankings for the senses the per-class
    counts say are likely held (`likely_held`; without any, the words' own ranking `depth`
    deep, which the first page or the learned ranking reads next) are asked beside that
    question, not after it: when the guess is right, the rankings asked again below come
    from the index's kept answers, and a search waits for one round of queries instead of
    two. The answer is the same either way; a wrong guess (or a failed one) costs its requests
    only."""
    senses = interpretation.senses
    likely = likely_held(index, senses, exclude_classes)
    if likely is None:
        held = held_classes(index, senses, exclude_classes)
    else:

        def ask_ahead() -> None:
            # Only a guess: its failure (throttling, a 5xx) must not fail a search that asked
            # in turn would succeed. The rankings are asked again below, and fail there if
            # the search needs them.
            try:
                if likely:
                    confident_matches(index, likely, weights, k, hidden)
                else:
                    index.ranked_by_classes(weights, depth, exclude=hidden)
            except Exception:
                log.debug("rankings asked ahead failed; asked again in turn", exc_info=True)

        held, _ = index.together(lambda: held_classes(index, senses, exclude_classes), ask_ahead)
    return held, confident_matches(index, held, weights, k, hidden)


def held_classes(
    index: SearchIndex, senses: Collection[Sense], exclude_classes: Collection[int] = ()
) -> dict[int, float]:
    """The classes of the senses the collection holds (an image of the sense with probability
    >= HELD_PROBABILITY), weighed as the words read them among the held senses only: the
    likeliest held sense of each phrase weighs 1, whatever senses the collection lacks."""
    each = _sense_classes(senses, exclude_classes)
    best = index.ranked_by_each([dict.fromkeys(classes, 1.0) for classes in each], 1)
    return _held_weights(
        senses, each, [bool(top) and top[0][1] >= HELD_PROBABILITY for top in best]
    )


def likely_held(
    index: SearchIndex, senses: Collection[Sense], exclude_classes: Collection[int] = ()
) -> dict[int, float] | None:
    """`held_classes` as the index's per-class counts suggest it, without a query: a sense
    is likely held when one of its classes has an image at MATCH_PROBABILITY or more (held
    needs HELD_PROBABILITY, so this is a guess, to ask ahead by, never an answer). None where
    guessing gains nothing (queries without round trips) or the counts would cost queries."""
    if not senses or not index.round_trips or not index.counts_cheaply(MATCH_PROBABILITY):
        return None
    each = _sense_classes(senses, exclude_classes)
    counts = index.class_photo_counts(
        sorted({c for classes in each for c in classes}), MATCH_PROBABILITY, 1
    )
    return _held_weights(
        senses, each, [any(counts.get(c, 0) > 0 for c in classes) for classes in each]
    )


def _sense_classes(senses: Collection[Sense], exclude_classes: Collection[int]) -> list[list[int]]:
    return [[c for c in sense.classes if c not in exclude_classes] for sense in senses]


def _held_weights(
    senses: Collection[Sense], each: list[list[int]], held_senses: list[bool]
) -> dict[int, float]:
    """The weights of the classes of the held senses (`held_senses`, in the order of
    `senses`; `each`: their classes): see `held_classes`."""
    held: dict[int, dict[int, float]] = {}  # phrase -> class -> weight
    for sense, classes, is_held in zip(senses, each, held_senses, strict=True):
        if is_held and classes:
            phrase = held.setdefault(sense.phrase, {})
            for c in classes:
                phrase[c] = max(phrase.get(c, 0.0), sense.weight)
    weights: dict[int, float] = {}
    for phrase in held.values():
        top = max(phrase.values())
        for c, w in phrase.items():
            weights[c] = max(weights.get(c, 0.0), w / top)
    return weights


def confident_matches(
    index: SearchIndex,
    held: dict[int, float],
    weights: dict[int, float],
    k: int,
    hidden: Collection[str],
) -> list[tuple[str, float]]:
    """Up to `k` images the held classes describe with probability >= MATCH_PROBABILITY,
    ranked by the whole reading (`weights` with the held classes at their held weight): the
    classes a reading relates to its words order its matches better than the held classes
    alone (measured: "store" 85% -> 90% p@20 on scene15)."""
    if not held:
        return []
    # Both rankings at once (S3 Vectors: the second's requests need not wait for the first's).
    ranked_by_held, by_whole_reading = index.together(
        lambda: index.ranked_by_classes(held, k, exclude=hidden),
        lambda: index.ranked_by_classes({**weights, **held}, 2 * k, exclude=hidden),
    )
    by_held = [(i, s) for i, s in ranked_by_held if s >= MATCH_PROBABILITY]
    if not by_held:
        return []
    matched = dict(by_held)
    by_reading = [(i, s) for i, s in by_whole_reading if i in matched]
    placed = {i for i, _ in by_reading}
    ranked = by_reading + [(i, s) for i, s in by_held if i not in placed]
    scores = np.minimum.accumulate([s for _, s in ranked]).tolist()  # never increasing
    return [(i, s) for (i, _), s in zip(ranked, scores, strict=True)]


def class_photos(index: SearchIndex, classes: list[tuple[int, float]]) -> dict[int, int]:
    """How many photos each class stands for: those it describes with probability >=
    MATCH_PROBABILITY (counted up to CANDIDATES)."""
    return index.class_photo_counts([c for c, _ in classes], MATCH_PROBABILITY, CANDIDATES)


def first_pages(
    index: SearchIndex,
    level: Level,
    weights: dict[int, float],
    matched: list[tuple[str, float]],
    hidden: set[str],
    wanted: int,
    confidence: float = 1.0,
) -> list[Hit]:
    """Before any relevant vote: the confident matches, then what fills the first page (the
    words' classes if understood, else guesses woven with exploration), then the rest."""
    first = [Hit(i, s, "keyword", "match") for i, s in matched[:wanted]]
    if len(first) >= wanted:
        return first
    shown = hidden | {i for i, _ in matched}
    room = max(FIRST_PAGE - len(first), 0)
    guesses = index.ranked_by_classes(weights, max(wanted, FIRST_PAGE), exclude=shown)
    if level == "high" or matched:
        # Understood words, and words a sense of which the collection holds: their classes
        # fill the page, less surely than the matches (a plain word whose class sits in a
        # later sense, "notebook" among laptops, reads as that class, not as a guess).
        rest = [Hit(i, s, "keyword", "guess") for i, s in guesses]
    else:
        # Guessed words: guesses share the page with exploration, away from what was rejected.
        count = guess_count(level, confidence, len(hidden), room or FIRST_PAGE)
        rest = explore_page(
            hedged_guesses(index, weights, guesses, shown, count),
            explore_order(index, shown, hidden),
            level,
            rejected=len(hidden),
            page=room or FIRST_PAGE,
            confidence=confidence,
        )
    top = first[-1].score if first else None
    return first + [
        replace(h, score=min(h.score, top) if top is not None else h.score) for h in rest
    ]


def hedged_guesses(
    index: SearchIndex,
    weights: dict[int, float],
    guesses: list[tuple[str, float]],
    shown: Collection[str],
    count: int,
) -> list[tuple[str, float]]:
    """A guessed word's guesses, ordered for a first page with `count` of them: the better
    half by score, then the best image of each next likeliest class of the guess not among
    them, then the rest by score. Each guessed class is a hypothesis of its own ("living
    room": couch, space heater, infant bed): the top scores often all come from one of them
    (bedrooms, for their four-poster beds), so half the places test the others. Measured
    (docs/evaluation.md): scene15's labels with a relevant photo on page 1 from 13 to 14 of
    15, the demo's p@20 over all labels 76.0% -> 73.4%, flowers5's 33% -> 37%."""
    head = guesses[: (count + 1) // 2]
    taken = {i for i, _ in head}
    score = dict(guesses)
    hedges: list[tuple[str, float]] = []
    likeliest = sorted(weights.items(), key=lambda cw: -cw[1])[: 2 * count]
    while likeliest and len(head) + len(hedges) < count:
        # As many classes asked at once as places are left (one query each).
        asked, likeliest = (
            likeliest[: count - len(head) - len(hedges)],
            likeliest[count - len(head) - len(hedges) :],
        )
        each = index.ranked_by_each([{c: 1.0} for c, _ in asked], 1, exclude=shown)
        for (_, weight), best in zip(asked, each, strict=True):
            if best and best[0][0] not in taken and len(head) + len(hedges) < count:
                image_id, probability = best[0]
                hedges.append((image_id, score.get(image_id, weight * probability)))
                taken.add(image_id)
    return head + hedges + [(i, s) for i, s in guesses if i not in taken]


def explore_order(
    index: SearchIndex, shown: Collection[str], rejected: Collection[str]
) -> list[str]:
    """The collection's representatives not yet shown, the kinds least like what was
    rejected first (after "no" on a page, the next explores other parts of the collection)."""
    pool = index.spread(EXPLORE_POOL, exclude=shown)
    if not rejected or not pool:
        return pool
    vectors = index.vectors([*pool, *rejected])
    no = [vectors[i] for i in rejected if i in vectors]
    if not no:
        return pool
    likeness = np.stack([vectors.get(i, no[0]) for i in pool]) @ np.stack(no).T
    closest = likeness.max(axis=1)
    order = np.argsort(closest, kind="stable")
    return [pool[j] for j in order.tolist()]


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
    index: SearchIndex,
    neighbourhoods: Neighbourhoods,
    image_id: str,
    *,
    limit: int,
    offset: int,
    expanded: bool = True,
) -> list[Hit] | None:
    """Images most like an indexed one: its stored neighbourhood ranked by expanded vectors
    (`expanded`, index/expansion.py; else by the raw features), then, beyond it, a live
    search by the raw features. None if the image is not indexed."""
    if image_id not in index:
        return None
    wanted = offset + limit
    neighbours = neighbourhoods.get(image_id)
    by_expansion = neighbourhoods.expanded_ranking(image_id, neighbours) if expanded else None
    head = by_expansion or [(i, 1.0 - d) for i, d in neighbours]
    if len(head) < min(wanted, len(index) - 1):
        vector = index.vector(image_id)
        if vector is None:  # removed since the check above
            return None
        head = _beyond(head, index.nearest(vector, wanted, exclude={image_id}))
    return [Hit(i, s, "similar") for i, s in head[offset:wanted]]


def _beyond(
    head: list[tuple[str, float]], nearest: list[tuple[str, float]]
) -> list[tuple[str, float]]:
    """`head` (a ranked neighbourhood), then the `nearest` (id, distance) it does not hold: the
    pages of one answer neither repeat nor skip an image, whatever their size."""
    held = {i for i, _ in head}
    return head + [(i, 1.0 - d) for i, d in nearest if i not in held]


def photo_search(
    index: SearchIndex,
    neighbourhoods: Neighbourhoods,
    features: np.ndarray,
    *,
    limit: int,
    offset: int,
    hidden: Collection[str] = (),
    expanded: bool = True,
    copy_distance: float = COPY_DISTANCE,
) -> list[Hit]:
    """Images most like a photo's features; `hidden`: what the session voted not relevant.
    With `expanded`, the photo's vector is expanded by its nearest images and their stored
    neighbourhood-sized set ranked by expanded vectors, as "more like this" ranks (a copy of
    an indexed image, up to `copy_distance` from it: resized, re-encoded, cropped a little,
    gets that image first, then that image's own "more like this"); beyond that set, the
    nearest by the raw features."""
    vector = unit_rows(features[np.newaxis])[0]
    wanted = offset + limit
    k = neighbourhoods.k
    nearest = index.nearest(vector, max(wanted, k + 1), exclude=hidden)
    if not expanded or not nearest:
        return [Hit(i, 1.0 - d, "similar") for i, d in nearest[offset:wanted]]
    if nearest[0][1] <= max(copy_distance, COPY_DISTANCE):
        copy = nearest[0][0]
        others = similar_images(index, neighbourhoods, copy, limit=k, offset=0) or []
        head = [(copy, 1.0)] + [(h.image_id, h.score) for h in others if h.image_id not in hidden]
    else:
        expansion = neighbourhoods.expansion
        candidates = nearest[:k]
        query = expansion.of(
            vector, candidates, index.vectors(i for i, _ in candidates[: expansion.neighbours])
        )
        head = expansion.rank(
            query, [i for i, _ in candidates], neighbourhoods.expanded(i for i, _ in candidates)
        )
    return [Hit(i, s, "similar") for i, s in _beyond(head, nearest)[offset:wanted]]


def session_hidden(feedback: Feedback, term: str | None, session: str | None) -> set[str]:
    """What a session voted not relevant for a term: left out of its results."""
    if not term or not session:
        return set()
    return {i for i, vote in feedback.session_votes(term, session).items() if vote < 0}


def guess_count(level: Level, confidence: float, rejected: int, page: int) -> int:
    """How many places of a first page of `page` the keyword guesses take (explore_page)."""
    halved: float = 0.5 ** (rejected / page)  # each page of rejected guesses halves it
    share = min(GUESS_SHARE[level], max(confidence, MIN_GUESS_SHARE)) * halved
    return round(page * share)


def explore_page(
    guesses: list[tuple[str, float]],
    spread: list[str],
    level: Level,
    *,
    rejected: int = 0,
    page: int = FIRST_PAGE,
    confidence: float = 1.0,
) -> list[Hit]:
    """The keyword guesses, with a spread of the collection woven into the first page.

    When the words are understood (`level` "high") the guesses fill the page. When they are
    guessed at ("low"), half the first page shows the collection's variety instead (weak
    guesses are often right, but a spread of the collection covers its kinds of pictures), so
    that something relevant appears and one vote can start the learning; words not understood
    at all ("none") get only the variety. The guesses' share is at most the words'
    `confidence`, but at least MIN_GUESS_SHARE: a word read at 0.1 gets 6 guesses and 14
    picks, enough to show most kinds of pictures of a collection on the first page (measured
    on scene15: labels with no relevant photo on it went from 5 of 15 at half the page to 2).
    Each page of `rejected` guesses halves the share.
    Beyond the first page come the remaining guesses, then the remaining picks.
    """
    n_guesses = min(len(guesses), guess_count(level, confidence, rejected, page))
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
    rest += [(i, None) for i in explore[n_explore:] if i not in shown]
    return [
        replace(h, tier="explore" if h.reason == "explore" else "guess")
        for h in _non_increasing(
            [(i, s, "keyword" if s is not None else "explore") for i, s in first + rest]
        )
    ]


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
