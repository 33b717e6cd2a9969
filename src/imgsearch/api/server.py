"""The HTTP server of `imgsearch serve`: uvicorn's h11 protocol with deadlines, a bound on open
connections, and JSON answers for what it refuses itself.

uvicorn closes a connection idle between requests (keep-alive), but not one that sends its
headers or its body a byte at a time (slowloris), nor one that connects and sends nothing; it
accepts every connection; and it answers a malformed request in text/plain. Here:
- a connection that sends nothing for `http_keep_alive_seconds` (new, or between requests) is
  closed; a request's headers must arrive within `http_header_seconds` of their first byte,
  and its body within `http_body_seconds` of the headers (a small body, a vote's, within
  `http_header_seconds`: `_small_body`): else 408;
- a client that does not take its answer (at least `ANSWER_PROGRESS_BYTES` of it, or the
  rest, every `http_answer_seconds`) is dropped with what it was sent; until then it counts
  against the bounds below, and a close after an answer waits for the client to take it
  (dropping what the client still sends); beyond `http_answer_bytes` of answers waiting in
  the process, those that have waited longest without any taken are dropped sooner. This
  deadline runs beside the others: an answer being taken does not suspend the deadline of
  the next request's headers or body;
- beyond `http_max_client_connections` from one address a new connection gets 503 and is
  closed; beyond `http_max_connections` in all, the connection idle longest (or still sending
  its headers after a second) is closed to make room, and only if none is, the new one gets
  503: connections held by many addresses lock no one out;
- a request h11 cannot parse gets 400; every refusal is `{"detail": ...}` and closes.
In the cloud API Gateway does all this, in front of Mangum.

`serve` runs the server in this process; `run_workers` (`http_workers` > 1) in that many
processes listening on one port: a process answers with one core's worth of
Python at most, so on a machine of two cores two processes serve about twice the requests.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import http
import json
import logging
import multiprocessing
import signal
import socket
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Literal

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgsearch.api.guard import FORM_TYPE, media_type_of
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # after a refusal, for the client to read it and stop sending
# Under a full connection table, headers still incomplete after this long make their
# connection one to close for a new client (a real client sends its headers at once).
STALLED_SECONDS = 1.0
# A worker process that ends sooner than this after it started is not started again: it
# would end the same way (a damaged index, a port taken), and the server stops instead.
WORKER_MIN_SECONDS = 10.0
STOP_SECONDS = 30.0  # for a worker to finish its requests and close once told to stop
# A body declared this small (a vote is 16 KB at most) is owed as soon as headers are: 64 KB
# takes 10 s at 52 kbit/s. Without this, a vote begun and never finished held one of the
# server's few body slots (`http_max_bodies`) for the whole upload deadline. Bodies other than
# forms are small however they are sent: the guard holds them to 16 KB (guard.py).
SMALL_BODY_BYTES = 64 * 1024
# A client must take this much of its answer (or the rest of it) every `http_answer_seconds`
# (6.4 KB/s by default): an answer waits in the process's memory until it is taken, and a
# 14 MB original was held whole by each of 140 connections from one address that never read
# (2 GB, and the connections no longer counted), for as long as they stayed open.
ANSWER_PROGRESS_BYTES = 64 * 1024
# glibc raises its mmap threshold to the size of each large block freed (up to 32 MB): after
# that, bodies of megabytes are carved from the heaps of the threads that read them and stay
# there once freed. Five rounds of 16 reverse searches of 24 MB at once left a server at 910
# MB, and at 283-290 MB with the threshold fixed here (docs/reliability.md).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines and a connection bound (module docstring)."""

    # Set on the subclass that `server_config` makes, one per server:
    settings: Settings
    clients: Counter[str]  # open connections per client address

    _deadline: asyncio.TimerHandle | None = None
    _phase: str | None = None  # what the client owes: "idle", "headers" or "body"
    _phase_since = 0.0  # loop time the phase began
    # The answer's deadline, while some of it waits in the transport: it runs beside the
    # phase's, which a client taking its answer slowly must not suspend (a body begun behind
    # it would hold its slot for as long as the answer took).
    _answering: asyncio.TimerHandle | None = None
    _answer_since = 0.0  # loop time the answer's deadline was set
    _written = 0  # bytes written to the connection
    _taken = 0  # of them, those the client had taken when the answer's deadline was set
    _close_when_sent = False  # to linger (close) once the client has taken the answer
    _address: str | None = None  # counted in `clients`
    _socket: asyncio.Transport  # the transport itself, which closes without lingering
    draining = False  # closing: what the client still sends is dropped (see linger)

    # asyncio.Protocol's argument is a BaseTransport; uvicorn's protocol, like this one, needs
    # a Transport (and ignores the same error).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport  # closed directly where nothing is owed
        # The wrapper is not a Transport: it delegates to one all that it does not change.
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        # Counted as clients are (an IPv6 host has a whole network of addresses).
        self._address = ImageSearch.client_network(self.client[0]) if self.client else ""
        self.clients[self._address] += 1
        if self.clients[self._address] > self.settings.http_max_client_connections:
            self._refuse(503, "too many connections from this address; try again in a moment")
        elif len(self.connections) > self.settings.http_max_connections and not self._make_room():
            self._refuse(503, "too many connections; try again in a moment")
        else:
            self._watch()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without asking anything (idle, or
        still sending its headers or not taking its answer after `STALLED_SECONDS`) so that
        this one may be served: connections held open by many addresses at once must not
        lock out every new client (health checks included) until their deadlines pass. False
        if none qualifies."""
        now = self.loop.time()
        stalled = [
            (since, other)
            for other in self.connections
            if isinstance(other, GuardedProtocol)
            and other is not self
            and not other.draining
            and (since := other._stalled_since(now)) is not None
        ]
        if not stalled:
            return False
        _, oldest = min(stalled, key=lambda pair: pair[0])
        if oldest._socket.get_write_buffer_size():
            oldest._drop()  # a close would keep the connection until the answer is taken
        elif oldest._phase == "idle":
            oldest._set_deadline(None)
            oldest._socket.close()  # nothing asked: nothing to answer
        else:
            oldest._refuse(503, "the server is busy and the request's headers were too slow")
        oldest._uncount()
        return True

    def _stalled_since(self, now: float) -> float | None:
        """Since when this connection has waited for its client without anything asked or
        taken (`_make_room`), or None if it does not count as stalled."""
        if self._taking_nothing() and now - self._answer_since > STALLED_SECONDS:
            return self._answer_since
        if self._phase == "idle" or (
            self._phase == "headers" and now - self._phase_since > STALLED_SECONDS
        ):
            return self._phase_since
        return None

    def data_received(self, data: bytes) -> None:
        if self.draining or self._close_when_sent:
            # Closing: what still comes is read and dropped (see linger). h11 would keep it
            # (past an error or a close, without bound) while the answer waits to be taken.
            return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        # This request's body, asked before uvicorn goes on to the next one pipelined (whose
        # body, half in, is owed to its own request).
        unread = self.conn.their_state is h11.SEND_BODY
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            # Answered before its body was read (a refusal, or a route that reads none): the
            # rest of the body is owed to nobody, and waiting for it would let a client hold
            # the connection for the whole body deadline.
            self.transport.close()
            return
        self._watch()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch()  # the client takes its answer slower than it is written
        self._keep_answers_within(self.settings.http_answer_bytes)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._close_when_sent:
            # Not inside the transport's write callback: after it, that shuts our side itself.
            self.loop.call_soon(self._close_if_taken)

    def _close_if_taken(self) -> None:
        """Linger now if a close waits for an answer the client has taken whole."""
        taken = not self._socket.get_write_buffer_size()
        if self._close_when_sent and taken and not self.transport.is_closing():
            self.linger(self._socket)

    def _keep_answers_within(self, budget: int) -> None:
        """Drop the connections that have taken none of their answers, longest waiting first,
        while the answers waiting in this process pass `budget` bytes: within the answer
        deadline, 210 connections from 7 addresses asking for a 14 MB original held 2.4 GB."""
        connections = [other for other in self.connections if isinstance(other, GuardedProtocol)]
        waiting = sum(other._socket.get_write_buffer_size() for other in connections)
        if waiting <= budget:
            return
        stalled = [other for other in connections if other._taking_nothing()]
        for other in sorted(stalled, key=lambda other: other._answer_since):
            if waiting <= budget:
                break
            waiting -= other._socket.get_write_buffer_size()
            other._drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        self._stop_answer_deadline()
        self._uncount()
        super().connection_lost(exc)

    def _uncount(self) -> None:
        """No longer count this connection against the bounds (it closed, or is closing)."""
        self.connections.discard(self)
        if self._address is not None:
            self.clients[self._address] -= 1
            if not self.clients[self._address]:
                del self.clients[self._address]
            self._address = None

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what h11 cannot parse, as the API answers everything else.
        self._refuse(400, "malformed HTTP request")

    def _watch(self) -> None:
        """Keep deadlines on what the client owes: a first byte, the headers or the body;
        and, beside them, on taking the answer that waits for it."""
        ended = self.transport.is_closing()
        # Even if asyncio closes the transport (the client ended its side): its close keeps
        # what waits to be sent until the client takes it, however long that is.
        unsent = self._socket.get_write_buffer_size() > 0
        if ended or self._close_when_sent:
            phase = None  # nothing more is read from the client
        elif self.conn.their_state is h11.SEND_BODY:
            phase = "body"
        elif self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            phase = "headers"
        elif self.conn.their_state is h11.IDLE and not unsent:
            phase = "idle"
        else:  # the request is in (the app's time is not limited here), or an answer waits
            phase = None
        if phase != self._phase:
            self._set_deadline(phase)
        if unsent and self._answering is None:
            self._taken = self._taken_now()
            self._answer_since = self.loop.time()
            seconds = self.settings.http_answer_seconds
            self._answering = self.loop.call_later(seconds, self._answer_expired)
        elif not unsent and not self._close_when_sent:
            self._stop_answer_deadline()  # taken: the next answer is timed from its start

    def _set_deadline(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, phase
        self._phase_since = self.loop.time()
        if phase is not None:
            self._deadline = self.loop.call_later(self._seconds(phase), self._expired)

    def _stop_answer_deadline(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
            self._answering = None

    def _seconds(self, phase: str) -> float:
        settings = self.settings
        if phase == "body" and self._small_body():
            return settings.http_header_seconds
        return {
            "idle": settings.http_keep_alive_seconds,
            "headers": settings.http_header_seconds,
            "body": settings.http_body_seconds,
        }[phase]

    def _small_body(self) -> bool:
        """Whether the body of the request being received is small: declared no larger than
        SMALL_BODY_BYTES, or not a form (chunked, a form may be of any size up to its limit;
        anything else passes the guard only up to 16 KB)."""
        scope = getattr(self, "scope", None)
        # Repeated, these headers are refused by the guard before any body is read.
        headers = dict(scope["headers"]) if scope else {}
        declared = headers.get(b"content-length", b"")
        if declared.isdigit():
            return int(declared) <= SMALL_BODY_BYTES
        return media_type_of(headers.get(b"content-type", b"").decode("latin-1")) != FORM_TYPE

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing() or phase is None:
            return
        if phase == "idle":
            self._socket.close()  # nothing asked: nothing to answer, nothing to drain
            return
        self._refuse(408, f"the request's {phase} took longer than {self._seconds(phase):g} s")

    def _answer_expired(self) -> None:
        self._answering = None
        if self.draining:
            return  # the answer was taken
        unsent = self._socket.get_write_buffer_size()
        if unsent and self._taken_now() - self._taken < ANSWER_PROGRESS_BYTES:
            self._drop()  # the client is not taking its answer
        elif not unsent and self._close_when_sent:
            self.linger(self._socket)
        else:  # taken, or being taken fast enough: watch what comes next
            self._watch()

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
        self.transport.close()

    def _taken_now(self) -> int:
        """Bytes written that the client has taken: neither waiting in the transport nor in
        the kernel's send queue (which grows to megabytes, and frees room in large steps)."""
        return self._written - self._socket.get_write_buffer_size() - _queued(self._socket)

    def _taking_nothing(self) -> bool:
        """Whether an answer waits and the client has taken none of it since its deadline
        was set."""
        return self._answering is not None and self._taken_now() == self._taken

    def _drop(self) -> None:
        """Close now, with what the client has not taken (asyncio's close would keep it, and
        the connection, until the client takes it all, however long that is)."""
        self._set_deadline(None)
        self._stop_answer_deadline()
        self._uncount()
        self._socket.abort()  # connection_lost tells the app, if it still sends

    def linger(self, transport: asyncio.Transport) -> None:
        """Close `transport` without losing what was written to it.

        Closing at once with the client's bytes unread (a body refused before it was read)
        would reset the connection, and the client could lose the answer: end our side and
        drop what still comes for a moment instead. An answer the client has not taken yet is
        waited for first, under the answer's deadline, and counts against the bounds until
        it is taken."""
        if self.draining or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        if transport.get_write_buffer_size():
            self._close_when_sent = True
            self._watch()
            # resume_writing once all of it is taken, not once most of it is: then close
            transport.set_write_buffer_limits(high=0)
            return
        self._set_deadline(None)
        self._stop_answer_deadline()
        self.draining = True
        self._uncount()  # served: a refused flood must not crowd out the next clients
        try:
            transport.write_eof()
        except OSError:  # the client is gone already: nothing to linger for
            transport.abort()
            return
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, transport.close)


