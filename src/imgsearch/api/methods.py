"""The methods a path takes, as HTTP asks: HEAD wherever GET is, and a 405's `Allow` naming
every method the path takes.

FastAPI's routes and the fast routes (api/fast.py) take GET alone: `HeadAsGet` makes each
answer HEAD too. Starlette's 405 names the methods of the first route matching the path only
(`PUT /api/images` would be told `Allow: POST`, though the path takes GET too): `allowed`
names those of all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Answers HEAD with the status and headers of the GET answer and no body: the app answers
    a GET, and its body is dropped here (a server or a Lambda adapter need not know to)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def allowed(routes: Sequence[BaseRoute], scope: Scope) -> str | None:
    """The `Allow` of a 405 at the request's path: the methods of every route there (HEAD with
    GET), or None if no route with methods matches it (a mount answers its own 405)."""
    methods: set[str] = set()
    for route in iter_route_contexts(routes):  # an included router's routes too
        if route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) or None
