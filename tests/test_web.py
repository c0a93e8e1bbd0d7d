"""The web page in a real headless Chromium (Debian's), driven by Playwright: type, drop, click."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import Clipdex

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("CLIPDEX_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))

pytestmark = pytest.mark.slow
if CHROMIUM is None:
    # CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
    pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("CI"), reason="no chromium here")]


@pytest.fixture
def page() -> Iterator[object]:
    assert CHROMIUM, "Chromium is missing: apt-get install chromium"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        yield tab
        browser.close()


def test_type_a_query_drop_an_image_and_ask_for_more_like_this(
    page: object,
    live_server: str,
    lib: Clipdex,
    photos: Path,
) -> None:
    tab = page  # a playwright Page
    tab.goto(live_server + "/")  # type: ignore[attr-defined]
    status = tab.locator("#status")  # type: ignore[attr-defined]
    playwright.expect(status).to_contain_text("17 images")

    # Type a query from the keyboard: "/" focuses the box from anywhere, Enter searches.
    tab.locator("h1").click()  # type: ignore[attr-defined]
    tab.keyboard.press("/")  # type: ignore[attr-defined]
    tab.keyboard.type("a sunset over the sea")  # type: ignore[attr-defined]
    tab.keyboard.press("Enter")  # type: ignore[attr-defined]
    cards = tab.locator("main article")  # type: ignore[attr-defined]
    playwright.expect(cards).to_have_count(17)  # k=24 > 17 images
    playwright.expect(status).to_contain_text("results for “a sunset over the sea”")
    first_thumb = cards.first.locator("img")
    playwright.expect(first_thumb).to_have_js_property("complete", True)
    assert first_thumb.evaluate("img => img.naturalWidth") > 0  # the thumbnail really loaded
    expected = [h.id for h in lib.search("a sunset over the sea", k=24)]
    shown = cards.locator("img").evaluate_all("imgs => imgs.map(i => i.src.split('/api/images/')[1].split('/')[0])")
    assert shown == expected

    # Drop an image file onto the page (a DataTransfer with a real file's bytes).
    data = (photos / "good" / "photo.jpg").read_bytes()
    handle = tab.evaluate_handle(  # type: ignore[attr-defined]
        """(bytes) => { const dt = new DataTransfer();
           dt.items.add(new File([new Uint8Array(bytes)], 'photo.jpg', {type: 'image/jpeg'})); return dt; }""",
        list(data),
    )
    tab.dispatch_event("#drop", "drop", {"dataTransfer": handle})  # type: ignore[attr-defined]
    playwright.expect(status).to_contain_text("results for photo.jpg")
    playwright.expect(cards.first.locator(".name")).to_contain_text("photo.jpg")
    playwright.expect(cards.first.locator(".score")).to_have_text("1.000")

    # Click a result for "more like this": the clicked image leaves the results.
    target = cards.nth(1)
    name = target.locator(".name").inner_text().split(" · ")[0]
    target.locator("button.thumb").click()
    playwright.expect(status).to_contain_text(f"results for {name}")
    playwright.expect(cards.first.locator(".name")).not_to_contain_text(name)

    # The k control and an empty result say so.
    tab.fill("#min-score", "0.9999")  # type: ignore[attr-defined]
    tab.fill("#q", "a dog")  # type: ignore[attr-defined]
    tab.press("#q", "Enter")  # type: ignore[attr-defined]
    playwright.expect(status).to_contain_text("No good match for “a dog” at or above score 0.9999")
    playwright.expect(cards).to_have_count(0)

    tab.fill("#min-score", "")  # type: ignore[attr-defined]
    tab.fill("#k", "5")  # type: ignore[attr-defined]
    tab.press("#q", "Enter")  # type: ignore[attr-defined]
    playwright.expect(cards).to_have_count(5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "web-search.png"), full_page=True)  # type: ignore[attr-defined]
