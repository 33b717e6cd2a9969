"""The page's forgiving votes, phone viewer, start view (things in the photos), near-duplicate
stacks and delivery, in headless Chromium against a real server on the demo photos plus three
near-copies of one of them, on a desktop (1366x900) and a phone (390x844, touch).

Screenshots of the new views go to artifacts/screenshots/, and to docs/screens/ (the docs
show them) only when IMGSEARCH_UPDATE_DOC_SCREENS=1, so that a test run leaves the checkout
as it was: `IMGSEARCH_UPDATE_DOC_SCREENS=1 make test` refreshes them. Tests that vote use
words no other test searches for."""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect
from support.browser import REPO, SCREENSHOTS, live_server
from support.demo import DEMO
from support.services import demo_copy

from imgsearch.api.app import create_app
from imgsearch.bulk import ingest_tree
from imgsearch.cli import WEB_DIR

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 900}
PHONE_CONTEXT = {
    "viewport": {"width": 390, "height": 844},
    "has_touch": True,
    "is_mobile": True,
    "device_scale_factor": 2,
}
DOCS_SCREENS = REPO / "docs" / "screens"
COPIED = "umbrella/image_0003.jpg"  # the photo the near-copies are made of

expect.set_options(timeout=10_000)


def _near_copies(source: Path, folder: Path) -> None:
    """Three near-copies of `source`: resized to 90%, re-encoded at quality 70, cropped 2%."""
    image = Image.open(source).convert("RGB")
    w, h = image.size
    copies = {
        "resized.jpg": image.resize((w * 9 // 10, h * 9 // 10)),
        "reencoded.jpg": image,
        "cropped.jpg": image.crop((w // 50, h // 50, w - w // 50, h - h // 50)),
    }
    folder.mkdir(parents=True)
    for name, copy in copies.items():
        out = io.BytesIO()
        copy.save(out, "JPEG", quality=70 if name == "reencoded.jpg" else 88)
        (folder / name).write_bytes(out.getvalue())


@pytest.fixture(scope="module")
def site(tmp_path_factory, model_demo_data, model_embedder, vocabulary) -> Iterator[str]:
    root = tmp_path_factory.mktemp("views")
    service = demo_copy(model_demo_data, root / "data", model_embedder, vocabulary)
    _near_copies(DEMO / COPIED, root / "copies" / "copies")
    ingest_tree(service, root / "copies")
    with live_server(create_app(service, web_dir=WEB_DIR)) as url:
        yield url


@pytest.fixture
def open_page(browser: Browser, site: str, request) -> Iterator[Callable[..., Page]]:
    """Pages in fresh contexts (`open_page(**PHONE_CONTEXT)`); each gets a screenshot at the
    end, and uncaught JavaScript errors fail the test."""
    opened: list[tuple[Page, list]] = []

    def open_(**options) -> Page:
        context = browser.new_context(base_url=site, **{"viewport": DESKTOP, **options})
        page = context.new_page()
        errors: list = []
        page.on("pageerror", lambda error: errors.append(error))
        opened.append((page, errors))
        return page

    yield open_
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for number, (page, errors) in enumerate(opened):
        suffix = f"-{number}" if number else ""
        page.screenshot(
            path=SCREENSHOTS / f"{request.node.name}{suffix}.png", animations="disabled"
        )
        page.context.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(open_page) -> Page:
    return open_page()


@pytest.fixture
def phone(open_page) -> Page:
    return open_page(**PHONE_CONTEXT)


def docs_screenshot(page: Page, name: str) -> None:
    """A screenshot the docs show (docs/screens/NAME.png, when asked for: see above)."""
    path = SCREENSHOTS / f"docs-{name}.png"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path, animations="disabled")
    if os.environ.get("IMGSEARCH_UPDATE_DOC_SCREENS") == "1":
        DOCS_SCREENS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENS / f"{name}.png")


# Reading and driving the page ----------------------------------------------------------------


def tiles(page: Page) -> Locator:
    return page.locator("#grid > .tile")


def ids(page: Page, count: int | None = None) -> list[str]:
    found = tiles(page).evaluate_all("(all) => all.map((tile) => tile.dataset.id)")
    return found[:count] if count else found


def search(page: Page, words: str) -> None:
    box = page.get_by_role("searchbox", name="Search photos")
    box.fill(words)
    box.press("Enter")
    expect(page.get_by_role("heading", name=f"Results for \u201c{words}\u201d")).to_be_visible()
    expect(page.locator("#interpretation")).not_to_be_empty()
    expect(page.locator("#grid")).to_have_attribute("aria-busy", "false")


def vote_button(page: Page, index: int, words: str, up: bool = True) -> Locator:
    tile = tiles(page).nth(index)
    tile.hover()
    name = f"{'Relevant' if up else 'Not relevant'} to \u201c{words}\u201d"
    return tile.get_by_role("button", name=name, exact=True)


def settled(page: Page) -> None:
    expect(page.locator("#grid")).to_have_attribute("aria-busy", "false")
    page.wait_for_function("() => !document.body.classList.contains('busy')")


def swipe(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A one-finger swipe, as the touch screen sends it (Chromium's input events over CDP)."""
    cdp = page.context.new_cdp_session(page)
    steps = 8
    cdp.send(
        "Input.dispatchTouchEvent",
        {"type": "touchStart", "touchPoints": [dict(x=start[0], y=start[1])]},
    )
    for step in range(1, steps + 1):
        x = start[0] + (end[0] - start[0]) * step / steps
        y = start[1] + (end[1] - start[1]) * step / steps
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [dict(x=x, y=y)]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def axe_violations(page: Page) -> list:
    from axe_playwright_python.sync_playwright import Axe

    return Axe().run(page).response["violations"]


# Forgiving votes -----------------------------------------------------------------------------


def test_a_vote_is_undone_from_the_toast_and_from_the_keyboard(page: Page) -> None:
    page.goto("/")
    search(page, "sunflower")
    before = ids(page, 12)
    vote_button(page, 7, "sunflower").click()
    expect(tiles(page).first).to_have_attribute("data-id", before[7])
    settled(page)
    toast = page.locator("#toast")
    expect(toast).to_contain_text("comes first")
    toast.get_by_role("button", name="Undo").click()
    expect(toast).to_contain_text("Undone")
    settled(page)
    expect(tiles(page).first).to_have_attribute("data-id", before[0])
    assert ids(page, 12) == before
    expect(page.locator(f'.tile[data-id="{before[7]}"]')).not_to_have_attribute("data-vote", "1")

    vote_button(page, 3, "sunflower").click()
    expect(tiles(page).first).to_have_attribute("data-id", before[3])
    page.keyboard.press("Control+z")
    expect(toast).to_contain_text("Undone")
    settled(page)
    expect(tiles(page).first).to_have_attribute("data-id", before[0])


def test_a_second_press_takes_a_vote_back(page: Page) -> None:
    page.goto("/")
    search(page, "blossom")
    before = ids(page, 12)
    up = vote_button(page, 5, "blossom")
    up.click()
    settled(page)
    voted = page.locator(f'.tile[data-id="{before[5]}"]')
    pressed = voted.get_by_role("button", name="Relevant to \u201cblossom\u201d", exact=True)
    expect(pressed).to_have_attribute("aria-pressed", "true")
    expect(tiles(page).first).to_have_attribute("data-id", before[5])
    settled(page)
    voted.hover()
    pressed.click()
    expect(page.locator("#toast")).to_contain_text("taken back")
    expect(pressed).to_have_attribute("aria-pressed", "false")
    expect(tiles(page).first).to_have_attribute("data-id", before[0])
    settled(page)
    assert ids(page, 12) == before


def test_a_photo_voted_down_stays_in_its_place_dimmed(page: Page) -> None:
    page.goto("/")
    search(page, "tower")
    before = ids(page, 12)
    vote_button(page, 1, "tower", up=False).click()
    expect(page.locator("#toast")).to_contain_text("left out")
    settled(page)
    down = tiles(page).nth(1)
    expect(down).to_have_attribute("data-id", before[1])
    expect(down).to_have_attribute("data-vote", "-1")
    opacity = down.locator("img").evaluate("(image) => Number(getComputedStyle(image).opacity)")
    assert opacity < 0.5
    assert ids(page, 12) == before  # nothing moved under the pointer


def test_the_order_waits_while_the_viewer_is_open_and_y_votes(page: Page) -> None:
    page.goto("/")
    search(page, "temple")
    before = ids(page, 12)
    tiles(page).nth(5).locator(".tile-open").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    page.keyboard.press("y")
    expect(viewer.get_by_role("button", name="Yes")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#toast")).to_contain_text("comes first")
    assert ids(page, 12) == before  # frozen while it is open
    page.keyboard.press("ArrowRight")  # the next photo is the one after it, as shown
    key = tiles(page).nth(6).locator("img").get_attribute("alt")
    expect(page.locator("#viewer-title")).to_have_text(key)
    page.keyboard.press("n")
    expect(viewer.get_by_role("button", name="No")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    settled(page)
    expect(tiles(page).first).to_have_attribute("data-id", before[5])  # applied on close


def test_only_photos_votes_moved_carry_the_learned_mark(page: Page) -> None:
    page.goto("/")
    search(page, "shrine")
    vote_button(page, 9, "shrine").click()
    settled(page)
    first = tiles(page).first
    expect(first).to_have_class(re.compile(r"\blearned\b"))
    marked = page.locator("#grid > .tile.learned").count()
    assert 1 <= marked < tiles(page).count() // 2, marked
    expect(page.locator("#summary")).to_contain_text("moved by votes")
    expect(page.locator(".hint")).not_to_contain_text("new to me")


# The phone -----------------------------------------------------------------------------------


def test_back_closes_the_photo_on_a_phone_and_keeps_the_search(phone: Page) -> None:
    phone.goto("/")
    search(phone, "elephant")
    tiles(phone).nth(2).locator(".tile-open").tap()
    viewer = phone.locator("#viewer")
    expect(viewer).to_be_visible()
    assert "image=" in phone.url
    phone.go_back()
    expect(viewer).to_be_hidden()
    expect(phone.get_by_role("heading", name="Results for \u201celephant\u201d")).to_be_visible()
    assert phone.url.endswith("/?q=elephant")
    # The close button also takes the photo's history entry away: Back then leaves the search.
    tiles(phone).nth(2).locator(".tile-open").tap()
    expect(viewer).to_be_visible()
    viewer.get_by_role("button", name="Close").tap()
    expect(viewer).to_be_hidden()
    phone.wait_for_url(re.compile(r"/\?q=elephant$"))
    phone.go_back()
    expect(phone.get_by_role("heading", name="All photos")).to_be_visible()


def test_a_swipe_steps_through_the_photos_and_down_closes(phone: Page) -> None:
    phone.goto("/")
    search(phone, "starfish")
    keys = tiles(phone).locator("img").evaluate_all("(all) => all.map((image) => image.alt)")
    tiles(phone).first.locator(".tile-open").tap()
    title = phone.locator("#viewer-title")
    expect(title).to_have_text(keys[0])
    stage = phone.locator(".viewer-stage").bounding_box()
    middle = (stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
    swipe(phone, (middle[0] + 120, middle[1]), (middle[0] - 120, middle[1]))
    expect(title).to_have_text(keys[1])
    swipe(phone, (middle[0] + 120, middle[1]), (middle[0] - 120, middle[1]))
    expect(title).to_have_text(keys[2])
    swipe(phone, (middle[0] - 120, middle[1]), (middle[0] + 120, middle[1]))
    expect(title).to_have_text(keys[1])
    docs_screenshot(phone, "phone-viewer")
    swipe(phone, (middle[0], middle[1] - 80), (middle[0], middle[1] + 150))
    expect(phone.locator("#viewer")).to_be_hidden()
    phone.wait_for_url(re.compile(r"/\?q=starfish$"))


def test_votes_are_on_the_tiles_by_touch_and_the_chip_row_shows_it_scrolls(phone: Page) -> None:
    phone.goto("/")
    search(phone, "beacon")
    up = (
        tiles(phone).nth(4).get_by_role("button", name="Relevant to \u201cbeacon\u201d", exact=True)
    )
    expect(up).to_be_visible()
    assert float(up.evaluate("(button) => getComputedStyle(button).opacity")) > 0.5
    box = up.bounding_box()
    assert box["width"] >= 32 and box["height"] >= 32  # a finger's target
    voted = tiles(phone).nth(4).get_attribute("data-id")
    up.tap()
    expect(tiles(phone).first).to_have_attribute("data-id", voted)
    search(phone, "elephant")
    row = phone.locator(".chips-row")
    expect(row).to_have_class(re.compile(r"\bscrolls\b"))
    assert "linear-gradient" in row.evaluate("(row) => getComputedStyle(row).maskImage")
    docs_screenshot(phone, "phone-search-votes")
    placeholder = phone.get_by_role("searchbox").get_attribute("placeholder")
    fits = phone.get_by_role("searchbox").evaluate("(box) => box.scrollWidth <= box.clientWidth")
    assert placeholder and fits


# Explore and near-duplicates -------------------------------------------------------------------


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_the_start_view_shows_things_in_the_photos(open_page, device: str) -> None:
    page = open_page(**(PHONE_CONTEXT if device == "phone" else {}))
    page.goto("/")
    explore = page.get_by_role("region", name="Things in your photos")
    expect(explore).to_be_visible()
    cards = explore.get_by_role("link")
    expect(cards.first).to_be_visible()
    assert cards.count() >= 8
    texts = cards.all_inner_texts()
    assert all(re.search(r"\d+ (photo|photos|stack|stacks)", text) for text in texts), texts
    # Words votes taught come first (other tests voted), then classes, most photos first.
    classes = explore.locator(".topic-class .topic-count").all_inner_texts()
    counts = [int(re.search(r"(\d+) photos?", text)[1]) for text in classes]
    assert len(counts) >= 8 and counts == sorted(counts, reverse=True), counts
    expect(explore.locator("img").first).to_have_js_property("complete", True)
    docs_screenshot(page, f"{device}-explore")
    assert not axe_violations(page)
    label = explore.locator(".topic-class .topic-label").first.inner_text()
    explore.locator(".topic-class").first.click()
    expect(page.get_by_role("heading", name=f"Results for \u201c{label}\u201d")).to_be_visible()
    expect(explore).to_be_hidden()
    page.go_back()
    expect(explore).to_be_visible()


def test_near_copies_are_one_stack_and_the_duplicates_view_lists_them(page: Page) -> None:
    page.goto("/")
    expect(page.locator("#summary")).to_contain_text("195 photos")
    shown = tiles(page).locator("img").evaluate_all("(all) => all.map((image) => image.alt)")
    stacked = [key for key in shown if key.startswith("copies/") or key == COPIED]
    assert len(stacked) == 1, stacked  # four photos, one tile
    tile = page.locator("#grid > .tile", has=page.locator(f'img[alt="{stacked[0]}"]'))
    expect(tile.locator(".stack")).to_have_text(re.compile("4"))
    expect(tile.locator(".tile-open")).to_have_accessible_name(re.compile("4 near-copies"))

    page.get_by_role("link", name=re.compile("Near-duplicates")).click()
    expect(page.get_by_role("heading", name="Near-duplicates")).to_be_visible()
    assert page.url.endswith("?view=duplicates")
    # The newest stack first: the copies were added last. (The demo set has a stack of its
    # own: two of its photos are near-copies too.)
    stacks = page.request.get("/api/duplicates").json()
    expect(page.locator("#summary")).to_have_text(
        f"{stacks['total']} stacks of near-copies of one photo"
    )
    expect(tiles(page)).to_have_count(sum(stack["count"] for stack in stacks["stacks"]))
    expect(page.locator("#grid > .tile.stack-start")).to_have_count(stacks["total"])
    listed = tiles(page).locator("img").evaluate_all("(all) => all.map((image) => image.alt)")
    assert sorted(listed[:4]) == sorted(
        [COPIED, "copies/cropped.jpg", "copies/reencoded.jpg", "copies/resized.jpg"]
    )
    docs_screenshot(page, "desktop-duplicates")
    assert not axe_violations(page)
    page.reload()
    expect(tiles(page)).to_have_count(len(listed))


# Delivery ------------------------------------------------------------------------------------


def test_what_the_page_loads_is_small_compressed_and_cached(page: Page, site: str) -> None:
    responses = []
    page.on("response", lambda response: responses.append(response))
    refused = []  # a Content-Security-Policy refusal is a console error, not a page error
    page.on("console", lambda m: refused.append(m.text) if m.type == "error" else None)
    page.goto("/")
    expect(tiles(page).nth(11)).to_have_class(re.compile(r"\bloaded\b"))
    by_path = {r.url.removeprefix(site): r for r in responses}
    # The page: compressed, revalidated, with the start view's answers inside (no request for
    # them), its stylesheet and boot script inline and allowed by their hashes only.
    html = by_path["/"]
    assert html.header_value("content-encoding") == "gzip"
    assert html.header_value("cache-control") == "no-cache"
    policy = html.header_value("content-security-policy")
    assert "'unsafe-inline'" not in policy and policy.count("'sha256-") == 2, policy
    asked = ("/api/images?limit=48&offset=0", "/api/explore", "/api/duplicates?limit=200&offset=0")
    assert not [path for path in by_path if path in asked]
    assert "/style.css" not in by_path
    # One script, named by its content: compressed, cached for a year; no module chain (and
    # config.js, the deployment's settings).
    scripts = [path for path in by_path if path.endswith(".js") and path != "/config.js"]
    assert len(scripts) == 1 and re.fullmatch(r"/js/app\.[0-9a-f]{12}\.js", scripts[0]), scripts
    script = by_path[scripts[0]]
    assert script.header_value("content-encoding") == "gzip"
    assert "immutable" in script.header_value("cache-control")
    # Tiles on a desktop get the tile thumbnail made at ingest: a WebP of at most 256 px,
    # cached as immutable, asked for while the page was parsed (from its own data), before
    # the script ran (modules run just before DOMContentLoaded).
    image = tiles(page).first.locator("img")
    assert image.evaluate("(image) => image.currentSrc").endswith("/thumbnail?size=256")
    assert image.evaluate("(image) => image.naturalWidth") <= 256
    thumbnail = next(r for path, r in by_path.items() if path.endswith("thumbnail?size=256"))
    assert thumbnail.header_value("content-type") == "image/webp"
    assert "immutable" in thumbnail.header_value("cache-control")
    assert len(thumbnail.body()) < 16_000
    timing = page.evaluate(
        """() => {
          const entries = performance.getEntriesByType("resource");
          const parsed = performance.getEntriesByType("navigation")[0].domInteractive;
          const tiles = entries.filter((e) => e.name.endsWith("size=256")).slice(0, 12);
          return {parsed, tiles: Math.max(...tiles.map((e) => e.startTime))};
        }"""
    )
    assert timing["tiles"] <= timing["parsed"], timing
    assert not refused, refused


def test_a_phone_gets_tile_thumbnails_too(phone: Page) -> None:
    # 390 px wide at 2 (and 3) device pixels: a third of the width at 2 pixels fits 256 px.
    phone.goto("/")
    expect(tiles(phone).nth(11)).to_have_class(re.compile(r"\bloaded\b"))
    sources = (
        tiles(phone)
        .locator("img")
        .evaluate_all("(all) => all.slice(0, 12).map((image) => image.currentSrc)")
    )
    assert all(source.endswith("/thumbnail?size=256") for source in sources), sources
    # Another view's grid (no answers in the page) shows tile thumbnails as well.
    search(phone, "umbrella")
    first = tiles(phone).first.locator("img")
    expect(first).to_have_attribute("src", re.compile(r"thumbnail\?size=256$"))


def test_a_missing_tile_thumbnail_falls_back_to_the_thumbnail(page: Page) -> None:
    page.route("**/thumbnail?size=256", lambda route: route.fulfill(status=404))
    page.goto("/")
    image = tiles(page).first.locator("img")
    expect(tiles(page).first).to_have_class(re.compile(r"\bloaded\b"))
    assert image.evaluate("(image) => image.currentSrc").endswith("/thumbnail")
    expect(page.locator("#grid > .tile.broken")).to_have_count(0)


def test_the_viewer_enlarges_a_photo_at_most_twice(page: Page) -> None:
    page.goto("/")
    tiles(page).first.locator(".tile-open").click()
    image = page.locator(".viewer-image")
    expect(page.locator(".viewer-meta")).to_contain_text("pixels")
    page.wait_for_function("() => document.querySelector('.viewer-image').naturalWidth > 0")
    shown = image.evaluate(
        """(image) => ({
          w: image.clientWidth, h: image.clientHeight,
          nw: image.naturalWidth, nh: image.naturalHeight,
        })"""
    )
    assert shown["h"] <= 2 * shown["nh"] + 1 and shown["w"] <= 2 * shown["nw"] + 1, shown


def test_back_returns_to_the_same_scroll_depth(page: Page) -> None:
    # The stacks are ready (the server keeps them once found): the grid is stacked from the
    # first page on, so that both visits show the same photos in the same places.
    assert page.request.get("/api/duplicates").ok
    page.goto("/")
    expect(tiles(page).nth(47)).to_be_attached()
    page.evaluate("() => scrollTo({top: 3000})")
    expect(tiles(page).nth(120)).to_be_attached(timeout=15_000)
    settled(page)
    page.evaluate("() => scrollTo({top: 1800})")
    page.wait_for_timeout(400)  # the page notes where it is a moment after scrolling stops
    loaded = tiles(page).count()
    # The photo in the middle of the screen, and where it is.
    centre = """() => {
      const tile = document.elementFromPoint(innerWidth / 2, innerHeight / 2).closest(".tile");
      return {id: tile.dataset.id, top: tile.getBoundingClientRect().top};
    }"""
    before = page.evaluate(centre)
    tile = page.locator("#grid > .tile").nth(60)
    tile.hover()
    similar = tile.get_by_role("button", name="More like this")
    # The buttons slide in on hover. Clicked while one moves, Playwright finds it unstable and
    # tries again, scrolling it to the bottom, the middle or the top of the screen first: the
    # page would leave from elsewhere than `before` (a user's click scrolls nothing).
    expect(similar).to_have_css("transform", "none")
    page.evaluate(
        "() => addEventListener('click', () => { window.scrollAtClick = scrollY; },"
        " {capture: true, once: true})"
    )
    similar.click()
    expect(page.get_by_role("heading", name="More like this photo")).to_be_visible()
    assert page.evaluate("() => window.scrollAtClick") == 1800
    page.go_back()
    expect(page.get_by_role("heading", name="All photos")).to_be_visible()
    page.wait_for_function(
        "(loaded) => document.querySelectorAll('#grid > .tile').length >= loaded", arg=loaded
    )
    page.wait_for_function("() => scrollY > 1000")
    page.wait_for_timeout(300)
    after = page.evaluate(centre)
    assert after["id"] == before["id"] and abs(after["top"] - before["top"]) < 30, (before, after)