def _queued(transport: asyncio.Transport) -> int:
    """Bytes the kernel holds for the peer to acknowledge (Linux's SIOCOUTQ); 0 elsewhere."""
    sock = transport.get_extra_info("socket")
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except (OSError, AttributeError, ValueError):  # closed, or no such request here
        return 0
    return int.from_bytes(queued, sys.byteorder, signed=True)


class _LingeringTransport:
    """The connection's transport as the protocol sees it: every close lingers (`linger`),
    since the client may still be sending, and while it lingers the transport is closing."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self.socket = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.linger(self.socket)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._protocol._written += len(data)
        self.socket.write(data)

    def is_closing(self) -> bool:
        return self._protocol.draining or self.socket.is_closing()

    def __getattr__(self, name: str) -> object:
        return getattr(self.socket, name)


def server_config(
    app: ASGIApp,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str | None = None,
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> uvicorn.Config:
    """uvicorn's configuration for `app` with the guarded protocol and `settings`' bounds;
    the keyword arguments are uvicorn's (with its defaults)."""
    bounds = {"settings": settings, "clients": Counter()}
    protocol = type("GuardedProtocol", (GuardedProtocol,), bounds)
    return uvicorn.Config(
        app,
        http=protocol,
        backlog=settings.http_backlog,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        # uvicorn would otherwise take X-Forwarded-For from 127.0.0.1 as the client; who a
        # client is must be decided by one rule (clients.py, `trusted_proxies`).
        proxy_headers=False,
        # The API speaks no WebSocket: with a WebSocket library installed, uvicorn would hand
        # an upgrade to its own protocol, outside these bounds (its address counted for good).
        ws="none",
        host=host,
        port=port,
        log_level=log_level,
        lifespan=lifespan,
    )


