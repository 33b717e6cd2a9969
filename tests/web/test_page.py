"""The web page in headless Chromium, against a real server on the demo photos.

Every test leaves a screenshot in artifacts/screenshots/. The tests share one server (module
scope; `make test` keeps a file's tests on one worker) and each gets a fresh browser context,
so nothing the browser stores carries over. Tests that vote use words no other test searches
for."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Route,
    expect,
)
from support.browser import SCREENSHOTS, live_server
from support.demo import DEMO, demo_image
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, demo_copy, make_service

from imgsearch.api.app import create_app
from imgsearch.cli import WEB_DIR

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# What the page asks for at a time, as web/js/pages.js says.
PAGE_SIZE = int(re.search(r"export const PAGE = (\d+);", (WEB_DIR / "js/pages.js").read_text())[1])

expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def site(tmp_path_factory, model_demo_data, model_embedder, vocabulary) -> Iterator[str]:
    # The presigned-upload test's bucket, as the template names the bucket for the page.
    service = demo_copy(
        model_demo_data,
        tmp_path_factory.mktemp("web") / "data",
        model_embedder,
        vocabulary,
        page_origins=["https://bucket.test"],
    )
    with live_server(create_app(service, web_dir=WEB_DIR)) as url:
        yield url


@pytest.fixture
def open_page(browser: Browser, site: str, request) -> Iterator[Callable[..., Page]]:
    """Opens pages on the site in fresh contexts (`open_page(viewport=PHONE, ...)`); at the end
    each gets a screenshot, and uncaught JavaScript errors and anything the page's
    Content-Security-Policy blocked fail the test."""
    opened: list[tuple[Page, list]] = []

    def open_(*, api_key: str | None = None, **options) -> Page:
        context = browser.new_context(base_url=site, **{"viewport": DESKTOP, **options})
        if api_key:
            context.add_init_script(f"localStorage.setItem('imgsearch.api-key', {api_key!r})")
        page = context.new_page()
        errors: list = []
        page.on("pageerror", lambda error: errors.append(error))
        page.on("console", lambda message: _note_blocked(message, errors))
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


def _note_blocked(message: ConsoleMessage, errors: list) -> None:
    if message.type == "error" and "Content Security Policy" in message.text:
        errors.append(message.text)


@pytest.fixture
def page(open_page) -> Page:
    return open_page()


@pytest.fixture
def screenshot(request) -> Callable[[Page, str], None]:
    """Keep a screenshot of a moment in the middle of a test."""

    def take(page: Page, moment: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=SCREENSHOTS / f"{request.node.name}-{moment}.png", animations="disabled"
        )

    return take


# Reading the page --------------------------------------------------------------------------


def tiles(page: Page) -> Locator:
    return page.locator("#grid > .tile")


def keys(page: Page, count: int) -> list[str]:
    """The keys of the first `count` results (each photo's alt text is its key)."""
    return (
        tiles(page)
        .locator("img")
        .evaluate_all("(images, count) => images.slice(0, count).map((image) => image.alt)", count)
    )


def search(page: Page, words: str) -> None:
    box = page.get_by_role("searchbox", name="Search photos")
    box.fill(words)
    box.press("Enter")
    expect(page.get_by_role("heading", name=f"Results for \u201c{words}\u201d")).to_be_visible()
    # The interpretation is drawn once the first page of results is in the grid.
    expect(page.locator("#interpretation")).not_to_be_empty()


def tile_button(page: Page, index: int, name: str) -> Locator:
    tile = tiles(page).nth(index)
    tile.hover()
    return tile.get_by_role("button", name=name, exact=True)


# The tests ---------------------------------------------------------------------------------


def test_search_shows_the_elephants_and_what_it_understood(page: Page) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", name="All photos")).to_be_visible()
    expect(page.locator("#summary")).to_have_text("192 photos, newest first")
    expect(tiles(page)).to_have_count(PAGE_SIZE)

    search(page, "elephant")
    assert page.url.endswith("/?q=elephant")
    chips = page.locator("#interpretation")
    expect(chips).to_contain_text("Showing")
    asian = chips.get_by_role("button", name="Asian elephant")
    african = chips.get_by_role("button", name="African bush elephant")
    expect(asian).to_have_attribute("aria-pressed", "true")
    expect(african).to_have_attribute("aria-pressed", "true")
    top = keys(page, 10)
    assert all(key.startswith("elephant/") for key in top), top

    # Striking the elephant classes out runs the search again without them.
    asian.click()
    expect(asian).to_have_attribute("aria-pressed", "false")
    expect(asian).to_be_focused()
    african.click()
    expect(african).to_have_attribute("aria-pressed", "false")
    more = chips.get_by_role("button", name="+8 more")
    expect(more).to_have_attribute("aria-expanded", "false")
    more.click()
    tusker = chips.get_by_role("button", name="tusker")
    tusker.click()
    expect(tusker).to_have_attribute("aria-pressed", "false")
    assert all(f"exclude={id_}" in page.url for id_ in (385, 386, 101)), page.url
    narrowed = keys(page, 10)
    assert sum(key.startswith("elephant/") for key in narrowed) < 10, narrowed


def test_a_vote_moves_a_photo_to_the_top_and_is_remembered(page: Page) -> None:
    page.goto("/")
    search(page, "sunflower")
    liked = tiles(page).nth(7).get_attribute("data-id")
    tile_button(page, 7, "Relevant to \u201csunflower\u201d").click()

    first = tiles(page).first
    expect(first).to_have_attribute("data-id", liked)
    expect(first).to_have_class(re.compile(r"\blearned\b"))
    expect(first.locator(".tile-open")).to_have_accessible_name(re.compile(r"Learned$"))
    expect(
        first.get_by_role("button", name="Relevant to \u201csunflower\u201d", exact=True)
    ).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#toast")).to_contain_text("comes first")

    disliked = tiles(page).nth(1).get_attribute("data-id")
    tile_button(page, 1, "Not relevant to \u201csunflower\u201d").click()
    # It stays where it was, dimmed, until the view is shown again (nothing slides under the
    # pointer); then it is left out.
    expect(page.locator("#toast")).to_contain_text("left out")
    expect(tiles(page).nth(1)).to_have_attribute("data-id", disliked)
    expect(tiles(page).nth(1)).to_have_attribute("data-vote", "-1")

    page.reload()  # the session's votes are kept for the browser session
    expect(tiles(page).first).to_have_attribute("data-id", liked)
    expect(tiles(page).first).to_have_attribute("data-vote", "1")
    expect(page.locator(f'#grid > .tile[data-id="{disliked}"]')).to_have_count(0)


def test_a_vote_on_a_photo_of_the_last_search_is_not_given_to_the_next(page: Page) -> None:
    """While the next words' results load, the last ones stay in view; a click on their vote
    must not record them as relevant to the new words."""
    page.goto("/?q=pizza")
    expect(page.locator("#interpretation")).not_to_be_empty()
    votes: list[str] = []
    page.on("request", lambda r: votes.append(r.url) if "/api/feedback" in r.url else None)

    def slowly(route) -> None:
        page.wait_for_timeout(1500)
        route.continue_()

    page.route(re.compile(r"/api/search\?q=starfish"), slowly)
    box = page.get_by_role("searchbox", name="Search photos")
    box.fill("starfish")
    box.press("Enter")
    expect(page.locator("#grid")).to_have_class(re.compile(r"\bstale\b"))
    tile_button(page, 0, "Relevant to \u201cpizza\u201d").click(force=True)
    expect(page.get_by_role("heading", name="Results for \u201cstarfish\u201d")).to_be_visible()
    expect(page.locator("#interpretation")).not_to_be_empty()
    assert votes == []


def test_more_like_this(page: Page) -> None:
    page.goto("/?q=starfish")
    expect(page.locator("#interpretation")).not_to_be_empty()
    source = tiles(page).first.get_attribute("data-id")
    tile_button(page, 0, "More like this").click()

    expect(page.get_by_role("heading", name="More like this photo")).to_be_focused()
    assert page.url.endswith(f"?similar={source}")
    expect(page.locator("#query-photo img")).to_have_attribute("src", re.compile(source))
    expect(tiles(page).first).not_to_have_attribute("data-id", source)
    top = keys(page, 5)
    assert sum(key.startswith("starfish/") for key in top) >= 4, top

    page.go_back()  # the address keeps the view
    expect(page.get_by_role("heading", name="Results for \u201cstarfish\u201d")).to_be_visible()


def test_the_open_photo_is_in_the_address(page: Page) -> None:
    """Reload or a shared link opens the photo again; Back from a view opened in it too."""
    page.goto("/?q=starfish")
    expect(page.locator("#interpretation")).not_to_be_empty()
    first = tiles(page).first
    photo, key = first.get_attribute("data-id"), first.locator("img").get_attribute("alt")
    first.locator(".tile-open").click()
    expect(page.locator("#viewer-title")).to_have_text(key)
    expect(page).to_have_url(re.compile(rf"\?q=starfish&image={photo}$"))

    page.reload()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text(key)
    expect(page.get_by_role("heading", name="Results for \u201cstarfish\u201d")).to_be_attached()

    viewer.get_by_role("button", name="More like this").click()
    expect(page.get_by_role("heading", name="More like this photo")).to_be_focused()
    expect(page).to_have_url(re.compile(rf"\?similar={photo}$"))
    page.go_back()
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text(key)

    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(page).to_have_url(re.compile(r"\?q=starfish$"))


def test_search_with_a_chosen_photo_shows_it_and_photos_like_it(page: Page, screenshot) -> None:
    page.goto("/")
    expect(tiles(page)).to_have_count(PAGE_SIZE)
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Search with a photo").click()
    chooser.value.set_files(DEMO / "laptop" / "image_0004.jpg")

    expect(page.get_by_role("heading", name="Photos like yours")).to_be_focused()
    preview = page.get_by_role("img", name="Your photo, image_0004.jpg")
    expect(preview).to_have_attribute("src", re.compile(r"^blob:"))
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", "laptop/image_0004.jpg")
    screenshot(page, "found")

    page.set_input_files(
        "#photo-input", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"hi"}]
    )
    notice = page.locator("#notice")
    expect(notice).to_contain_text("This file cannot be searched with")
    expect(notice).to_contain_text("supported format")
    expect(tiles(page)).to_have_count(0)


