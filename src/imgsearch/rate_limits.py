"""Bounds on how often one subject may act: votes per session and per client, per minute.

Counted in the feedback table (rows `rate#`, storage/layout.md), so that every instance of
the API (every Lambda) shares the count. The counters expire: `expires_at` is DynamoDB's time
to live, and the local table purges them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

from imgsearch.storage import Table


class TooMany(Exception):
    """More than a minute's share of actions from one subject: try again in a minute."""

    retry_after = 60

    def __init__(self, subject: str) -> None:
        super().__init__(f"too many votes from this {subject}; try again in a minute")
        self.subject = subject


class RateLimiter:
    """At most `per_minute` events per subject and minute."""

    clock: Callable[[], float] = staticmethod(time.time)  # tests pin it inside one minute

    def __init__(self, table: Table, name: str, per_minute: int) -> None:
        self.table = table
        self.name = name
        self.per_minute = per_minute

    def allow(self, subject: str) -> bool:
        window = int(self.clock() // 60)
        item = self.table.increment(
            f"rate#{self.name}#{subject}",
            str(window),
            {"count": 1},
            {"expires_at": (window + 2) * 60},  # DynamoDB's TTL deletes the item
        )
        if item["count"] == 1:  # a new minute: the one before is no longer needed
            with suppress(Exception):
                self.table.delete(f"rate#{self.name}#{subject}", str(window - 1))
        return bool(item["count"] <= self.per_minute)


def check_vote_rate(
    table: Table, *, session: str, client: str, per_session: int, per_client: int
) -> None:
    """Count a vote of `session` from `client`; raises TooMany beyond either's limit."""
    for limiter, subject in (
        (RateLimiter(table, "session", per_session), session),
        (RateLimiter(table, "client", per_client), client),
    ):
        if not limiter.allow(subject):
            raise TooMany(limiter.name)
