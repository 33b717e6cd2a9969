"""The result sections of a search by words, in headless Chromium against a real server on the
demo photos: the cutoff after the confident matches, the plain note when there is none, and
"Did you mean" for a misspelt word. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect
from support.browser import SCREENSHOTS, live_server
from support.services import demo_copy

from imgsearch.api.app import create_app
from imgsearch.cli import WEB_DIR

pytestmark = pytest.mark.browser

expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def service(tmp_path_factory, model_demo_data, model_embedder, vocabulary):
    data_dir = tmp_path_factory.mktemp("sections") / "data"
    return demo_copy(model_demo_data, data_dir, model_embedder, vocabulary)


@pytest.fixture(scope="module")
def site(service) -> Iterator[str]:
    with live_server(create_app(service, web_dir=WEB_DIR)) as url:
        yield url


@pytest.fixture
def page(browser: Browser, site: str, request) -> Iterator[Page]:
    context = browser.new_context(base_url=site, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{request.node.name}.png", animations="disabled")
    context.close()
    assert not errors, errors


def search(page: Page, words: str) -> None:
    page.goto("/")
    box = page.get_by_role("searchbox", name="Search photos")
    box.fill(words)
    box.press("Enter")
    expect(page.get_by_role("heading", name=f"Results for \u201c{words}\u201d")).to_be_visible()
    expect(page.locator("#grid > .tile").first).to_be_visible()


def grid_rows(page: Page) -> list[str]:
    """The grid in order: each photo's key (its alt text), each section as `[its class]`."""
    return page.locator("#grid > li").evaluate_all(
        """(items) => items.map((item) => item.classList.contains("tile")
            ? item.querySelector("img").alt
            : `[${[...item.classList].find((name) => name !== "results-section")}]`)"""
    )


def test_best_matches_then_a_divider_then_other_photos(page: Page, service) -> None:
    matches = service.search_text("elephant", limit=20).matches
    assert 0 < matches < 12  # the demo's 12 elephants: some sure, some not

    search(page, "elephant")
    grid = page.locator("#grid")
    expect(grid.get_by_role("heading", name=f"Best matches ({matches})")).to_be_visible()
    expect(grid.get_by_role("heading", name="Other photos")).to_be_visible()
    rows = grid_rows(page)
    assert rows[0] == "[results-heading-matches]"
    divider = rows.index("[results-divider]")
    # Exactly the confident matches stand above the divider, and they are all elephants.
    above = rows[1:divider]
    assert len(above) == matches
    assert all(key.startswith("elephant/") for key in above), above
    assert rows.count("[results-divider]") == 1
    assert "[results-empty]" not in rows


def test_no_photo_looks_like_the_word_and_it_may_be_taught(page: Page, service) -> None:
    assert service.search_text("dog", limit=20).matches == 0  # the demo has no dogs

    search(page, "dog")
    grid = page.locator("#grid")
    empty = grid.locator(".results-empty")
    expect(empty).to_contain_text("No photo looks like \u201cdog\u201d")
    expect(grid.get_by_role("heading", name="Other photos")).to_be_visible()
    rows = grid_rows(page)
    assert rows[:2] == ["[results-empty]", "[results-heading-other]"]
    assert "[results-heading-matches]" not in rows and "[results-divider]" not in rows
    # The offer to teach opens the file chooser for an example photo.
    with page.expect_file_chooser() as chooser:
        empty.get_by_role("button", name="Teach \u201cdog\u201d with an example photo").click()
    assert chooser.value is not None


def test_did_you_mean_leads_to_the_word_it_knows(page: Page) -> None:
    search(page, "elefant")
    suggestion = page.locator("#grid .results-suggestion")
    expect(suggestion).to_have_text("Did you mean elephant?")
    suggestion.get_by_role("link", name="elephant").click()
    expect(page).to_have_url(re.compile(r"\?q=elephant$"))
    expect(page.get_by_role("heading", name="Results for \u201celephant\u201d")).to_be_visible()
    expect(page.locator("#grid .results-heading-matches")).to_be_visible()
    expect(page.locator("#grid .results-suggestion")).to_have_count(0)


def test_each_chip_says_how_many_photos_it_stands_for(page: Page, service) -> None:
    """The chips read as plain names with their photo counts, as the API counts them."""
    counted = {
        c["label"]: c["photos"]
        for c in service_classes(service, "elephant")
        if isinstance(c["photos"], int)
    }
    assert counted and max(counted.values()) > 0, counted
    search(page, "elephant")
    chips = page.locator("#interpretation .chip")
    expect(chips.first).to_be_visible()
    for label, photos in counted.items():
        chip = chips.filter(has_text=label).first
        expect(chip.locator(".chip-count")).to_have_text(str(photos))
        expect(chip).to_have_attribute("title", re.compile(rf"\({photos} photos?\)$"))


def service_classes(service, words: str) -> list[dict]:
    """The classes the API's first page names, with their counts (its JSON, through FastAPI)."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(service)) as client:
        answer = client.get("/api/search", params={"q": words, "limit": 20})
    return answer.json()["interpretation"]["classes"]