def test_a_large_photo_is_sent_shrunk_and_still_found(page: Page) -> None:
    """A phone's 12-megapixel photo would not fit a cloud request: the page sends it smaller."""
    import io

    import numpy as np
    from PIL import Image

    photo = Image.open(DEMO / "laptop" / "image_0004.jpg").convert("RGB").resize((4000, 3000))
    grain = np.random.default_rng(0).integers(-6, 7, (3000, 4000, 3))  # defeats compression
    pixels = np.clip(np.asarray(photo, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    big = io.BytesIO()
    Image.fromarray(pixels).save(big, "JPEG", quality=95)
    assert len(big.getvalue()) > 2_000_000
    page.goto("/")
    expect(tiles(page)).to_have_count(PAGE_SIZE)
    with page.expect_request(re.compile(r"/api/search/image$")) as sent:
        page.set_input_files(
            "#photo-input",
            files=[{"name": "phone.jpg", "mimeType": "image/jpeg", "buffer": big.getvalue()}],
        )
    assert int(sent.value.header_value("content-length")) < 1_000_000
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", "laptop/image_0004.jpg")
    expect(page.get_by_role("img", name="Your photo, phone.jpg")).to_be_visible()


def test_back_to_an_earlier_photo_search_shows_that_photo(page: Page) -> None:
    page.goto("/")
    expect(tiles(page)).to_have_count(PAGE_SIZE)
    for category, number in (("laptop", 4), ("starfish", 8)):
        page.set_input_files("#photo-input", DEMO / category / f"image_{number:04d}.jpg")
        first = tiles(page).first.locator("img")
        expect(first).to_have_attribute("alt", f"{category}/image_{number:04d}.jpg")
    page.go_back()
    expect(page.get_by_role("img", name="Your photo, image_0004.jpg")).to_be_visible()
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", "laptop/image_0004.jpg")
    page.go_forward()
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", "starfish/image_0008.jpg")


def test_a_photo_dropped_anywhere_is_searched_with(page: Page) -> None:
    page.goto("/")
    expect(tiles(page)).to_have_count(PAGE_SIZE)
    drop = page.evaluate_handle(
        """async (bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            return data;
        }""",
        list(demo_image("pagoda", 3)),
    )
    page.dispatch_event("main", "dragenter", {"dataTransfer": drop})
    expect(page.get_by_text("Find similar photos")).to_be_visible()
    page.dispatch_event("main", "drop", {"dataTransfer": drop})
    expect(page.locator("#drop")).to_be_hidden()
    expect(page.get_by_role("heading", name="Photos like yours")).to_be_visible()
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", "pagoda/image_0003.jpg")


def test_a_refused_upload_shows_the_reason(open_page) -> None:
    page = open_page(api_key=API_KEY)
    page.goto("/")
    page.set_input_files(
        "#add-input",
        files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo"}],
    )
    tray = page.get_by_role("region", name="1 not added")
    expect(tray).to_be_visible()
    expect(tray.locator(".upload")).to_contain_text("notes.jpg")
    expect(tray.locator(".upload-status")).to_contain_text("Not added: not an image")
    expect(tray.locator(".upload-status")).to_contain_text("supported format")


def test_the_api_key_is_asked_for_when_the_server_wants_it(page: Page, screenshot) -> None:
    page.goto("/")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Add photos").click()
    photo = {
        "name": "my elephant.jpg",
        "mimeType": "image/jpeg",
        "buffer": demo_image("elephant", 5),
    }
    chooser.value.set_files(files=[photo])
    dialog = page.get_by_role("dialog", name="API key needed")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("api-key")
    expect(dialog.get_by_label("API key")).to_be_focused()
    screenshot(page, "asked")

    dialog.get_by_label("API key").fill("a wrong key")
    dialog.get_by_role("button", name="Use this key").click()
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("alert")).to_have_text(re.compile("not accepted"))

    dialog.get_by_label("API key").fill(API_KEY)
    dialog.get_by_role("button", name="Use this key").click()
    expect(dialog).to_be_hidden()
    upload = page.locator("#uploads .upload")
    expect(upload).to_contain_text("already there under another name")
    assert page.evaluate("localStorage.getItem('imgsearch.api-key')") == API_KEY

    upload.get_by_role("button", name="View").click()
    viewer = page.get_by_role("dialog", name="elephant/image_0005.jpg")
    expect(viewer).to_be_visible()
    expect(viewer.locator(".viewer-keys")).to_contain_text("uploads/my elephant.jpg")


def test_keyboard_only(page: Page) -> None:
    page.goto("/?q=pizza")
    expect(page.locator("#interpretation")).not_to_be_empty()
    for _ in range(12):  # skip link, brand, search box, buttons, chips ... then the grid
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('.tile-open')"):
            break
    first = tiles(page).first.locator(".tile-open")
    expect(first).to_be_focused()
    expect(tiles(page).first.get_by_role("button", name="More like this")).to_be_visible()

    page.keyboard.press("ArrowRight")
    second = tiles(page).nth(1)
    expect(second.locator(".tile-open")).to_be_focused()
    page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(viewer.get_by_role("button", name="Close")).to_be_focused()
    expect(page.locator("#viewer-title")).to_have_text(second.locator("img").get_attribute("alt"))
    expect(viewer.locator(".viewer-classes li").first).to_contain_text("pizza")

    page.keyboard.press("ArrowRight")  # the next photo in the view
    third = tiles(page).nth(2)
    expect(page.locator("#viewer-title")).to_have_text(third.locator("img").get_attribute("alt"))
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(third.locator(".tile-open")).to_be_focused()  # back to the photo last shown

    page.keyboard.press("Tab")  # Tab goes through the tile's own buttons
    expect(
        third.get_by_role("button", name="Relevant to \u201cpizza\u201d", exact=True)
    ).to_be_focused()


def test_a_phone_sized_screen(open_page) -> None:
    page = open_page(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.goto("/")
    search(page, "flower")
    expect(tiles(page)).to_have_count(PAGE_SIZE)
    sizes = page.evaluate(
        "({scroll: document.documentElement.scrollWidth, width: innerWidth,"
        " columns: getComputedStyle(document.getElementById('grid'))"
        ".gridTemplateColumns.split(' ').length})"
    )
    assert sizes["scroll"] <= sizes["width"] == PHONE["width"], sizes
    assert sizes["columns"] == 3, sizes
    expect(page.get_by_role("button", name="Add photos")).to_be_in_viewport()

    tiles(page).first.locator(".tile-open").tap()
    viewer = page.locator("#viewer")
    expect(viewer.get_by_role("button", name="More like this")).to_be_visible()
    viewer.evaluate("(dialog) => Promise.all(dialog.getAnimations().map((a) => a.finished))")
    box = viewer.bounding_box()
    assert box["width"] == PHONE["width"], box


def test_more_results_come_on_scroll_and_on_request(page: Page) -> None:
    """A click on "Load more" brings the next page; scrolling near the end brings pages until
    the end. How many pages one scroll brings depends on the tiles' shapes: a page whose tiles
    leave the sentinel within reach (600 px below the screen) brings the next one too."""
    page.goto("/")
    expect(tiles(page)).to_have_count(PAGE_SIZE)
    # The click is sent where the button is, without scrolling to it: scrolling there brings the
    # sentinel within reach, whose own loads rename the button ("Loading more photos...") and,
    # on a slow machine, hide it at the end before a pointer click lands (CI, stop 28).
    more = page.get_by_role("button", name="Load more photos")
    expect(more).to_be_visible()
    expect(more).to_be_enabled()
    more.dispatch_event("click")
    # At least a page more: the next may follow at once, before its tiles' photos give them
    # their heights (the sentinel re-observed within reach).
    expect(tiles(page).nth(2 * PAGE_SIZE - 1)).to_be_attached()
    # Each stack of near-copies shows as one photo (the demo set has near-copies of its own).
    stacks = page.request.get("/api/duplicates").json()["stacks"]
    shown = 192 - sum(stack["count"] - 1 for stack in stacks)
    for _ in range(shown // PAGE_SIZE + 1):
        count = tiles(page).count()
        if count == shown:
            break
        page.locator("#sentinel").scroll_into_view_if_needed()
        expect(tiles(page).nth(count)).to_be_attached()  # a scroll brought more
    expect(tiles(page)).to_have_count(shown)
    expect(page.get_by_text("No more photos")).to_be_visible()
    expect(page.get_by_role("button", name="Load more photos")).to_be_hidden()
    ids = tiles(page).evaluate_all("(all) => all.map((tile) => tile.dataset.id)")
    assert len(set(ids)) == shown


def test_new_words_errors_and_retry_say_what_happened(page: Page) -> None:
    page.goto("/")
    search(page, "blorfic")
    expect(page.locator(".hint")).to_contain_text(
        "New word \u201cblorfic\u201d: teach me by voting"
    )
    expect(tiles(page).nth(PAGE_SIZE - 1)).to_be_attached()  # photos to teach the word with

    page.route("**/api/search?*", lambda route: route.abort("internetdisconnected"))
    search_box = page.get_by_role("searchbox", name="Search photos")
    search_box.fill("pizza")
    search_box.press("Enter")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("The photos could not be loaded")
    expect(notice).to_contain_text("could not be reached")

    page.unroute("**/api/search?*")
    page.route(
        "**/api/search?*",
        lambda route: route.fulfill(status=500, json={"detail": "internal error"}),
    )
    notice.get_by_role("button", name="Try again").click()
    expect(notice).to_contain_text("The server had a problem (error 500)")

    page.unroute("**/api/search?*")
    notice.get_by_role("button", name="Try again").click()
    expect(notice).to_be_hidden()
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", re.compile("^pizza/"))


def test_a_new_word_is_taught_by_example(page: Page) -> None:
    page.goto("/")
    search(page, "florbix")
    hint = page.locator(".hint")
    expect(hint).to_contain_text("New word \u201cflorbix\u201d")
    with page.expect_file_chooser() as chooser:
        hint.get_by_role("button", name="Teach with an example photo").click()
    chooser.value.set_files(DEMO / "lotus" / "image_0003.jpg")

    heading = page.get_by_role("heading", name="Teaching \u201cflorbix\u201d by example")
    expect(heading).to_be_focused()
    expect(page.get_by_role("img", name="Your photo, image_0003.jpg")).to_be_visible()
    expect(tiles(page).first.locator("img")).to_have_attribute("alt", "lotus/image_0003.jpg")
    taught = [tiles(page).nth(index).get_attribute("data-id") for index in (0, 1)]
    for image_id in taught:
        tile = page.locator(f'#grid > .tile[data-id="{image_id}"]')
        tile.hover()
        tile.get_by_role("button", name="Relevant to \u201cflorbix\u201d", exact=True).click()
        expect(tile).to_have_attribute("data-vote", "1")

    page.get_by_role("button", name="See what I learned").click()
    expect(page.get_by_role("heading", name="Results for \u201cflorbix\u201d")).to_be_focused()
    expect(hint).to_contain_text(
        "Votes taught me about \u201cflorbix\u201d: 2 votes from 1 session."
    )
    first_two = tiles(page).evaluate_all("(all) => all.slice(0, 2).map((tile) => tile.dataset.id)")
    assert sorted(first_two) == sorted(taught)
    expect(tiles(page).first).to_have_class(re.compile(r"\blearned\b"))


def test_cloud_upload_through_a_presigned_post(open_page, site: str) -> None:
    """The cloud contract: POST /api/uploads gives an S3 presigned POST; the page sends the
    fields and then the file to S3, then polls /api/uploads/status until the file is in."""
    page = open_page(api_key=API_KEY)
    pagoda_id = _image_id(page, site, "pagoda/image_0001.jpg")
    asked: list[dict] = []
    sent: list[bytes] = []
    polls: dict[str, int] = {}

    def config(route: Route) -> None:
        route.fulfill(
            content_type="text/javascript",
            body='window.IMGSEARCH_CONFIG = {api: "", upload: "presigned"};',
        )

    def uploads(route: Route) -> None:
        request = route.request
        body = json.loads(request.post_data)
        asked.append({**body, "key_header": request.headers.get(API_KEY_HEADER.lower())})
        key = f"uploads/{body['filename']}"
        fields = {"key": key, "policy": "cG9saWN5", "x-amz-signature": "c2ln"}
        route.fulfill(
            status=201,
            json={"url": "https://bucket.test/", "fields": fields, "key": key, "expires_in": 300},
        )

    def bucket(route: Route) -> None:
        sent.append(route.request.post_data_buffer)
        route.fulfill(status=204, headers={"Access-Control-Allow-Origin": "*"})

    def status(route: Route) -> None:
        key = route.request.url.split("key=")[1].replace("%2F", "/").replace("%20", " ")
        polls[key] = polls.get(key, 0) + 1
        if polls[key] == 1:
            body = {"key": key, "status": "pending", "image_id": None, "reason": None}
        elif key.endswith("good.jpg"):
            body = {"key": key, "status": "present", "image_id": pagoda_id, "reason": None}
        else:
            reason = "not an image in a supported format"
            body = {"key": key, "status": "refused", "image_id": None, "reason": reason}
        route.fulfill(json=body)

    page.route("**/config.js", config)
    page.route("**/api/uploads", uploads)
    page.route("https://bucket.test/**", bucket)
    page.route("**/api/uploads/status?*", status)
    page.goto("/")
    page.set_input_files(
        "#add-input",
        files=[
            {"name": "good.jpg", "mimeType": "image/jpeg", "buffer": demo_image("pagoda")},
            {"name": "bad.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo"},
        ],
    )
    tray = page.get_by_role("region", name="1 added, 1 not added")
    expect(tray).to_be_visible()
    good, bad = tray.locator(".upload").all()
    expect(good).to_contain_text("Added")
    expect(bad).to_contain_text("Not added: not an image in a supported format")

    assert sorted(a["filename"] for a in asked) == ["bad.jpg", "good.jpg"]
    assert {a["content_type"] for a in asked} == {"image/jpeg"}
    assert {a["key_header"] for a in asked} == {API_KEY}
    for body in sent:  # S3 wants the policy fields before the file
        assert (
            body.index(b'name="key"')
            < body.index(b'name="x-amz-signature"')
            < body.index(b'name="file"')
        )
    assert demo_image("pagoda") in b"".join(sent)
    assert all(count == 2 for count in polls.values()), polls

    good.get_by_role("button", name="View").click()
    expect(page.get_by_role("dialog", name="pagoda/image_0001.jpg")).to_be_visible()


def _image_id(page: Page, site: str, key: str) -> str:
    found = page.request.get(f"{site}/api/images", params={"key": key}).json()
    return found["results"][0]["id"]


@pytest.mark.parametrize(("path", "drawn"), [("/docs", ".opblock"), ("/redoc", "[role=menuitem]")])
def test_the_api_docs_render_with_nothing_from_elsewhere(browser, site, path, drawn) -> None:
    """The docs pages draw every operation from the app's own assets: nothing is asked of
    another host (a request that would leave is aborted, as it would fail offline; ReDoc's
    "by Redocly" logo is a CDN image, which the Content-Security-Policy blocks before that)."""
    context = browser.new_context(base_url=site, viewport=DESKTOP)
    page = context.new_page()
    elsewhere: list[str] = []
    blocked: list[str] = []
    errors: list = []

    def off_site(route: Route) -> None:
        elsewhere.append(route.request.url)
        route.abort()

    page.route(lambda url: not url.startswith((site, "data:", "blob:")), off_site)
    page.on("pageerror", lambda error: errors.append(error))
    page.on("console", lambda message: _note_blocked(message, blocked))
    try:
        page.goto(path)
        expect(page.locator(drawn).first).to_be_visible()
        assert page.locator(drawn).count() >= 10  # every operation, not an error message
        assert "/api/search" in page.content()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"docs{path.replace('/', '-')}.png")
    finally:
        context.close()
    assert elsewhere == [] and errors == []
    assert all("cdn.redoc.ly" in message for message in blocked), blocked


@pytest.mark.model  # the three elephants are found for "elephant"
def test_a_page_on_another_origin_shows_the_api_images(browser, tmp_path, embedder, vocabulary):
    """Result URLs are paths from the API's root: a page served from another origin (its
    config.js naming the API) resolves them against the API, which allows that origin (CORS)
    and which the page's policy allows it to reach."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    page_origin, api_origin = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    service = make_service(
        tmp_path / "data",
        embedder,
        vocabulary,
        allowed_origins=[page_origin],
        page_origins=[api_origin],
    )
    for number in (1, 2, 3):
        service.add(f"elephant/{number}.jpg", demo_image("elephant", number))
    with live_server(create_app(service, web_dir=WEB_DIR), port=port) as site:
        context = browser.new_context(base_url=site, viewport=DESKTOP)
        page = context.new_page()
        blocked: list[str] = []
        page.on("console", lambda message: _note_blocked(message, blocked))
        page.route(
            "**/config.js",
            lambda route: route.fulfill(
                content_type="text/javascript",
                body=f'window.IMGSEARCH_CONFIG = {{api: "{api_origin}", upload: "direct"}};',
            ),
        )
        try:
            page.goto("/")
            search(page, "elephant")
            expect(tiles(page)).to_have_count(3)
            loaded = "[...document.querySelectorAll('#grid img')].every((i) => i.naturalWidth)"
            page.wait_for_function(f"() => {loaded}")
            sources = tiles(page).locator("img").evaluate_all("(all) => all.map((i) => i.src)")
        finally:
            context.close()
    assert all(src.startswith(f"{api_origin}/api/images/") for src in sources), sources
    assert blocked == []


def test_the_owner_sees_what_a_word_learned_and_can_reset_it(open_page, screenshot) -> None:
    from axe_playwright_python.sync_playwright import Axe

    word = "zqxowlets"  # no other test searches for it
    visitor = open_page()
    visitor.goto("/")
    search(visitor, word)
    tile_button(visitor, 2, f"Relevant to \u201c{word}\u201d").click()
    expect(visitor.locator("#toast")).to_contain_text("comes first")
    expect(visitor.locator("#learned")).to_be_hidden()  # without the key: nothing to see

    owner = open_page(api_key=API_KEY)
    owner.goto("/")
    search(owner, word)
    panel = owner.get_by_role("region", name="What votes taught this word")
    expect(panel).to_be_visible()
    panel.get_by_text("What votes taught").click()
    expect(panel).to_contain_text(f"\u201c{word}\u201d: 1 vote from 1 session and 1 client")
    expect(panel.get_by_role("listitem")).to_have_count(1)
    expect(panel.get_by_role("listitem")).to_contain_text("1 up, 0 down; weight for others 0")
    screenshot(owner, "panel")
    violations = Axe().run(owner, context="#learned").response["violations"]
    assert not violations, [(v["id"], v["help"]) for v in violations]

    panel.get_by_role("button", name="Reset this word").click()
    expect(owner.locator("#toast")).to_contain_text(f"\u201c{word}\u201d was reset: 1 vote removed")
    expect(owner.locator("#learned")).to_be_hidden()
