"""The HTTP API through FastAPI's test client, a real uvicorn on loopback, and the CLI's --server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline import Clipdex
from pipeline.server.app import create_app
from tests import corpus
from tests.conftest import free_port, run


@pytest.fixture
def client(lib: Clipdex, tmp_path: Path) -> TestClient:
    return TestClient(create_app(lib, thumbnails=tmp_path / "thumbs", max_upload=200_000))


def png_bytes(tmp_path: Path) -> bytes:
    return corpus.pattern_image(tmp_path / "upload.png", seed=3).read_bytes()


def test_search_info_and_similar_by_id(client: TestClient, lib: Clipdex) -> None:
    info = client.get("/api/info").json()
    assert (info["images"], info["dimension"]) == (17, 32)
    body = client.get("/api/search", params={"q": "a sunset", "k": 5}).json()
    hits = body["hits"]
    assert len(hits) == 5 and body["took_ms"] >= 0
    assert [h["id"] for h in hits] == [h.id for h in lib.search("a sunset", k=5)]
    more = client.get(f"/api/similar/{hits[0]['id']}", params={"k": 3}).json()["hits"]
    assert len(more) == 3 and hits[0]["id"] not in {h["id"] for h in more}
    filtered = client.get("/api/search", params={"q": "x", "k": 50, "where": "format = 'GIF'"}).json()["hits"]
    assert [Path(h["path"]).name for h in filtered] == ["animated.gif"]


def test_upload_search_and_embeddings(client: TestClient, lib: Clipdex, photos: Path, tmp_path: Path) -> None:
    photo = (photos / "good" / "photo.jpg").read_bytes()
    hits = client.post("/api/similar", files={"file": ("q.jpg", photo, "image/jpeg")}, params={"k": 2}).json()["hits"]
    assert hits[0]["path"] == str(photos / "good" / "photo.jpg")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    text = client.post("/api/embed/text", json={"text": "a dog"}).json()
    assert len(text["vector"]) == 32
    assert text["vector"] == pytest.approx(lib.embed_text("a dog").tolist(), abs=1e-6)
    image = client.post("/api/embed/image", files={"file": ("q.png", png_bytes(tmp_path), "image/png")}).json()
    assert len(image["vector"]) == 32


def test_thumbnails_are_made_once_and_originals_served_by_id(client: TestClient, lib: Clipdex, tmp_path: Path) -> None:
    hit = lib.search("anything", k=1, where="format = 'JPEG' AND width = 64")[0]
    first = client.get(f"/api/images/{hit.id}/thumbnail", params={"size": 128})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    made = list((tmp_path / "thumbs").iterdir())
    assert len(made) == 1
    assert max(Image.open(io.BytesIO(first.content)).size) <= 128
    again = client.get(f"/api/images/{hit.id}/thumbnail", params={"size": 128})
    assert again.content == first.content and list((tmp_path / "thumbs").iterdir()) == made
    original = client.get(f"/api/images/{hit.id}")
    assert original.content == Path(hit.path).read_bytes()


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "detail"),
    [
        ("get", "/api/images/nope", {}, 404, "no image with id nope"),
        ("get", "/api/images/nope/thumbnail", {}, 404, "no image with id nope"),
        ("get", "/api/similar/nope", {}, 404, "no image with id nope"),
        ("get", "/api/search", {"params": {"q": "x", "where": "nope = 1"}}, 400, "--where 'nope = 1': "),
        ("post", "/api/similar", {"files": {"file": ("a.jpg", b"not an image", "image/jpeg")}}, 400, "a.jpg: not an"),
        ("post", "/api/similar", {"files": {"file": ("e.jpg", b"", "image/jpeg")}}, 400, "the upload is empty"),
        ("post", "/api/similar", {"files": {"file": ("big.png", b"x" * 300_000, "image/png")}}, 413, "the upload is"),
        ("get", "/api/images/x/thumbnail?size=99", {}, 400, "size must be one of 128, 256, 512"),
    ],
)
def test_bad_requests_get_clear_4xx(
    client: TestClient, method: str, url: str, kwargs: dict[str, object], status: int, detail: str
) -> None:
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)


def test_paths_are_never_taken_from_the_client(client: TestClient) -> None:
    for url in ("/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/%2Fetc%2Fpasswd/thumbnail"):
        assert client.get(url).status_code == 404


def test_token_is_required_on_every_request(lib: Clipdex, tmp_path: Path) -> None:
    client = TestClient(create_app(lib, token="s3cret", thumbnails=tmp_path / "t"))
    for url in ("/", "/api/info", "/api/search?q=x", "/openapi.json"):
        assert client.get(url).status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/info?token=s3cret").status_code == 200
    assert client.get("/api/info?token=wrong").status_code == 401


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/similar", "/api/similar/{image_id}", "/api/embed/text", "/api/embed/image"} <= set(
        paths
    )
    assert {"/api/info", "/api/images/{image_id}", "/api/images/{image_id}/thumbnail"} <= set(paths)
    assert "<title>clipdex</title>" in client.get("/").text


def test_cli_queries_go_through_a_running_server(
    live_server: str, lib: Clipdex, photos: Path, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("models.load_encoder", lambda spec: pytest.fail("the CLI loaded a model"))
    local = [h.id for h in lib.search("a red car", k=4)]
    lines = run("search", "a red car", "-k", "4", "--json", "--server", live_server).stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == local
    monkeypatch.setenv("CLIPDEX_SERVER", live_server)
    paths = run("similar", str(photos / "good" / "photo.jpg"), "-k", "1", "--paths").stdout
    assert paths == f"{photos}/good/photo.jpg\n"
    assert len(run("similar", "--id", local[0], "-k", "2", "--json").stdout.splitlines()) == 2
    bad = run("search", "x", "--where", "nope = 1", ok=False)
    assert bad.stderr.startswith(f"Error: --server {live_server}: 400 --where 'nope = 1': ")


def test_cli_says_when_the_server_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("search", "x", "--server", url, ok=False)
    assert result.stderr.startswith(f"Error: --server {url}: cannot connect (")
    assert result.stderr.rstrip().endswith("start it with `clipdex serve`, or drop --server")


def test_serve_refuses_a_public_address_without_a_token(db: str) -> None:
    result = run("serve", "--host", "0.0.0.0", "--db", db, ok=False)
    assert "--host 0.0.0.0 is reachable from other machines: set --token or CLIPDEX_TOKEN" in result.stderr
