"""Bounds on what one client can send: request body size, and votes per minute."""

from __future__ import annotations

import json
import time
from contextlib import suppress

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsearch.service import ImageSearch
from imgsearch.storage import Table


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over their limit with 413, before reading them whole: by the
    declared Content-Length, or while a body without one streams in. Files come as multipart
    forms, up to `max_form_bytes`; any other body (JSON) is small, up to `max_other_bytes`."""

    def __init__(self, app: ASGIApp, max_form_bytes: int, max_other_bytes: int) -> None:
        self.app = app
        self.max_form_bytes = max_form_bytes
        self.max_other_bytes = max_other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        is_form = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.max_form_bytes if is_form else self.max_other_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers to a body cut short (FastAPI: 400, "error parsing the
            # body"), the answer is 413.
            if not exceeded:
                await send(message)

        with suppress(BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded:
            await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps(
            {"detail": f"request body is larger than the limit of {limit:,} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """At most `per_minute` events per subject and minute, counted in the table, so that every
    instance of the API (every Lambda) shares the count."""

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
