"""Videos over HTTP and in the page: the original with Range and its type, a moment's frame as its
thumbnail, kind= and moments= on the searches, the --server client, and the lightbox playing the
video from the moment (a real Chromium). One library and one server for the module; the videos
are made here with tests.test_video's helper (scenes of known pictures at known times)."""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from pipeline import Clipdex
from pipeline.cli.client import Client
from tests.conftest import open_library, run, serving
from tests.test_video import H264, PICTURES, SIDE, write_video
from tests.test_web import CHROMIUM, expect, playwright, shot

# Debian's Chromium plays no H.264: the page is tested with the WebM.
WEBM = next((c for c in ("libvpx", "libvpx-vp9") if c in av.codecs_available), None)
RED = np.zeros((SIDE, SIDE, 3), np.uint8)
RED[..., 0] = 255

pytestmark = pytest.mark.skipif(WEBM is None, reason="this PyAV has no VP8 or VP9 encoder")


@dataclass
class Served:
    lib: Clipdex
    url: str
    webm: Path  # checkers 0-2 s, red 2-4 s, gradient 4-6 s
    mp4: Path  # rings 0-2 s
    moments: dict[float, str]  # the WebM's moments by time


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, export_cache: Path) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("video-web")
    root = base / "library"
    assert WEBM is not None
    webm = write_video(root / "clips" / "scenes.webm", [PICTURES["checkers"], RED, PICTURES["gradient"]], WEBM)
    mp4 = write_video(root / "clips" / "rings.mp4", [PICTURES["rings"]], H264)
    (root / "photos").mkdir()
    Image.fromarray(PICTURES["checkers"]).save(root / "photos" / "checkers.png")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPDEX_CACHE", str(export_cache))
        lib = open_library(str(base / "db"), tiny_model)
        report = lib.ingest([root])
        assert (report.added, report.failed) == (3, 0), report
        rows = lib.collection.columns(["id", "path", "timestamp"])
        moments = {float(r["timestamp"]): str(r["id"]) for r in rows if r["path"] == str(webm)}
        assert sorted(moments) == [0.0, 2.0, 4.0]
        with serving(lib, base / "thumbs") as url:
            yield Served(lib, url, webm, mp4, moments)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def test_the_original_by_video_or_moment_id_with_range_and_its_type(served: Served) -> None:
    file_id = served.moments[0.0].split("@")[0]
    data = served.webm.read_bytes()
    for image_id in (file_id, served.moments[2.0]):
        status, headers, body = get(f"{served.url}/api/images/{image_id}", {"Range": "bytes=100-1099"})
        assert status == 206 and headers["content-type"] == "video/webm", (status, headers)
        assert headers["content-range"] == f"bytes 100-1099/{len(data)}" and body == data[100:1100]
    status, headers, body = get(f"{served.url}/api/images/{file_id}")
    assert (status, headers["content-type"], headers["accept-ranges"], body) == (200, "video/webm", "bytes", data)
    mp4_id = served.lib.collection.get_by_path(str(served.mp4))
    assert mp4_id is not None
    status, headers, _ = get(f"{served.url}/api/images/{mp4_id.id}", {"Range": "bytes=-10"})
    assert (status, headers["content-type"]) == (206, "video/mp4")
    assert get(f"{served.url}/api/images/{file_id}", {"Range": f"bytes={len(data)}-"})[0] == 416
    assert get(f"{served.url}/api/images/{file_id}@999999")[0] == 404

    # Only the file ingest indexed is ever sent: a link put in its place is refused, thumbnail too.
    aside = served.mp4.with_suffix(".aside")
    os.rename(served.mp4, aside)
    try:
        os.symlink(served.webm, served.mp4)
        for path in (f"/api/images/{mp4_id.id}", f"/api/images/{mp4_id.id}/thumbnail?size=128"):
            status, _, body = get(served.url + path)
            assert status == 410 and b"symbolic link" in body, (path, status, body)
    finally:
        if served.mp4.is_symlink():
            served.mp4.unlink()
        os.rename(aside, served.mp4)
    assert get(f"{served.url}/api/images/{mp4_id.id}", {"Range": "bytes=0-0"})[0] == 206


