"""The HTTP server under load and attack: a blocked loop, planted links, swapped files, huge bodies,
pixel bombs, odd Authorization headers, and the limits uvicorn runs with."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from pipeline import Clipdex
from pipeline.errors import BadOption
from pipeline.server import app as server
from pipeline.server.app import create_app
from pipeline.server.limits import KEEP_ALIVE_S, MAX_CONNECTIONS, MAX_HEADER_BYTES, MAX_TEXT_CHARS
from storage import ImageRecord
from tests import corpus
from tests.conftest import free_port, serving

JPEG_START = b"\xff\xd8\xff"


@pytest.fixture
def client(lib: Clipdex, tmp_path: Path) -> TestClient:
    return TestClient(create_app(lib, thumbnails=tmp_path / "thumbs", max_upload=200_000))


def stored(lib: Clipdex, image_format: str) -> ImageRecord:
    hit = lib.search("anything", k=1, where=f"format = '{image_format}'")[0]
    record = lib.collection.get(hit.id)
    assert record is not None
    return record


def is_jpeg(data: bytes) -> bool:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.format == "JPEG"


def one_line_410(response: httpx.Response, path: str, why: str) -> None:
    assert response.status_code == 410
    detail = response.json()["detail"]
    assert detail.startswith(f"{path} {why}") and detail.endswith(
        "run clipdex ingest to bring the collection up to date"
    )
    assert "\n" not in detail


# 1. No blocking work on the event loop


def test_uploads_being_embedded_never_block_other_requests(
    lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, release = threading.Event(), threading.Event()
    real = lib.encoder.embed_pixels

    def slow(pixels: Any) -> Any:  # the first upload holds the model until the test lets it go
        inside.set()
        release.wait(30)
        return real(pixels)

    monkeypatch.setattr(lib.encoder, "embed_pixels", slow)
    image = corpus.large_jpeg(tmp_path / "big.jpg", megapixels=2).read_bytes()
    statuses: list[int] = []

    with serving(lib, tmp_path / "thumbs") as url:

        def upload(route: str) -> None:
            files = {"file": ("big.jpg", image, "image/jpeg")}
            statuses.append(httpx.post(f"{url}{route}", files=files, timeout=60).status_code)

        threads = [threading.Thread(target=upload, args=(r,)) for r in ["/api/embed/image", "/api/similar"] * 2]
        for thread in threads:
            thread.start()
        try:
            assert inside.wait(30), "no upload reached the model"
            started = time.monotonic()
            info = httpx.get(f"{url}/api/info", timeout=10)  # a blocked loop would time out here
            took = time.monotonic() - started
        finally:
            release.set()
            for thread in threads:
                thread.join(60)
    assert info.status_code == 200 and info.json()["images"] == 17
    assert took < 5
    assert statuses == [200] * 4


# 2. The thumbnail cache


def test_thumbnails_default_to_a_private_folder_in_the_user_cache(
    lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    thumbnails = tmp_path / "xdg-cache" / "clipdex" / "thumbnails"
    client = TestClient(create_app(lib))
    record = stored(lib, "PNG")
    response = client.get(f"/api/images/{record.id}/thumbnail", params={"size": 128})
    assert response.status_code == 200 and is_jpeg(response.content)
    [folder] = thumbnails.iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [p.name for p in folder.iterdir()] == [f"{record.id}-{record.hash}-128.jpg"]
    folder.chmod(0o755)  # loosened by someone: tightened again on the next request
    assert client.get(f"/api/images/{record.id}/thumbnail", params={"size": 128}).status_code == 200
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_links_and_fifos_planted_in_the_cache_are_never_followed(
    client: TestClient, lib: Clipdex, tmp_path: Path
) -> None:
    record = stored(lib, "JPEG")
    secret = tmp_path / "secret.jpg"  # a JPEG, so a followed link would pass for a thumbnail
    corpus.pattern_image(secret, seed=9, size=(16, 16))
    before = secret.read_bytes()
    (tmp_path / "thumbs").mkdir(mode=0o700)
    for size, plant in ((128, lambda p: p.symlink_to(secret)), (256, os.mkfifo)):
        cached = tmp_path / "thumbs" / f"{record.id}-{record.hash}-{size}.jpg"
        plant(cached)
        response = client.get(f"/api/images/{record.id}/thumbnail", params={"size": size})
        assert response.status_code == 200 and is_jpeg(response.content)
        assert response.content != before
        assert stat.S_ISREG(cached.lstat().st_mode)  # the link or FIFO was replaced by the thumbnail
        assert cached.read_bytes() == response.content
    assert secret.read_bytes() == before


def test_concurrent_first_requests_for_one_thumbnail_all_get_a_jpeg(lib: Clipdex, tmp_path: Path) -> None:
    record = stored(lib, "PNG")
    barrier = threading.Barrier(8)
    answers: list[httpx.Response] = []
    with serving(lib, tmp_path / "thumbs") as url:

        def fetch() -> None:
            barrier.wait(10)
            answers.append(httpx.get(f"{url}/api/images/{record.id}/thumbnail", params={"size": 512}, timeout=30))

        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert [a.status_code for a in answers] == [200] * 8
    assert all(is_jpeg(a.content) and a.headers["content-type"] == "image/jpeg" for a in answers)
    assert [p.name for p in (tmp_path / "thumbs").iterdir()] == [f"{record.id}-{record.hash}-512.jpg"]


# 3. Only the regular file that was indexed


def test_a_stored_file_replaced_by_a_link_is_gone(client: TestClient, lib: Clipdex, tmp_path: Path) -> None:
    record = stored(lib, "PNG")
    copy = tmp_path / "copy.png"
    shutil.copy2(record.path, copy)  # same bytes, size and mtime: only the link itself is wrong
    os.unlink(record.path)
    os.symlink(copy, record.path)
    one_line_410(client.get(f"/api/images/{record.id}"), record.path, "is a symbolic link")
    one_line_410(client.get(f"/api/images/{record.id}/thumbnail"), record.path, "is a symbolic link")


def test_a_stored_file_of_another_size_is_gone(client: TestClient, lib: Clipdex) -> None:
    record = stored(lib, "PNG")
    assert client.get(f"/api/images/{record.id}/thumbnail").status_code == 200  # cached now
    mtime = os.stat(record.path).st_mtime_ns
    Path(record.path).write_bytes(Path(record.path).read_bytes() + b"\0" * 10)
    os.utime(record.path, ns=(mtime, mtime))  # only the size tells
    one_line_410(client.get(f"/api/images/{record.id}"), record.path, "changed since it was ingested")
    one_line_410(client.get(f"/api/images/{record.id}/thumbnail"), record.path, "changed since it was ingested")


def test_fifos_and_folders_at_a_stored_path_never_hang_the_server(client: TestClient, lib: Clipdex) -> None:
    for image_format, swap in (("PNG", os.mkfifo), ("GIF", os.mkdir)):
        record = stored(lib, image_format)
        os.unlink(record.path)
        swap(record.path)
        urls = (f"/api/images/{record.id}", f"/api/images/{record.id}/thumbnail")
        answers: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answers.extend(client.get(u) for u in urls), daemon=True)  # noqa: B023
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), f"a {swap.__name__} at the stored path hung the server"
        assert len(answers) == 2
        for answer in answers:
            one_line_410(answer, record.path, "is no longer a regular file")


def test_originals_are_typed_by_their_format_never_by_their_name(lib: Clipdex, tmp_path: Path) -> None:
    page = tmp_path / "odd" / "x.html"
    corpus.pattern_image(tmp_path / "odd" / "x.png", seed=5).rename(page)
    assert lib.ingest([page]).added == 1
    record = lib.collection.get_by_path(os.path.realpath(page))
    assert record is not None and record.format == "PNG"
    client = TestClient(create_app(lib, thumbnails=tmp_path / "thumbs"))
    response = client.get(f"/api/images/{record.id}")
    assert response.status_code == 200 and response.content == page.read_bytes()
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-length"] == str(page.stat().st_size)
    jpeg = client.get(f"/api/images/{stored(lib, 'JPEG').id}")
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content.startswith(JPEG_START)


def test_the_page_has_a_content_security_policy(client: TestClient) -> None:
    response = client.get("/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/info").headers["x-content-type-options"] == "nosniff"


# 4. Caps on bodies, pixels and texts


def test_a_declared_body_over_the_cap_is_refused_before_it_is_read(lib: Clipdex, tmp_path: Path) -> None:
    with (
        serving(lib, tmp_path / "thumbs") as url,
        socket.create_connection(("127.0.0.1", int(url.rsplit(":")[-1]))) as s,
    ):
        s.settimeout(10)
        s.sendall(  # a 1 GB body is announced and never sent: the answer must come without it
            b"POST /api/embed/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        answer = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"detail":"the upload is over 32 MB; send a smaller image"}')


def test_a_streamed_body_over_the_cap_is_cut_off(client: TestClient) -> None:
    body = iter([b"--b\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"] + [b"x" * 50_000] * 10)
    response = client.post(
        "/api/embed/image", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "the upload is over 195 KB; send a smaller image"


def test_a_pixel_bomb_upload_is_refused_with_a_reason(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("1", (14000, 14000)).save(buffer, "TIFF", compression="group4")
    assert len(buffer.getvalue()) < 20_000
    files = {"file": ("bomb.tif", buffer.getvalue(), "image/tiff")}
    for route in ("/api/similar", "/api/embed/image"):
        response = client.post(route, files=files)
        assert response.status_code == 413
        assert response.json()["detail"] == (
            "bomb.tif: 14000x14000 is 196.0 MP, over the 50 MP cap for uploads; send a smaller image"
        )


def test_texts_over_the_cap_never_reach_the_model_or_its_cache(
    client: TestClient, lib: Clipdex, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.post("/api/embed/text", json={"text": "a" * MAX_TEXT_CHARS}).status_code == 200
    monkeypatch.setattr(lib, "embed_text", lambda text: pytest.fail("a text over the cap was embedded"))
    long = "a" * (MAX_TEXT_CHARS + 1)
    for response in (
        client.post("/api/embed/text", json={"text": long}),
        client.get("/api/search", params={"q": long}),
    ):
        assert response.status_code == 422
        assert "at most 1000 characters" in response.json()["detail"][0]["msg"]


def test_an_upload_name_in_a_message_is_one_short_line(client: TestClient) -> None:
    name = b"evil\t\x0bname" + b"x" * 500 + b".jpg"  # raw: httpx would percent-escape these
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"Content-Type: image/jpeg\r\n\r\nnot an image\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    detail = client.post("/api/similar", content=body, headers=headers).json()["detail"]
    assert detail.startswith("evil name" + "x" * 191 + ": not an image clipdex can read")


# 5. Authorization per RFC 7235


def test_the_bearer_scheme_is_case_blind_and_required(lib: Clipdex, tmp_path: Path) -> None:
    client = TestClient(create_app(lib, token="s3cret", thumbnails=tmp_path / "t"))
    for good in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret "):
        assert client.get("/api/info", headers={"Authorization": good}).status_code == 200, good
    for bad in ("s3cret", "Basic s3cret", "Bearer", "Bearer wrong", "Bearers3cret"):
        refused = client.get("/api/info", headers={"Authorization": bad})
        assert refused.status_code == 401, bad
        assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/info").headers["www-authenticate"] == "Bearer"
    record = stored(lib, "PNG")
    assert client.get(f"/api/images/{record.id}/thumbnail?token=s3cret").status_code == 200  # the page's way


@pytest.mark.parametrize("token", ["", "   ", " s3cret"])
def test_an_empty_token_is_refused_when_the_app_is_made(lib: Clipdex, token: str) -> None:
    with pytest.raises(BadOption, match=r"^--token is empty or has spaces around it; give a token like"):
        create_app(lib, token=token)


# 6. uvicorn's limits


def test_serve_runs_uvicorn_with_named_limits(lib: Clipdex, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: seen.update(kwargs, app=app))
    server.serve(lib, "127.0.0.1", 8123, None)
    app = seen.pop("app")
    assert seen["limit_concurrency"] == MAX_CONNECTIONS
    assert seen["timeout_keep_alive"] == KEEP_ALIVE_S
    assert seen["h11_max_incomplete_event_size"] == MAX_HEADER_BYTES and seen["http"] == "h11"
    seen["port"] = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, **seen))  # every option is one this uvicorn knows
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not uvicorn_server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{seen['port']}/api/info"
        assert httpx.get(url, timeout=10).status_code == 200
        try:  # h11 refuses a head still unfinished past the cap: a 400, or a reset while still sending
            refused = httpx.get(url, headers={"X-Padding": "x" * (64 * MAX_HEADER_BYTES)}, timeout=10).status_code
        except (httpx.ReadError, httpx.WriteError):  # not a timeout: a hang must fail
            refused = 400
        assert refused == 400
    finally:
        uvicorn_server.should_exit = True
        thread.join(10)


# 7. OpenAPI


def test_openapi_lists_error_statuses_and_image_types(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    original = paths["/api/images/{image_id}"]["get"]["responses"]
    assert {"200", "401", "404", "410"} <= set(original)
    assert {"image/png", "image/jpeg", "application/octet-stream"} <= set(original["200"]["content"])
    thumbnail = paths["/api/images/{image_id}/thumbnail"]["get"]["responses"]
    assert "image/jpeg" in thumbnail["200"]["content"] and "application/json" not in thumbnail["200"]["content"]
    assert {"400", "410"} <= set(thumbnail)
    assert {"400", "413"} <= set(paths["/api/similar"]["post"]["responses"])


def test_the_page_gets_the_token_in_a_cookie_never_in_its_urls(lib: Clipdex, tmp_path: Path) -> None:
    client = TestClient(create_app(lib, token="s3cret", thumbnails=tmp_path / "t"))
    first = client.get("/?token=s3cret", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"].lower()
    assert "clipdex_token=s3cret" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/")  # the cookie, kept by the client as a browser keeps it
    assert page.status_code == 200 and "token" not in page.text
    hit = client.get("/api/search", params={"q": "a"}).json()["hits"][0]
    assert client.get(f"/api/images/{hit['id']}/thumbnail").status_code == 200
    assert client.get("/openapi.json").status_code == 200  # /docs loads it with the same cookie
    stranger = TestClient(create_app(lib, token="s3cret", thumbnails=tmp_path / "t"), cookies={"clipdex_token": "no"})
    assert stranger.get("/api/info").status_code == 401


def test_a_huge_invalid_text_is_not_echoed_back(client: TestClient) -> None:
    response = client.post("/api/embed/text", json={"text": "x" * 200_000})  # under the body cap, over the text cap
    assert response.status_code == 422
    assert len(response.content) < 2_000 and "xxxx" not in response.text
