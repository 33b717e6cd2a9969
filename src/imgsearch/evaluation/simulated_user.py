"""Measurement 4: relevance feedback, with a simulated user who knows every image's label.

Each round the user searches (`search_text`, page of 20, their session), judges the page by
label, and votes through `ImageSearch.vote` (the path the API's POST /api/feedback takes) on
every shown image not voted on yet: +1 relevant, -1 not. The next round searches again. It
stops when p@20 reaches the target or after MAX_ROUNDS rounds of votes.

Two modes: "label" types the label itself; "scratch" types a made-up word the vocabulary cannot
know, so that only feedback can teach it. Every label and mode runs on a feedback table of its
own (see `Sandbox`), so no run learns from another.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from imgsearch.evaluation import PAGE
from imgsearch.evaluation.collection import LabelledCollection
from imgsearch.evaluation.keyword import query_for
from imgsearch.evaluation.methods import Sandbox, Variant
from imgsearch.evaluation.metrics import RoundsToTarget, precision_at_k, rounds_to_target
from imgsearch.evaluation.progress import Track, untracked
from imgsearch.service import ImageSearch

TARGET = 0.75  # p@20 the user is satisfied with, as in the study
MAX_ROUNDS = 10  # rounds of votes at most; the first query comes before them
MODES = ("label", "scratch")
MADE_UP_PREFIX = "zqx"  # no English word starts so


@dataclass
class UserRun:
    label: str
    mode: str  # "label" | "scratch"
    query: str
    precisions: list[float]  # p@20 of each page shown, the first query's first
    relevant_shown: list[int]  # relevant images on each page
    votes: int  # votes cast in all
    rounds: RoundsToTarget = field(init=False)

    def __post_init__(self) -> None:
        self.rounds = rounds_to_target(self.precisions, self.relevant_shown, TARGET)


def made_up_word(label: str, service: ImageSearch) -> str:
    """A word, the same for a label every run, that the vocabulary has no reading for."""
    rng = random.Random(label)
    while True:
        word = MADE_UP_PREFIX + "".join(rng.choices(string.ascii_lowercase, k=6))
        if service.interpret(word).level == "none":
            return word


def simulate(
    service: ImageSearch,
    query: str,
    relevant: set[str],
    session: str,
    method: Variant,
) -> tuple[list[float], list[int], int]:
    """Search, judge, vote, repeat. Returns each page's p@20 and relevant count, and votes."""
    voted: set[str] = set()
    precisions: list[float] = []
    relevant_shown: list[int] = []
    for round_number in range(MAX_ROUNDS + 1):
        page = service.search_text(query, limit=PAGE, session=session)
        shown = [hit.image_id for hit in page.hits]
        judged = [image_id in relevant for image_id in shown]
        precisions.append(precision_at_k(judged, PAGE, len(relevant)))
        relevant_shown.append(sum(judged))
        if precisions[-1] >= TARGET or round_number == MAX_ROUNDS:
            break
        for image_id, is_relevant in zip(shown, judged, strict=True):
            if image_id not in voted:
                service.vote(query, image_id, 1 if is_relevant else -1, session)
                voted.add(image_id)
    return precisions, relevant_shown, len(voted)


def run_user(
    sandbox: Sandbox, collection: LabelledCollection, label: str, mode: str, method: Variant
) -> UserRun:
    service = sandbox.service(method)
    query = query_for(label) if mode == "label" else made_up_word(label, service)
    precisions, relevant_shown, votes = simulate(
        service, query, collection.relevant(label), f"eval-{mode}-{label}", method
    )
    return UserRun(label, mode, query, precisions, relevant_shown, votes)


def feedback_table(
    sandbox: Sandbox,
    collection: LabelledCollection,
    method: Variant,
    track: Track = untracked,
) -> list[UserRun]:
    """A simulated user per label and mode."""
    runs = [(mode, label) for mode in MODES for label in collection.by_label]
    return [
        run_user(sandbox, collection, label, mode, method)
        for mode, label in track(runs, f"simulated feedback ({method.name})")
    ]
