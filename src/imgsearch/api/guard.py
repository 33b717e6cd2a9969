"""What every request must be before the app parses it, and what every answer carries.

`RequestGuard` refuses, with a JSON `{"detail": ...}` and before the body is read:
- an HTTP version no client speaks (400: h11 takes any `HTTP/d.d`);
- headers over 16 KB (431);
- a header that must be single but is repeated (400): the parser reads the first copy, and a
  limit must never be decided from another one;
- a body over its limit (413): multipart forms (files) up to `max_form_bytes`, any other body
  (JSON) up to `max_other_bytes`, by the declared Content-Length or while the body streams in;
- a body beyond the `max_bodies` being received at once, or beyond `max_client_bodies` from
  one client (503): one address holding every slot with bodies it never finishes would
  otherwise refuse everyone's votes and uploads until their deadline;
- JSON that Python reads but JSON does not allow (422): NaN, Infinity, numbers out of range,
  lone surrogates, nesting deeper than Python can walk.

`SecurityHeaders` adds a Content-Security-Policy and its companions to every answer.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import suppress

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The client a request counts against, from its peer's address and X-Forwarded-For values.
ClientOf = Callable[[str | None, list[str]], str]

# Headers a request may hold once: two Content-Types once let a body past its limit (the
# limit read one copy, the parser the other).
SINGLE_HEADERS = frozenset(
    {
        b"authorization",
        b"content-encoding",
        b"content-length",
        b"content-type",
        b"host",
        b"origin",
        b"transfer-encoding",
        b"x-api-key",
    }
)
# h11 takes any HTTP/d.d request line; versions no client speaks are refused, not guessed at.
HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "2.0"})
# h11 refuses headers over 16 KB only while they arrive in pieces: one read can hold more.
MAX_HEADER_BYTES = 16 * 1024
FORM_TYPE = "multipart/form-data"  # as Starlette compares it
RETRY_AFTER_SECONDS = 1


class BodyTooLarge(Exception):
    pass


async def send_refusal(
    send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer `status` with `{"detail": detail}` (the format of every error of the API)."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Refuse what the parser must never see (module docstring), before it reads a byte."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_form_bytes: int,
        max_other_bytes: int,
        max_bodies: int,
        max_client_bodies: int,
        client_of: ClientOf,
    ) -> None:
        self.app = app
        self.max_form_bytes = max_form_bytes
        self.max_other_bytes = max_other_bytes
        self.max_bodies = max_bodies
        self.max_client_bodies = max_client_bodies
        self.client_of = client_of
        # Being received now, in all and per client (one event loop: no lock needed).
        self.bodies = 0
        self.client_bodies: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)  # what Starlette's parsers read
        media_type = media_type_of(headers.get("content-type", ""))
        limit = self.max_form_bytes if media_type == FORM_TYPE else self.max_other_bytes
        if refusal := _refusal(scope, headers, limit):
            await send_refusal(send, *refusal)
            return
        if "transfer-encoding" not in headers and headers.get("content-length", "0") == "0":
            await self.app(scope, receive, send)  # no body
            return
        peer = scope["client"][0] if scope.get("client") else None
        client = self.client_of(peer, headers.getlist("x-forwarded-for"))
        if self.bodies >= self.max_bodies or self.client_bodies[client] >= self.max_client_bodies:
            busy = "" if self.bodies >= self.max_bodies else " from this address"
            await send_refusal(
                send,
                503,
                f"too many requests sending bodies at once{busy}; try again in a moment",
                [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
            )
            return
        self.bodies += 1
        self.client_bodies[client] += 1
        try:
            if not is_json(media_type):
                await self._streamed(scope, receive, send, limit)
                return
            body = await self._json_body(receive, send, limit)
        finally:
            self.bodies -= 1
            self.client_bodies[client] -= 1
            if not self.client_bodies[client]:
                del self.client_bodies[client]  # else every address ever seen stays
        if body is not None:  # small, and read whole: its slot is free for the next body
            await self.app(scope, _replaying(body, receive), send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Pass the body on as it arrives, counting it: 413 once it passes `limit`."""
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
            await send_refusal(send, *_too_large(limit))

    async def _json_body(self, receive: Receive, send: Send, limit: int) -> bytes | None:
        """The (small) JSON body read whole and checked as JSON; None if the client left or
        was refused."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client left: nobody to answer
            body += message.get("body", b"")
            if len(body) > limit:
                await send_refusal(send, *_too_large(limit))
                return None
            if not message.get("more_body", False):
                break
        if problem := json_problem(bytes(body)):
            await send_refusal(send, 422, f"invalid JSON: {problem}")
            return None
        return bytes(body)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app once the body was read: the body, then what the client sends."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # after the body: only a disconnect can come
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _refusal(scope: Scope, headers: Headers, limit: int) -> tuple[int, str] | None:
    """The status and reason to refuse a request for by its headers alone, if any."""
    raw = scope["headers"]
    if scope.get("http_version", "1.1") not in HTTP_VERSIONS:
        return 400, f"HTTP/{scope['http_version']} is not supported; send HTTP/1.1"
    if sum(len(name) + len(value) for name, value in raw) > MAX_HEADER_BYTES:
        return 431, f"request headers are larger than the limit of {MAX_HEADER_BYTES:,} bytes"
    if repeated := repeated_headers(raw):
        return 400, f"repeated headers: {', '.join(sorted(repeated))} may be sent only once"
    declared = headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        return 400, "Content-Length must be a number of bytes"
    if declared is not None and int(declared) > limit:
        return _too_large(limit)
    return None


def media_type_of(content_type: str) -> str:
    """The media type of a Content-Type value, as Starlette's parsers read it."""
    return parse_options_header(content_type)[0].decode("latin-1")


