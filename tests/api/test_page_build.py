"""The page as it is served and built (imgsearch.api.page): one script bundled from the
modules, inline stylesheet and boot code allowed by their hashes, the start view's answers in
index.html, compressed and immutable assets; and the build for a static host."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.demo import demo_image

from imgsearch.api import page
from imgsearch.api.app import create_app
from imgsearch.api.page import START_PATHS, BuildError, build_page, bundle_modules
from imgsearch.cli import WEB_DIR

MODULES = sorted(p.name for p in (WEB_DIR / "js").glob("*.js") if p.name != "boot.js")


@pytest.fixture
def site(demo_service) -> Iterator[TestClient]:
    with TestClient(create_app(demo_service, web_dir=WEB_DIR)) as client:
        yield client


def _inline(html: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)


def _csp_hash(code: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()}'"


def test_the_bundle_holds_every_module_once_dependencies_first() -> None:
    bundle = bundle_modules(WEB_DIR / "js")
    defined = re.findall(r"^const module_(\w+) = \(\(\) => \{$", bundle, flags=re.M)
    assert sorted(f"{name}.js" for name in defined) == MODULES
    assert defined[-1] == "main"  # the entry runs last, after everything it imports
    assert defined.index("dom") < defined.index("tile") < defined.index("explore")
    assert not re.search(r"^(?:import|export)\b", bundle, flags=re.M)
    # What a module exports is what its importers take.
    assert re.search(r"return \{ [^}]*\bcreateTile\b[^}]*\};", bundle)
    assert "const { createTile, updateTile } = module_tile;" in bundle


def test_the_bundler_refuses_what_it_does_not_handle(tmp_path: Path) -> None:
    (tmp_path / "main.js").write_text('import "./side.js";\n')
    (tmp_path / "side.js").write_text("export default 1;\n")
    with pytest.raises(BuildError, match="does not handle"):
        bundle_modules(tmp_path)
    (tmp_path / "main.js").write_text('import { a } from "./side.js";\nexport const b = 1;\n')
    (tmp_path / "side.js").write_text('import { b } from "./main.js";\nexport const a = b;\n')
    with pytest.raises(BuildError, match="cycle"):
        bundle_modules(tmp_path)


def test_served_the_page_carries_its_start_answers_and_hashed_inline_code(
    site, monkeypatch
) -> None:
    monkeypatch.setattr(page, "START_ANSWER_SECONDS", 60.0)  # however loaded the machine
    response = site.get("/")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["content-encoding"] == "gzip"
    html = response.text
    data = re.search(r'<script id="start-data" type="application/json">(.*?)</script>', html)
    answers = json.loads(data[1])
    assert set(answers) == set(START_PATHS)
    for path in START_PATHS:  # what the API itself answers for each
        assert answers[path] == site.get(f"/api{path}").json()
    policy = response.headers["content-security-policy"]
    scripts = re.search(r"script-src ([^;]+)", policy)[1].split()
    styles = re.search(r"style-src ([^;]+)", policy)[1].split()
    assert sorted(scripts) == sorted(["'self'", *map(_csp_hash, _inline(html, "script"))])
    assert sorted(styles) == sorted(["'self'", *map(_csp_hash, _inline(html, "style"))])
    assert 'rel="modulepreload"' not in html and 'href="style.css"' not in html
    # Another view starts from its own requests: nothing is put in for it.
    assert '<script id="start-data" type="application/json">{}</script>' in site.get("/?q=x").text


def test_a_key_cannot_break_out_of_the_start_data(service, monkeypatch) -> None:
    monkeypatch.setattr(page, "START_ANSWER_SECONDS", 60.0)
    key = "x<!--<script></script><script>alert(1)</script>.jpg"
    service.add(key, demo_image("pizza"))
    with TestClient(create_app(service, web_dir=WEB_DIR)) as client:
        html = client.get("/").text
    (data,) = re.findall(r'<script id="start-data" type="application/json">(.*?)</script>', html)
    assert "<" not in data
    assert json.loads(data)[START_PATHS[0]]["results"][0]["key"] == key
    assert html.count("<script>") == 1  # boot.js only


def test_a_start_answer_that_fails_is_left_to_the_page(service, monkeypatch) -> None:
    """A start answer that fails (SQLite busy beside a bulk ingest, say) leaves the page
    whole: it asks for that answer itself."""
    monkeypatch.setattr(page, "START_ANSWER_SECONDS", 60.0)

    def failing(*args, **kwargs):
        raise RuntimeError("explore failed")

    monkeypatch.setattr(type(service), "explore", failing)
    with TestClient(create_app(service, web_dir=WEB_DIR), raise_server_exceptions=False) as client:
        answer = client.get("/")
    assert answer.status_code == 200
    (data,) = re.findall(
        r'<script id="start-data" type="application/json">(.*?)</script>', answer.text
    )
    assert "/explore" not in json.loads(data) and START_PATHS[0] in json.loads(data)


def test_the_bundler_strips_comment_lines_and_nothing_else() -> None:
    source = "/* a */ f();\nconst x = 1;\n/* b\n */\ng();\n  // c\nh(); // d\n"
    assert page._trimmed(source) == "/* a */ f();\nconst x = 1;\ng();\nh(); // d"


def test_answers_later_than_the_page_can_wait_are_left_to_the_page(site, monkeypatch) -> None:
    monkeypatch.setattr(page, "START_ANSWER_SECONDS", 0.0)
    html = site.get("/").text
    assert '<script id="start-data" type="application/json">{}</script>' in html


def test_the_bundle_is_compressed_immutable_and_revalidated(site) -> None:
    (script,) = re.findall(r'src="(js/app\.[0-9a-f]{12}\.js)"', site.get("/").text)
    response = site.get(f"/{script}")
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"].startswith("text/javascript")
    assert int(response.headers["content-length"]) < len(response.content) / 2.5
    again = site.get(f"/{script}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content
    plain = site.get(f"/{script}", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == response.content
    # The files as they are in web/ are still served (revalidated: their names do not change).
    module = site.get("/js/tile.js")
    assert module.status_code == 200 and module.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nothing-here.js", 404),
        ("GET", "/../pyproject.toml", 404),
        ("GET", "/js/%2e%2e/%2e%2e/pyproject.toml", 404),
        ("POST", "/", 405),
        ("DELETE", "/index.html", 405),
        ("PUT", "/nothing-here.js", 404),  # nothing to allow a method on
    ],
)
def test_what_the_page_server_refuses(site, method, path, status) -> None:
    response = site.request(method, path)
    assert response.status_code == status
    assert response.json()["detail"]


def test_built_for_a_static_host_nothing_is_inline(tmp_path: Path) -> None:
    page = build_page(WEB_DIR, inline=False, config_js="window.IMGSEARCH_CONFIG = {};\n")
    html = page.files["index.html"].body.decode()
    assert not _inline(html, "script") and not _inline(html, "style")  # the CDN's CSP: 'self'
    assert "<!--start-data-->" not in html
    referenced = re.findall(r'(?:src|href)="((?:js/)?[\w.]+\.(?:js|css))"', html)
    assert sorted(referenced) == sorted(
        ["config.js", *(p for p in page.files if re.search(r"\.[0-9a-f]{12}\.", p))]
    )
    for path in referenced:
        if path != "config.js":
            assert page.files[path].cache_control.endswith("immutable")
    assert page.files["config.js"].body == b"window.IMGSEARCH_CONFIG = {};\n"
    assert gzip.decompress(page.files["index.html"].gzipped or b"") == html.encode()