def give_back_large_blocks() -> None:
    """Every allocation of MMAP_THRESHOLD_BYTES or more its own mapping, returned to the
    system once freed (glibc's malloc; with another C library nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such function, or no C library to ask
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def serve(service: ImageSearch, *, host: str, port: int, web_dir: Path | None) -> None:
    """Serve the API (and the page from `web_dir`) in this process until interrupted; the
    service, loaded and checked (`check_at_start`), is closed at the end."""
    from imgsearch.api.app import create_app  # the app imports what the server does not

    give_back_large_blocks()
    try:
        app = create_app(service, web_dir=web_dir)
        config = server_config(app, service.settings, host=host, port=port, log_level="warning")
        uvicorn.Server(config).run()
    finally:
        service.close()  # its decode workers, its background writer


def run_workers(
    settings: Settings, *, host: str, port: int, web_dir: Path | None, workers: int
) -> None:
    """`workers` server processes listening on one port, each with its own engine on the
    same collection, until SIGINT or SIGTERM; a worker that ends is started again (unless it
    ended at once: then all stop, and this raises SystemExit).

    What one process does alone is safe across processes: builds are serialised by the
    index lease, stored files by their locks, SQLite by its own; each process follows the
    index's publications (`refresh_interval`, 2 s) and vote summaries (`feedback_cache_
    seconds`) as the cloud's instances do. The bounds of `server_config` (connections, bodies)
    hold per process. Only the first worker recovers what a crash left and drains the queue
    in the background (`recover_in_background`)."""
    # Each worker listens on a socket of its own on the port (SO_REUSEPORT), so that the
    # kernel spreads new connections over them: on one shared socket the first worker awake
    # accepts every connection waiting, and keep-alive clients stay with it. This one, bound
    # and never listening, holds the port (another server cannot take it meanwhile) and
    # finds it taken before any worker starts.
    holder = _port_socket(host, port)
    port = holder.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # no threads or connections inherited

    def start(number: int) -> tuple[multiprocessing.process.BaseProcess, float]:
        process = context.Process(
            target=_serve_process,
            args=(settings, host, port, web_dir, number),
            name=f"imgsearch-http-{number}",
        )
        process.start()
        return process, time.monotonic()

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    running = [start(number) for number in range(workers)]
    try:
        while not stopping.wait(0.5):
            for number, (process, started) in enumerate(running):
                if process.is_alive():
                    continue
                if time.monotonic() - started < WORKER_MIN_SECONDS:
                    raise SystemExit(f"imgsearch: server worker {number} ended at its start")
                code = process.exitcode
                log.error("server worker %d ended (%s); starting it again", number, code)
                running[number] = start(number)
    finally:
        for process, _ in running:
            process.terminate()  # SIGTERM: uvicorn finishes its requests, then closes
        for process, _ in running:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        holder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_process(
    settings: Settings,
    host: str,
    port: int,
    web_dir: Path | None,
    number: int,
) -> None:
    """Worker `number` of `run_workers`: its engine, loaded and checked, and uvicorn on a
    socket of its own on the shared port."""
    from imgsearch.api.app import create_app  # the app imports what the server does not

    give_back_large_blocks()
    service = ImageSearch(settings)
    try:
        service.check_at_start()  # loads the index, verified, before the first request
        if number == 0:
            service.recover_in_background()  # what a crash left: finished while serving
        app = create_app(service, web_dir=web_dir)
        config = server_config(app, settings, host=host, port=port, log_level="warning")
        # Listening once uvicorn serves (asyncio listens on it then): until that, the kernel
        # gives new connections to the workers already serving.
        uvicorn.Server(config).run(sockets=[_port_socket(host, port)])
    finally:
        service.close()  # its decode workers, its background writer


def _port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (`host`, `port`) that other processes of this user may bind too
    (SO_REUSEPORT); port 0 picks a free one."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    bound = socket.socket(family, kind, protocol)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    bound.bind(address)
    return bound
