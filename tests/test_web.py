"""The web page, the map and the API docs in a real headless Chromium (Debian's), driven by Playwright.

One library (tests.test_server's gallery fixture), one server and one browser for the module; each test
loads a page once and checks several things on it. Screenshots go to ARTIFACTS.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline import Clipdex
from tests.conftest import serving
from tests.test_server import gallery  # the module's library, built as test_server builds it

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("CLIPDEX_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))

__all__ = ["gallery"]
pytestmark = pytest.mark.slow
if CHROMIUM is None:
    # CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
    pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("CI"), reason="no chromium here")]


@pytest.fixture(scope="module")
def server(gallery: Clipdex, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(gallery, tmp_path_factory.mktemp("thumbs")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM, "Chromium is missing: apt-get install chromium"
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def offline(browser: Any, server: str) -> Iterator[tuple[Any, list[str]]]:
    """A tab that can reach only the server: every request elsewhere is refused and recorded."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    elsewhere: list[str] = []

    def only_ours(route: Any) -> None:
        if route.request.url.startswith(server) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_ours)
    yield context.new_page(), elsewhere
    context.close()


def shot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def loaded(images: Any) -> None:
    """Wait (bounded) until every image matched has loaded, with pixels."""
    deadline = time.monotonic() + 10
    while not images.evaluate_all("imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"):
        assert time.monotonic() < deadline, "the thumbnails did not load"
        time.sleep(0.05)


def tile_ids(tab: Any) -> list[str]:
    return list(tab.locator("#results .tile").evaluate_all("tiles => tiles.map(t => t.dataset.id)"))


