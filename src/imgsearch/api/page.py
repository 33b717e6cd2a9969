"""The page as browsers get it: web/ built once, in Python (no Node, no network), the first
time it is asked for.

- The ES modules become one script (`bundle_modules`), named by a hash of its content, so it
  is cached as immutable: no chain of imports, one request instead of twenty.
- Served by the app (`inline=True`), index.html carries the stylesheet and boot.js inline
  (their hashes go in its Content-Security-Policy) and, filled per request, the start view's
  first answers (`START_DATA`): the page needs one round trip before its first thumbnails
  are asked for, not three. config.js stays a file (deployments and tests replace it).
- Built for a static host (`inline=False`: CloudFront, whose policy allows no inline code),
  the stylesheet and boot script are hashed files too and config.js stays a file.
- Every text file is kept gzip-compressed at the highest level too.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

ENTRY_MODULE = "main.js"
# Where the app puts the start view's answers (a JSON data block, never run as a script).
START_DATA = "<!--start-data-->"
# What the start view asks for first (as boot.js asks: pages.js's PAGE, stacks.js's MOST).
START_PATHS = ("/images?limit=48&offset=0", "/explore", "/duplicates?limit=200&offset=0")
START_ANSWER_SECONDS = 0.5  # the page waits no longer for one: api.js asks for it then
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
COMPRESSED_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")

_IMPORT = re.compile(
    r'^import\s+(?:\{(?P<names>[^}]*)\}|\*\s+as\s+(?P<star>[\w$]+))\s+from\s+"\./(?P<path>[\w.-]+)";'
    r"[ \t]*$",
    re.M,
)
_EXPORT = re.compile(
    r"^export\s+(?:(?:async\s+)?function\*?\s+(?P<function>[\w$]+)|(?:const|let|class)\s+"
    r"(?P<binding>[\w$]+))",
    re.M,
)
_ANY_IMPORT_OR_EXPORT = re.compile(r"^(?:import|export)\b", re.M)
# A line of nothing but a comment (a block comment may span lines; it ends at its own first
# "*/", never at a later one).
_LINE_COMMENTS = re.compile(r"^[ \t]*(?://[^\n]*|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/[ \t]*)$", re.M)


class BuildError(ValueError):
    """web/ holds something the builder does not handle (a construct, a cycle)."""


@dataclass(frozen=True)
class Asset:
    """One file of the built page: its bytes, gzipped bytes (None where it does not pay),
    type and caching."""

    body: bytes
    gzipped: bytes | None
    media_type: str
    cache_control: str


@dataclass(frozen=True)
class Page:
    """The built page: files by path from the root ("index.html", "js/app.<hash>.js"), and
    the CSP sources index.html's inline scripts and styles need ('sha256-...'; none when not
    inline)."""

    files: dict[str, Asset]
    inline_scripts: tuple[str, ...] = ()
    inline_styles: tuple[str, ...] = ()


def bundle_modules(js_dir: Path, entry: str = ENTRY_MODULE) -> str:
    """The modules `entry` imports (and so on), as one script: each module's body in a
    function of its own (its names stay its own), run in the order the browser would
    evaluate them (dependencies first), its exports returned as an object its importers
    take their names from. Handles the forms web/js uses: `import {a, b as c} from "./x.js"`,
    `import * as x from "./x.js"`, `export function|async function|const|let|class`."""
    order: list[str] = []
    visiting: set[str] = set()
    sources: dict[str, str] = {}

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise BuildError(f"{name}: imports form a cycle")
        visiting.add(name)
        sources[name] = (js_dir / name).read_text(encoding="utf-8")
        for match in _IMPORT.finditer(sources[name]):
            visit(match["path"])
        visiting.discard(name)
        order.append(name)

    visit(entry)
    return "\n".join(_wrapped(name, _trimmed(sources[name])) for name in order) + "\n"


def _trimmed(source: str) -> str:
    """`source` without whole-line comments, indentation and blank lines: a quarter fewer
    bytes (a third before compression), meaning untouched (web/js puts no comment markers at
    the start of a line of a string)."""
    source = _LINE_COMMENTS.sub("", source)
    return "\n".join(line.strip() for line in source.splitlines() if line.strip())


def _module_variable(name: str) -> str:
    return "module_" + re.sub(r"\W", "_", name.removesuffix(".js"))


def _wrapped(name: str, source: str) -> str:
    def imported(match: re.Match[str]) -> str:
        module = _module_variable(match["path"])
        if match["star"]:
            return f"const {match['star']} = {module};"
        names = [part.split(" as ") for part in match["names"].replace("\n", " ").split(",")]
        bound = ", ".join(
            f"{pair[0].strip()}: {pair[1].strip()}" if len(pair) == 2 else pair[0].strip()
            for pair in names
            if pair[0].strip()
        )
        return f"const {{ {bound} }} = {module};"

    body = _IMPORT.sub(imported, source)
    exports = [m["function"] or m["binding"] for m in _EXPORT.finditer(body)]
    body = _EXPORT.sub(lambda m: m[0].removeprefix("export").lstrip(), body)
    if _ANY_IMPORT_OR_EXPORT.search(body):
        raise BuildError(f"{name}: an import or export the bundler does not handle")
    return (
        f"// {name}\nconst {_module_variable(name)} = (() => {{\n{body}\n"
        f"return {{ {', '.join(exports)} }};\n}})();"
    )


def build_page(web_dir: Path, *, inline: bool, config_js: str | None = None) -> Page:
    """web/ built (see the module's docstring); `config_js` replaces web/config.js."""
    texts = {
        path.relative_to(web_dir).as_posix(): path.read_bytes()
        for path in sorted(web_dir.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(web_dir).as_posix()
    }
    if config_js is not None:
        texts["config.js"] = config_js.encode()
    bundle = bundle_modules(web_dir / "js").encode()
    module = f"js/app.{_digest(bundle)}.js"
    built = {module: bundle}
    html = texts["index.html"].decode()
    # The modules are one script now: their preloads (and the comments about them) go.
    html = re.sub(r"[ \t]*<!--[^\n]*-->\n(?=[ \t]*<link rel=\"modulepreload\")", "", html)
    html = re.sub(r'[ \t]*<link rel="modulepreload" href="[^"]+">\n', "", html)
    html = _replaced(html, '"js/main.js"', f'"{module}"')
    inline_code: dict[str, list[bytes]] = {"script": [], "style": []}
    if inline:
        config = '<script src="config.js"></script>'
        for tag, path, kind, before, after in (
            ('<link rel="stylesheet" href="style.css">', "style.css", "style", "", ""),
            (config, "config.js", "", "", ""),
            # The start view's answers come before boot.js, which reads them; config.js
            # (a file: deployments and tests replace it) after, for the page's script: boot
            # needs it only where the answers are not in the page.
            ('<script src="js/boot.js"></script>', "js/boot.js", "script", START_DATA, config),
        ):
            if not kind:
                html = _replaced(html, tag, "")
                continue
            code = texts[path]
            inline_code[kind].append(code)
            html = _replaced(html, tag, f"{before}<{kind}>{code.decode()}</{kind}>{after}")
    else:
        for path in ("style.css", "js/boot.js"):
            stem, extension = path.rsplit(".", 1)
            name = f"{stem}.{_digest(texts[path])}.{extension}"
            built[name] = texts[path]
            html = _replaced(html, f'"{path}"', f'"{name}"')
    texts["index.html"] = html.encode()
    files = {path: _asset(path, body, REVALIDATE) for path, body in texts.items()}
    files.update({path: _asset(path, body, IMMUTABLE) for path, body in built.items()})
    return Page(
        files=files,
        inline_scripts=tuple(map(_csp_hash, inline_code["script"])),
        inline_styles=tuple(map(_csp_hash, inline_code["style"])),
    )


def _replaced(html: str, old: str, new: str) -> str:
    if html.count(old) != 1:
        raise BuildError(f"index.html: expected {old!r} once")
    return html.replace(old, new)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _csp_hash(code: bytes) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(code).digest()).decode()}'"


