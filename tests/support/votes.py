"""Every vote on a term, read from the feedback table: what tests and bench/soak.py check
votes against. Production never reads them all (O(votes)): a search reads the asking
session's (`Feedback.session_votes`), the owner's view the summaries and voices."""

from __future__ import annotations

from dataclasses import dataclass

from imgsearch.feedback import LOCAL_CLIENT
from imgsearch.storage import Table


@dataclass(frozen=True)
class Vote:
    session: str
    image_id: str
    value: int  # 1 relevant, -1 not relevant
    client: str = LOCAL_CLIENT


def term_votes(table: Table, term: str) -> list[Vote]:
    """The term's votes as stored (its `vote#` rows: storage/layout.md)."""
    return [
        Vote(i["session"], i["image_id"], int(i["vote"]), i.get("client", LOCAL_CLIENT))
        for i in table.query(f"term#{term}", prefix="vote#")
    ]