def test_gallery_search_filters_history_lightbox_and_keyboard(
    offline: tuple[Any, list[str]], server: str, gallery: Clipdex
) -> None:
    tab, elsewhere = offline
    rows = {r["id"]: r for r in gallery.collection.columns(["id", "path", "format", "width", "height"])}
    tab.goto(server + "/")
    status, tiles = tab.locator("#status"), tab.locator("#results .tile")

    # The first screen shows the collection: counts and its pictures, each a data-id element.
    expect(status).to_contain_text(f"{len(rows)} pictures in")
    expect(tiles).to_have_count(len(rows))
    assert set(tile_ids(tab)) == set(rows)
    loaded(tab.locator("#results img"))
    # Whole pictures (the aspect kept, nothing cropped), none shown over 2x the pixels it has.
    sizes = tiles.evaluate_all(
        """tiles => tiles.map(t => { const i = t.querySelector('img'), r = i.getBoundingClientRect(),
             box = t.getBoundingClientRect();
             return {id: t.dataset.id, w: r.width, h: r.height, inside: r.left >= box.left - 0.5 &&
                     r.right <= box.right + 0.5 && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5}; })"""
    )
    for s in sizes:
        row = rows[s["id"]]
        assert s["inside"] and s["h"] <= 2 * row["height"] + 0.5 and s["w"] <= 2 * row["width"] + 0.5, (s, row)
        assert abs(s["w"] / s["h"] - row["width"] / row["height"]) < 0.05 * row["width"] / row["height"] + 0.02
    shot(tab, "gallery")

    # "/" focuses the box from anywhere without typing itself; Enter searches; the URL keeps the query.
    tab.locator("#status").click()
    tab.keyboard.press("/")
    expect(tab.locator("#q")).to_be_focused()
    expect(tab.locator("#q")).to_have_value("")
    tab.keyboard.type("a sunset over the sea")
    with tab.expect_request(lambda r: "/api/query" in r.url) as asked:
        tab.keyboard.press("Enter")
    assert query_of(asked.value.url)["k"] == ["48"]  # as many as the Results box says
    expect(status).to_contain_text("results for “a sunset over the sea”")
    assert query_of(tab.url) == {"q": ["a sunset over the sea"]}
    assert tile_ids(tab) == [h.id for h in gallery.query("a sunset over the sea", k=48)]

    # A format chip narrows the results, and goes into the URL.
    tab.locator(".chip[data-key=format][data-value=PNG]").click()
    expect(tab.locator(".chip[data-value=PNG]")).to_have_attribute("aria-pressed", "true")
    pngs = {i for i, r in rows.items() if r["format"] == "PNG"}
    expect(tiles).to_have_count(len(pngs))
    assert set(tile_ids(tab)) == pngs and query_of(tab.url)["format"] == ["PNG"]

    # Back and Forward walk the searches; the box and chips follow.
    tab.go_back()
    expect(tiles).to_have_count(len(rows))
    expect(tab.locator(".chip[data-value=PNG]")).to_have_attribute("aria-pressed", "false")
    tab.go_back()
    expect(status).to_contain_text("the newest first")
    expect(tab.locator("#q")).to_have_value("")
    tab.go_forward()
    expect(tab.locator("#q")).to_have_value("a sunset over the sea")
    expect(status).to_contain_text("results for “a sunset over the sea”")

    # The lightbox: the picture and its facts, arrows step, Escape closes, "More like this" searches.
    first, second = tile_ids(tab)[:2]
    tiles.first.click()
    box = tab.locator("#lightbox")
    expect(box).to_have_attribute("open", "")
    expect(tab.locator("#lb-facts [data-fact=file]")).to_have_text(rows[first]["path"])
    expect(tab.locator("#lb-img")).to_have_js_property("complete", True)
    assert tab.locator("#lb-img").evaluate("i => i.naturalWidth") > 0
    shot(tab, "lightbox")
    assert query_of(tab.url)["open"] == [first]  # the link opens it
    tab.keyboard.press("ArrowRight")
    expect(box).to_have_attribute("data-id", second)
    expect(tab.locator("#lb-facts [data-fact=file]")).to_have_text(rows[second]["path"])
    assert query_of(tab.url)["open"] == [second]
    tab.reload()
    expect(box).to_have_attribute("data-id", second)
    expect(box).to_have_attribute("open", "")
    tab.go_back()  # Back closes the picture; the results stay
    expect(box).not_to_have_attribute("open", "")
    assert query_of(tab.url) == {"q": ["a sunset over the sea"]}
    tab.go_forward()
    expect(box).to_have_attribute("open", "")
    expect(box).to_have_attribute("data-id", second)
    tab.keyboard.press("Escape")
    expect(box).not_to_have_attribute("open", "")
    assert query_of(tab.url) == {"q": ["a sunset over the sea"]}
    tiles.first.click()
    tab.keyboard.press("Escape")  # closing a picture opened here leaves its history entry
    expect(box).not_to_have_attribute("open", "")
    tab.wait_for_function("() => !location.search.includes('open=')")
    tiles.first.click()
    tab.locator("#lb-like").click()
    expect(status).to_contain_text("results for a picture")
    assert query_of(tab.url) == {"like": [first]}
    expect(tab.locator("#query-images .query-image")).to_have_attribute("data-id", first)
    assert first not in tile_ids(tab)
    tab.go_back()  # to the search it came from, not to the open picture
    expect(status).to_contain_text("results for “a sunset over the sea”")
    expect(box).not_to_have_attribute("open", "")
    tab.go_forward()
    expect(status).to_contain_text("results for a picture")

    # Query algebra in the box: a stored image by its name, minus a text; errors as sentences.
    tab.fill("#q", "sunset.jpg - a dog")
    tab.press("#q", "Enter")
    expect(status).to_contain_text("results for a picture \u2212 “a dog”")
    sunset = next(i for i, r in rows.items() if r["path"].endswith("/sunset.jpg"))
    expect(tab.locator(f"#query-images .query-image[data-id='{sunset}']")).to_have_count(1)
    tab.fill("#q", "a + + b")
    tab.press("#q", "Enter")
    expect(status).to_have_text("Two operators in a row before '+'; write words + words - words.")
    expect(status).to_have_class("error")
    tab.fill("#k", "0")
    tab.fill("#q", "a dog")
    tab.press("#q", "Enter")
    expect(status).to_have_text("Results must be a whole number from 1 to 1000.")

    # Duplicates, a page of groups at a time, the keeper marked.
    tab.locator("#duplicates-link").click()
    expect(status).to_contain_text("could go (exact, near), freeing")
    expect(status).to_contain_text("similar shots are kept")
    exact = tab.locator(".group").first
    expect(exact.locator("h2")).to_have_text("Exact: 2 pictures")
    expect(exact.locator(".tile").first.locator(".badge")).to_have_text("keep")
    assert query_of(tab.url) == {"view": ["duplicates"]}
    loaded(exact.locator("img"))
    shot(tab, "duplicates")
    assert elsewhere == []


