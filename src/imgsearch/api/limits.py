"""Bounds on what one client can send: votes per minute. (Request bodies: `guard.py`.)"""

from __future__ import annotations

import time
from contextlib import suppress

from fastapi import HTTPException

from imgsearch.service import ImageSearch
from imgsearch.storage import Table


class RateLimiter:
    """At most `per_minute` events per subject and minute, counted in the table, so that every
    instance of the API (every Lambda) shares the count (rows: `rate#`, storage/layout.md)."""

    def __init__(self, table: Table, name: str, per_minute: int) -> None:
        self.table = table
        self.name = name
        self.per_minute = per_minute

    def allow(self, subject: str) -> bool:
        window = int(time.time() // 60)
        item = self.table.increment(
            f"rate#{self.name}#{subject}",
            str(window),
            {"count": 1},
            {"expires_at": (window + 2) * 60},  # DynamoDB's TTL deletes the item
        )
        if item["count"] == 1:  # a new minute: the one before is no longer needed
            with suppress(Exception):
                self.table.delete(f"rate#{self.name}#{subject}", str(window - 1))
        return item["count"] <= self.per_minute


def limit_votes(service: ImageSearch, client: str, session: str) -> None:
    """Votes per session and per client (its id, as the trust model counts it), per minute:
    429 beyond them. The counters expire (expires_at: DynamoDB's TTL, SqliteTable's purge)."""
    settings = service.settings
    table = service.storage.feedback
    checks = [
        (RateLimiter(table, "session", settings.votes_per_session_minute), session),
        (RateLimiter(table, "client", settings.votes_per_client_minute), client),
    ]
    for limiter, subject in checks:
        if not limiter.allow(subject):
            raise HTTPException(
                429,
                detail=f"too many votes from this {limiter.name}; try again in a minute",
                headers={"Retry-After": "60"},
            )
