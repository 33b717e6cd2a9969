"""The HTTP server of `imgsearch serve`: uvicorn's h11 protocol with deadlines, a bound on open
connections, and JSON answers for what it refuses itself.

uvicorn closes a connection idle between requests (keep-alive), but not one that sends its
headers or its body a byte at a time (slowloris), nor one that connects and sends nothing; it
accepts every connection; and it answers a malformed request in text/plain. Here:
- a request's headers must arrive within `http_header_seconds` of the connection opening (or
  of the previous response), and its body within `http_body_seconds` of the headers: else 408
  (or, if nothing of a request came, the connection is closed without a word);
- beyond `http_max_connections` open connections a new one gets 503 and is closed;
- a request h11 cannot parse gets 400; every refusal is `{"detail": ...}` and closes.
In the cloud API Gateway does all this, in front of Mangum.
"""

from __future__ import annotations

import asyncio
import http
import json

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgsearch.config import Settings

LINGER_SECONDS = 2.0  # after a refusal, for the client to read it and stop sending


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines and a connection bound (module docstring)."""

    settings: Settings  # set on the subclass that `server_config` makes

    _deadline: asyncio.TimerHandle | None = None
    _phase: str | None = None  # what the deadline is for: "headers" or "body"
    _draining = False  # refused and closing: see _refuse

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.http_max_connections:
            self._refuse(503, "too many connections; try again in a moment")
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # refused: what still comes is read and dropped (see _refuse)
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what h11 cannot parse, as the API answers everything else.
        self._refuse(400, "malformed HTTP request")

    def _watch(self) -> None:
        """Keep a deadline on the part of a request the client owes: its headers or body."""
        if self.transport.is_closing() or self._draining:
            phase = None
        elif self.conn.their_state is h11.IDLE:
            phase = "headers"
        elif self.conn.their_state is h11.SEND_BODY:
            phase = "body"
        else:  # the request is in: the app's time is not limited here
            phase = None
        if phase != self._phase:
            self._set_deadline(phase)

    def _set_deadline(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, phase
        if phase is not None:
            seconds = (
                self.settings.http_header_seconds
                if phase == "headers"
                else self.settings.http_body_seconds
            )
            self._deadline = self.loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        started, _ = self.conn.trailing_data  # bytes of headers received but not yet parsed
        if phase == "headers" and not started:
            self.transport.close()  # nothing asked: nothing to answer
            return
        seconds = self.settings.http_header_seconds
        if phase == "body":
            seconds = self.settings.http_body_seconds
        self._refuse(408, f"the request's {phase} took longer than {seconds:g} s")

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail (unless a response has begun) and close."""
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            body = json.dumps({"detail": detail}).encode()
            head = (
                f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        if cycle is not None and not cycle.response_complete:
            # The app, if it still runs, reads a disconnect and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        # Closing at once with the client's bytes unread would reset the connection, and the
        # client could lose the answer: end our side, drop what still comes for a moment.
        self._set_deadline(None)
        self._draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def server_config(app: ASGIApp, settings: Settings, **options: object) -> uvicorn.Config:
    """uvicorn's configuration for `app` with the guarded protocol and `settings`' bounds;
    `options` are passed on (host, port, log_level ...)."""
    protocol = type("GuardedProtocol", (GuardedProtocol,), {"settings": settings})
    return uvicorn.Config(
        app,
        http=protocol,
        backlog=settings.http_backlog,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        **options,
    )