def test_the_page_fits_a_400_px_window_and_takes_a_dropped_image(browser: Any, server: str, gallery: Clipdex) -> None:
    tab = browser.new_page(viewport={"width": 400, "height": 800})
    tab.goto(server + "/?q=a+photo&format=JPEG")
    expect(tab.locator("#status")).to_contain_text("results for “a photo”")
    expect(tab.locator(".chip[data-value=JPEG]")).to_have_attribute("aria-pressed", "true")
    button = tab.locator("#go").bounding_box()
    assert button["x"] >= 0 and button["x"] + button["width"] <= 400
    assert tab.evaluate("document.documentElement.scrollWidth") <= 400
    tiles = tab.locator("#results .tile").evaluate_all("ts => ts.map(t => t.getBoundingClientRect().right)")
    assert tiles and max(tiles) <= 400
    shot(tab, "400px")

    # An image file dropped on the page: searched by, and shown in the box.
    photo = next(r["path"] for r in gallery.collection.columns(["path"]) if r["path"].endswith("/mixed/photo.jpg"))
    handle = tab.evaluate_handle(
        """(bytes) => { const dt = new DataTransfer();
           dt.items.add(new File([new Uint8Array(bytes)], 'photo.jpg', {type: 'image/jpeg'})); return dt; }""",
        list(Path(photo).read_bytes()),
    )
    tab.dispatch_event("body", "drop", {"dataTransfer": handle})
    expect(tab.locator("#status")).to_contain_text("results for photo.jpg")
    assert tab.locator("#query-images img").get_attribute("src").startswith("blob:")
    assert tab.locator("#q").input_value() == ""
    tab.close()


def test_the_map_names_clusters_pans_zooms_and_opens_a_picture(
    offline: tuple[Any, list[str]], server: str, gallery: Clipdex
) -> None:
    tab, elsewhere = offline
    names = {r["cluster_name"] for r in gallery.collection.columns(["cluster_name"])}
    tab.goto(server + "/map")
    expect(tab.locator("#note")).to_contain_text(f"{gallery.collection.count()} pictures, {len(names)} clusters")
    assert set(tab.locator(".label").all_inner_texts()) == names
    stage = tab.locator("#stage")
    before = stage.evaluate("s => s.style.transform")
    tab.locator("#zoom-in").click()
    zoomed = stage.evaluate("s => s.style.transform")
    assert zoomed != before
    tab.mouse.move(600, 450)
    tab.mouse.down()
    tab.mouse.move(700, 500, steps=4)
    tab.mouse.up()
    assert stage.evaluate("s => s.style.transform") != zoomed
    tab.locator("#reset").click()
    tab.mouse.wheel(0, -300)
    # Hover: a sharp 512 px thumbnail, kept inside the window.
    on_top = tab.locator(".point").evaluate_all(
        """ps => ps.filter(p => { const r = p.getBoundingClientRect();
             const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
             return top && top.closest('.point') === p && r.x > 0 && r.y > 60; }).map(p => p.dataset.id)"""
    )
    assert on_top, "no point on the map can be clicked"
    point = tab.locator(f".point[data-id='{on_top[0]}']")
    point.hover()
    preview = tab.locator("#preview")
    expect(preview).to_be_visible()
    assert "size=512" in tab.locator("#preview-img").get_attribute("src")
    expect(tab.locator("#preview-img")).to_have_js_property("complete", True)
    box = preview.bounding_box()
    assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= 1200 and box["y"] + box["height"] <= 900
    shot(tab, "map")
    image_id = point.get_attribute("data-id")
    point.click()
    tab.wait_for_url(f"**/?like={image_id}&open={image_id}")
    expect(tab.locator("#lightbox")).to_have_attribute("data-id", image_id)
    expect(tab.locator("#lightbox")).to_have_attribute("open", "")
    assert elsewhere == []


def test_the_api_docs_render_with_no_other_host(offline: tuple[Any, list[str]], server: str) -> None:
    tab, elsewhere = offline
    tab.goto(server + "/docs")
    expect(tab.locator(".swagger-ui .title").first).to_contain_text("clipdex")
    expect(tab.locator(".opblock-summary-path[data-path='/api/query']")).to_have_count(1)
    shot(tab, "docs")
    assert elsewhere == []
