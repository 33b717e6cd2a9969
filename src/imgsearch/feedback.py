"""Votes: one per session, query term and image; the last one counts.

Feedback table layout (pk / sk):
    term#<term> / vote#<session>#<image>   one session's vote on one image for a term
    term#<term> / image#<image>            aggregate: up and down votes over all sessions
    terms       / <term>                   a term users have voted on: the learned vocabulary
A vote and its aggregate change in one transaction, conditioned on the vote read before,
so retries and concurrent writers never lose or double-count a vote.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from imgsearch.catalog import MAX_CAS_ATTEMPTS
from imgsearch.storage import Increment, PreconditionFailed, Put, Table


@dataclass(frozen=True)
class Vote:
    session: str
    image_id: str
    value: int  # 1 relevant, -1 not relevant


@dataclass
class TermVotes:
    """Every vote on one term, grouped the ways ranking needs them."""

    term: str
    votes: list[Vote] = field(default_factory=list)

    @property
    def sessions(self) -> dict[str, dict[str, int]]:
        grouped: dict[str, dict[str, int]] = defaultdict(dict)
        for vote in self.votes:
            grouped[vote.session][vote.image_id] = vote.value
        return dict(grouped)


class Feedback:
    def __init__(self, table: Table) -> None:
        self.table = table

    def vote(self, term: str, image_id: str, session: str, value: int) -> bool:
        """Record `session`'s vote; returns False if it was already the current vote."""
        if value not in (1, -1):
            raise ValueError("a vote is 1 (relevant) or -1 (not relevant)")
        pk, sk = f"term#{term}", f"vote#{session}#{image_id}"
        for _ in range(MAX_CAS_ATTEMPTS):
            current = self.table.get(pk, sk)
            previous = int(current["vote"]) if current else 0
            if previous == value:
                return False
            now = time.time()
            writes = [
                Put(
                    pk,
                    sk,
                    {"vote": value, "session": session, "image_id": image_id, "at": now},
                    expected_version=int(current["version"]) if current else 0,
                ),
                Increment(
                    pk,
                    f"image#{image_id}",
                    {
                        "up": (value == 1) - (previous == 1),
                        "down": (value == -1) - (previous == -1),
                    },
                    {"image_id": image_id},
                ),
                Increment("terms", term, {"votes": 0 if current else 1}, {"updated_at": now}),
            ]
            try:
                self.table.transact(writes)
            except PreconditionFailed:
                continue  # another write to this vote landed first: decide again
            return True
        raise RuntimeError("too much contention on one vote")

    def term_votes(self, term: str) -> TermVotes:
        items = self.table.query(f"term#{term}", prefix="vote#")
        return TermVotes(term, [Vote(i["session"], i["image_id"], int(i["vote"])) for i in items])

    def session_votes(self, term: str, session: str) -> dict[str, int]:
        items = self.table.query(f"term#{term}", prefix=f"vote#{session}#")
        return {i["image_id"]: int(i["vote"]) for i in items}

    def totals(self, term: str) -> dict[str, tuple[int, int]]:
        """Per image: (up, down) votes over all sessions."""
        items = self.table.query(f"term#{term}", prefix="image#")
        return {i["image_id"]: (int(i["up"]), int(i["down"])) for i in items}

    def learned_terms(self) -> dict[str, int]:
        """Terms users have voted on, with how many votes each has."""
        return {i["sk"]: int(i["votes"]) for i in self.table.query("terms")}

    def knows(self, term: str) -> bool:
        return self.table.get("terms", term) is not None