def _asset(path: str, body: bytes, cache_control: str) -> Asset:
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type == "application/javascript":
        media_type += "; charset=utf-8"
    gzipped = None
    if media_type.startswith(COMPRESSED_TYPES) and len(body) > 500:
        gzipped = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(body, gzipped, media_type, cache_control)


def write_page(page: Page, into: Path) -> None:
    """The built page's files under `into` (for a static host)."""
    for path, asset in page.files.items():
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(asset.body)


class PageServer:
    """An ASGI app serving the page built from `web_dir` (inline, built on the first request)
    from memory: gzipped where the client accepts it, hashed files cached as immutable, the
    others revalidated by ETag; index.html with the start view's answers from `api` (the
    app itself, asked in-process: the same routes, presenters and limits as over HTTP).
    `policy(page)` is the Content-Security-Policy for index.html with its inline code."""

    def __init__(self, api: ASGIApp, web_dir: Path, policy: Callable[[Page], str]):
        self._api = api
        self._web_dir = web_dir
        self._policy = policy
        self._built: Page | None = None

    def page(self) -> Page:
        if self._built is None:  # two first requests at once build it twice: same result
            self._built = build_page(self._web_dir, inline=True)
        return self._built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        page = await run_in_threadpool(self.page) if self._built is None else self._built
        path = request.url.path.lstrip("/")
        if path == "" or path.endswith("/"):
            path += "index.html"
        asset = page.files.get(path)
        response: Response
        if asset is None:  # whatever the method: there is nothing here to allow it on
            response = JSONResponse({"detail": "Not Found"}, status_code=404)
        elif request.method not in ("GET", "HEAD"):
            response = JSONResponse(
                {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, HEAD"}
            )
        elif path == "index.html":
            response = await self._index(request, asset, page)
        else:
            response = _static(request, asset)
        await response(scope, receive, send)

    async def _index(self, request: Request, asset: Asset, page: Page) -> Response:
        html = asset.body.decode()
        answers = {} if request.url.query else await self._start_answers(request.scope)
        # No "<" at all in the data block: neither "</script>" nor "<!--" in a key or a word
        # can end it or change how the parser reads it.
        data = json.dumps(answers, separators=(",", ":")).replace("<", "\\u003c")
        html = html.replace(
            START_DATA, f'<script id="start-data" type="application/json">{data}</script>'
        )
        headers = {
            "Cache-Control": REVALIDATE,
            "Content-Security-Policy": self._policy(page),
        }
        return Response(html, media_type=asset.media_type, headers=headers)

    async def _start_answers(self, scope: Scope) -> dict[str, object]:
        """The start view's answers (boot.js's paths), each if it came within
        START_ANSWER_SECONDS (else the page asks for it itself)."""
        found = await asyncio.gather(*(self._ask(scope, path) for path in START_PATHS))
        return {path: answer for path, answer in zip(START_PATHS, found, strict=True) if answer}

    async def _ask(self, scope: Scope, path: str) -> object | None:
        route, _, query = path.partition("?")
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"accept-encoding", b"if-none-match", b"range")
        ]
        inner: Scope = {
            "type": "http",
            "asgi": scope.get("asgi", {"version": "3.0"}),
            "http_version": scope.get("http_version", "1.1"),
            "method": "GET",
            "scheme": scope.get("scheme", "http"),
            "server": scope.get("server"),
            "client": scope.get("client"),
            "root_path": "",
            "path": f"/api{route}",
            "raw_path": f"/api{route}".encode(),
            "query_string": query.encode(),
            "headers": headers,
        }
        status = 0
        body = bytearray()

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        try:
            await asyncio.wait_for(self._api(inner, receive, send), START_ANSWER_SECONDS)
        except TimeoutError:
            return None
        except Exception:  # the app's own 500 for this answer: the page asks for it itself
            log.exception("the start view's %s failed; the page asks for it", route)
            return None
        return json.loads(body) if status == 200 else None


def _static(request: Request, asset: Asset) -> Response:
    etag = f'"{_digest(asset.body)}"'
    headers = {"Cache-Control": asset.cache_control, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)