def test_a_moment_s_thumbnail_is_its_frame_and_details_say_when(served: Served) -> None:
    expected = {0.0: PICTURES["checkers"], 2.0: RED, 4.0: PICTURES["gradient"]}
    for seconds, moment in served.moments.items():
        for _ in range(2):  # made, then from the cache
            status, headers, body = get(f"{served.url}/api/images/{moment}/thumbnail?size=128")
            assert status == 200 and headers["content-type"] == "image/jpeg"
            frame = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.float32)
            assert frame.shape[:2] == (SIDE, SIDE)  # never enlarged past the video's own size
            # Each scene's mean colour, within what VP8 and JPEG lose (the scenes differ by 60+).
            assert np.abs(frame.mean((0, 1)) - expected[seconds].mean((0, 1))).max() < 25, (seconds, frame.mean((0, 1)))
    details = get_json(f"{served.url}/api/images/{served.moments[2.0]}/details")
    assert {k: details[k] for k in ("kind", "timestamp", "duration", "fps", "format", "camera")} == {
        "kind": "video",
        "timestamp": 2.0,
        "duration": 6.0,
        "fps": 8.0,
        "format": "WEBM",
        "camera": None,
    }
    assert details["codec"] in ("vp8", "vp9") and details["file_id"] == served.moments[0.0].split("@")[0]
    status, headers, body = get(f"{served.url}/api/images/{served.moments[4.0]}?format=jpeg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_kind_and_moments_on_the_searches_browse_and_facets(served: Served) -> None:
    url = served.url
    files = {str(served.webm), str(served.mp4)}
    for path in ("/api/search?q=a+picture", "/api/query?q=a+picture"):
        hits = get_json(f"{url}{path}&kind=video&moments=true&k=10")["hits"]
        assert sorted(h["path"] for h in hits) == sorted(files)  # each video once
        for h in hits:
            assert h["kind"] == "video" and h["timestamp"] is not None and h["id"].startswith(h["file_id"] + "@")
            assert h["duration"] == (6.0 if h["path"] == str(served.webm) else 2.0)
            times = [m["timestamp"] for m in h["moments"]]
            assert times == sorted(times) and h["timestamp"] not in times
        images = get_json(f"{url}{path}&kind=image")["hits"]
        assert [h["kind"] for h in images] == ["image"]
    assert get(f"{url}/api/search?q=x&kind=movie")[0] == 422
    assert get(f"{url}/api/query?q=x&kind=movie")[0] == 400
    # A video's id in like= stands for its first moment (the checkers scene); an unknown id is a 404.
    file_id = served.moments[0.0].split("@")[0]
    liked = get_json(f"{url}/api/query?like={file_id}&kind=image")["hits"]
    assert liked[0]["path"].endswith("checkers.png")
    assert get(f"{url}/api/query?like=nope")[0] == 404
    liked = get_json(f"{url}/api/query?like={served.moments[2.0]}&kind=video")["hits"]
    assert [h["path"] for h in liked] == [str(served.mp4)]  # the liked moment's own video left out

    like = get_json(f"{url}/api/similar/{served.moments[0.0]}?kind=video&moments=true")["hits"]
    assert [h["path"] for h in like] == [str(served.mp4)]  # its own video left out
    mine = served.lib.similar_to(served.moments[0.0], kind="video", moments=True)
    assert [(h.id, h.timestamp) for h in mine] == [(h["id"], h["timestamp"]) for h in like]

    facets = get_json(f"{url}/api/facets")
    assert (facets["images"], facets["kinds"]) == (3, {"video": 2, "image": 1})
    browsed = get_json(f"{url}/api/browse?kind=video")
    assert browsed["total"] == 2 and {i["timestamp"] for i in browsed["images"]} == {0.0}

    # The --server client reads the video fields: the same answer as the library's own search.
    remote = Client(url).search("a picture", kind="video", moments=True, k=10)
    local = served.lib.search("a picture", kind="video", moments=True, k=10)

    def facts(hits: list[Any]) -> list[Any]:
        return [
            (h.id, h.kind, h.file_id, h.timestamp, h.duration, [(m.id, m.timestamp) for m in h.moments]) for h in hits
        ]

    assert facts(remote) == facts(local) and len(remote) == 2
    photo = served.webm.parent.parent / "photos" / "checkers.png"
    uploaded = Client(url).similar(str(photo), kind="video", moments=True)
    assert facts(uploaded) == facts(served.lib.similar(photo, kind="video", moments=True))
    assert uploaded[0].path == str(served.webm) and uploaded[0].timestamp == 0.0  # its checkers scene
    by_id = Client(url).similar_to(served.moments[2.0], kind="image")
    assert [h.kind for h in by_id] == ["image"]
    assert all(
        m.score == pytest.approx(n.score, abs=1e-4)
        for r, h in zip(remote, local, strict=True)
        for m, n in zip(r.moments, h.moments, strict=True)
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium here")
def test_the_lightbox_plays_the_video_from_the_moment(served: Served) -> None:
    assert CHROMIUM, "Chromium is missing: apt-get install chromium"
    best = next(h for h in served.lib.search("a picture", kind="video", k=10) if h.path == str(served.webm))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--mute-audio"])
        try:
            tab = browser.new_page(viewport={"width": 1100, "height": 800})
            tab.goto(f"{served.url}/?q=a+picture&kind=video")
            videos = tab.locator("#results .tile")
            expect(videos).to_have_count(2)
            expect(tab.locator(".chip[data-key=kind][data-value=video]")).to_have_attribute("aria-pressed", "true")
            webm = tab.locator(f'#results .tile[title="{served.webm}"]')
            expect(webm.locator(".play")).to_have_text(f"▶ 0:0{int(best.timestamp or 0)}")
            expect(webm.locator("img")).to_have_attribute("src", re.compile(re.escape(best.id.replace("@", "%40"))))

            # Opened by its link at the 4 s moment: the player starts there, the strip lists the moments.
            moment = served.moments[4.0]
            tab.goto(f"{served.url}/?q=a+picture&kind=video&open={moment}")
            video = tab.locator("#lb-video")
            expect(video).to_be_visible()
            wait_for(tab, "document.getElementById('lb-video').readyState >= 1")
            wait_for(tab, "Math.abs(document.getElementById('lb-video').currentTime - 4) < 0.3")
            assert "/api/images/" in (video.get_attribute("src") or "") and "#t=4" in (video.get_attribute("src") or "")
            assert tab.evaluate("document.activeElement.id") != "lb-video"  # the arrows step, not seek
            strip = tab.locator("#lb-moments button")
            expect(strip).to_have_count(3)
            expect(tab.locator("#lb-moments button[aria-current=true]")).to_have_attribute("data-id", moment)
            expect(tab.locator("#lb-facts [data-fact=moment]")).to_have_text("0:04 of 0:06")
            # A moment of the strip jumps the player there and goes into the link.
            tab.locator(f'#lb-moments button[data-id="{served.moments[2.0]}"]').click()
            wait_for(tab, "Math.abs(document.getElementById('lb-video').currentTime - 2) < 0.3")
            assert f"open={served.moments[2.0].replace('@', '%40')}" in tab.url
            expect(tab.locator("#lb-facts [data-fact=moment]")).to_have_text("0:02 of 0:06")
            shot(tab, "video")
            # The arrows step to the other video (H.264, which this Chromium may not play: it says so).
            step = "ArrowRight" if tab.locator("#lb-next").is_enabled() else "ArrowLeft"
            tab.keyboard.press(step)
            mp4_moment = next(h.id for h in served.lib.search("a picture", kind="video") if h.path == str(served.mp4))
            expect(tab.locator("#lightbox")).to_have_attribute("data-id", mp4_moment)
            expect(tab.locator("#lb-facts [data-fact=moment]")).to_have_text("0:00 of 0:02")
            wait_for(
                tab,
                "document.getElementById('lb-video').readyState >= 1 || !!document.querySelector('[data-fact=playback]')",
            )
            tab.keyboard.press("Escape")
            expect(tab.locator("#lightbox")).not_to_have_attribute("open", "")
            assert video.get_attribute("src") is None  # closed: not playing on, not fetching
        finally:
            browser.close()


def wait_for(tab: Any, condition: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not tab.evaluate(condition):
        assert time.monotonic() < deadline, f"never true: {condition}"
        time.sleep(0.05)


def test_the_cli_asks_the_server_for_videos_as_it_asks_the_library(served: Served) -> None:
    args = ("a picture", "--kind", "video", "--moments", "--json", "-k", "10")
    remote = [json.loads(line) for line in run("search", *args, "--server", served.url).stdout.splitlines()]
    local = [json.loads(line) for line in run("search", *args, "--db", served.lib.collection.uri).stdout.splitlines()]
    assert [(h["id"], h["kind"], h["timestamp"]) for h in remote] == [
        (h["id"], h["kind"], h["timestamp"]) for h in local
    ]
    assert {h["path"] for h in remote} == {str(served.webm), str(served.mp4)}  # each video once
    assert [[m["timestamp"] for m in h["moments"]] for h in remote] == [
        [m["timestamp"] for m in h["moments"]] for h in local
    ]