def repeated_headers(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    counts = Counter(name.lower() for name, _ in headers)
    return {name.decode() for name, count in counts.items() if count > 1 and name in SINGLE_HEADERS}


def is_json(media_type: str) -> bool:
    """Whether FastAPI parses a body of this type as JSON (application/json or .../*+json)."""
    main, _, sub = media_type.lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def json_problem(body: bytes) -> str | None:
    """Why `body` is not JSON the API can hold, or None if it is (or is not JSON at all: the
    parser then says so itself)."""
    if not body.strip():
        return None
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotJson as error:
        return str(error)
    except RecursionError:
        return "nested too deeply"
    except json.JSONDecodeError:
        return None  # malformed: FastAPI answers 422 with where
    except ValueError as error:  # an integer of thousands of digits
        return str(error)[:100]
    if not _encodable(value):
        return "a string holds a lone surrogate (\\ud800-\\udfff), which is not text"
    return None


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJson(f"{text[:40]} is out of range")
    return number


def _encodable(value: object) -> bool:
    """Whether every string in `value` can be encoded as UTF-8 (iteratively: no recursion)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def _too_large(limit: int) -> tuple[int, str]:
    return 413, f"request body is larger than the limit of {limit:,} bytes"


def _common_policy(page_origins: list[str], scripts: tuple[str, ...]) -> str:
    sources = " ".join(["'self'", *page_origins])
    scripts_from = " ".join(["'self'", *scripts])
    return (
        f"default-src 'self'; script-src {scripts_from}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'; "
        f"img-src {sources} data: blob:; connect-src {sources}"
    )


def page_policy(
    page_origins: list[str], scripts: tuple[str, ...] = (), styles: tuple[str, ...] = ()
) -> str:
    """The page's Content-Security-Policy: its own scripts and styles only, and the inline
    ones whose hashes are `scripts` and `styles` ('sha256-...': what the page server put in
    index.html)."""
    styles_from = " ".join(["'self'", *styles])
    return f"{_common_policy(page_origins, scripts)}; style-src {styles_from}"


class SecurityHeaders:
    """A Content-Security-Policy on every answer, with nosniff, no referrer and no framing.

    The page runs only its own scripts and styles (no inline code), talks to its own origin
    and `page_origins`, and shows images from them, data: (the icon) and blob: (the photo
    searched with). The API docs (Swagger UI, ReDoc) also need inline styles and a blob:
    worker; their scripts too are served by the app (`imgsearch.api.docs`).
    """

    def __init__(self, app: ASGIApp, *, page_origins: list[str], docs_paths: set[str]) -> None:
        self.app = app
        self.docs_paths = docs_paths
        self.page_policy = page_policy(page_origins).encode()
        common = _common_policy(page_origins, ())
        self.docs_policy = f"{common}; style-src 'self' 'unsafe-inline'; worker-src blob:".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.docs_policy if scope["path"] in self.docs_paths else self.page_policy

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [
                    (name, value)
                    for name, value in (
                        (b"content-security-policy", policy),
                        (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"no-referrer"),
                        (b"x-frame-options", b"DENY"),
                    )
                    if name not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, with_headers)
