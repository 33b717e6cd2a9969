"""Bounds on how often one subject may act: votes per session and per client, per minute, and
per client per day.

Counted in the feedback table (rows `rate#`, storage/layout.md), so that every instance of
the API (every Lambda) shares the count. The counters expire: `expires_at` is DynamoDB's time
to live, and the local table purges them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from imgsearch.storage import Table


@dataclass(frozen=True)
class Window:
    """A span of time a count covers, `seconds` long from the epoch on (UTC days), as a
    refusal names it (`called`)."""

    called: str
    seconds: int
    key_suffix: str  # after the subject's kind in the counters' keys


MINUTE = Window("this minute", 60, "")
DAY = Window("today (UTC)", 86_400, "-day")


class TooMany(Exception):
    """More than a window's share of actions from one subject: try again in `retry_after` s,
    when the window ends."""

    def __init__(self, subject: str, window: Window, retry_after: int) -> None:
        super().__init__(
            f"too many votes from this {subject} {window.called}; try again in {retry_after} s"
        )
        self.subject = subject
        self.retry_after = retry_after


class RateLimiter:
    """At most `limit` events per subject (of one `kind`: session, client) and `window` (a
    minute unless given)."""

    clock: Callable[[], float] = staticmethod(time.time)  # tests pin it inside one minute

    def __init__(self, table: Table, kind: str, limit: int, window: Window = MINUTE) -> None:
        self.table = table
        self.kind = kind
        self.limit = limit
        self.window = window
        self._partition = f"rate#{kind}{window.key_suffix}#"

    def allow(self, subject: str) -> bool:
        """Count one event of `subject`; whether it is within the limit."""
        return self.count(subject) <= self.limit

    def count(self, subject: str) -> int:
        """Count one event of `subject`: the events counted in this window, this one too."""
        number = int(self.clock() // self.window.seconds)
        item = self.table.increment(
            self._partition + subject,
            str(number),
            {"count": 1},
            # DynamoDB's TTL deletes the item once the next window is over too.
            {"expires_at": (number + 2) * self.window.seconds},
        )
        if item["count"] == 1:  # a new window: the one before is no longer needed
            with suppress(Exception):
                self.table.delete(self._partition + subject, str(number - 1))
        return int(item["count"])

    def seconds_left(self) -> int:
        """Whole seconds until the current window ends (at least 1)."""
        now = self.clock()
        return max(1, math.ceil((now // self.window.seconds + 1) * self.window.seconds - now))


def check_vote_rate(
    table: Table,
    *,
    session: str,
    client: str,
    per_session: int,
    per_client: int,
    per_client_day: int,
) -> None:
    """Count a vote of `session` from `client`; raises TooMany beyond any of the limits. A
    vote refused by one limit is not counted by the ones after it (a client refused for the
    minute keeps its day's share)."""
    for limiter, subject in (
        (RateLimiter(table, "session", per_session), session),
        (RateLimiter(table, "client", per_client), client),
        (RateLimiter(table, "client", per_client_day, DAY), client),
    ):
        if not limiter.allow(subject):
            raise TooMany(limiter.kind, limiter.window, limiter.seconds_left())
