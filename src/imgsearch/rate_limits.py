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
            f"too many votes from this {subject} {window.called}; "
            f"try again in {_duration(retry_after)}"
        )
        self.subject = subject
        self.retry_after = retry_after


def _duration(seconds: int) -> str:
    """`seconds` as a person reads a wait: "45 s", "3 h 20 min"."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


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

    def count(self, subject: str) -> tuple[int, int]:
        """Count one event of `subject`: the events counted in its window, this one too, and
        the window's number (whole windows since the epoch)."""
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
        return int(item["count"]), number

    def seconds_left(self, number: int) -> int:
        """Whole seconds until window `number` ends (at least 1: it may have ended since)."""
        return max(1, math.ceil((number + 1) * self.window.seconds - self.clock()))


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
        count, number = limiter.count(subject)
        if count > limiter.limit:
            raise TooMany(limiter.kind, limiter.window, limiter.seconds_left(number))
