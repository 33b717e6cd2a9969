"""The GET routes asked most, answered without FastAPI's routing, dependency solving and
parameter validation when a request is plainly valid.

A "more like this" page not kept costs about a millisecond of the engine's time, and the
framework's path to it (matching the path against every route, solving the route's
parameters, the exception and exit-stack middleware) about a fifth as much again
(bench/http_throughput.py, docs/performance.md). `FastRoutes` sits inside the app's own
middleware (RequestGuard's checks, the security headers and compression still apply to
every answer) and answers a GET whose path and query it reads at once, with the route's own
function: the same bytes and headers as through FastAPI. Anything else goes to the app as
before: a path or query it does not read plainly (another parameter, a repeated one, a
number with a sign or a leading zero, a value out of range: FastAPI answers 422 as it always
did) and a root path. An error the answer raises is answered by the app's own handler for it
(a 404, a 429), not by asking the engine again; one with no handler but the catch-all is
raised on, to the server-error middleware that answers and logs it (where Starlette sends
it from any route).

The route declared with FastAPI stays: it is what OpenAPI documents, and what answers when
this does not.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

# A whole number as a client writes it plainly: no sign, no leading zero, no spaces; a few
# digits (every integer parameter of a fast route is bounded far below this).
_NUMBER = re.compile(r"0|[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class IntParam:
    """An integer query parameter: its default and its bounds (both included), as the
    FastAPI route declares them."""

    default: int
    low: int
    high: int


@dataclass(frozen=True)
class FastRoute:
    """`path` (a regular expression matched whole against the request's path after the
    API's prefix; its named groups are the path parameters, each as FastAPI would validate
    it) answered by `answer(request, **params)` with the integer query parameters `query`."""

    path: str
    query: Mapping[str, IntParam]
    answer: Callable[..., Awaitable[Response]]

    def params(self, found: re.Match[str], query_string: bytes) -> dict[str, str | int] | None:
        """The route's arguments for the path `found` (its match) and this query, or None if
        this route does not read them plainly (the app then answers)."""
        params: dict[str, str | int] = dict(found.groupdict())
        values = {name: spec.default for name, spec in self.query.items()}
        given: set[str] = set()
        if query_string:
            try:
                text = query_string.decode("ascii")
            except UnicodeDecodeError:
                return None
            for pair in text.split("&"):
                name, equals, value = pair.partition("=")
                spec = self.query.get(name)
                if spec is None or not equals or name in given or not _NUMBER.fullmatch(value):
                    return None
                number = int(value)
                if not spec.low <= number <= spec.high:
                    return None
                given.add(name)
                values[name] = number
        params.update(values)
        return params


ExceptionHandler = Callable[[Request, Exception], Any]


class FastRoutes:
    """Answers the requests `routes` (their paths under `prefix`) read plainly, and the errors
    their answers raise with `handlers` (the app's, by exception type); passes every other
    request to `app` (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        routes: tuple[FastRoute, ...],
        handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        self.app = app
        self.routes = [(re.compile(re.escape(prefix) + route.path), route) for route in routes]
        self.handlers = handlers

    def _handler(self, error: Exception) -> ExceptionHandler | None:
        """The handler of `error` as Starlette's exception middleware looks it up: an HTTP
        error's status first, then its class or its nearest base, short of `Exception` (the
        catch-all belongs to the server-error middleware)."""
        if isinstance(error, HTTPException) and error.status_code in self.handlers:
            return self.handlers[error.status_code]
        for cls in type(error).__mro__:
            if cls is Exception:
                break
            if cls in self.handlers:
                return self.handlers[cls]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            for path, route in self.routes:
                found = path.fullmatch(scope["path"])
                if found is None:
                    continue
                params = route.params(found, scope.get("query_string", b""))
                if params is None:
                    break
                request = Request(scope, receive)
                try:
                    response = await route.answer(request, **params)
                except Exception as error:
                    handler = self._handler(error)
                    if handler is None:
                        raise
                    if inspect.iscoroutinefunction(handler):
                        response = await handler(request, error)
                    else:
                        response = await run_in_threadpool(handler, request, error)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
