"""The HTTP API through FastAPI's test client, a real uvicorn on loopback, and the CLI's --server."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline import Clipdex
from pipeline.analyse.classify import classify
from pipeline.analyse.clusters import cluster
from pipeline.query import Term
from pipeline.server import overview as overview_module
from pipeline.server.app import create_app
from pipeline.server.files import media_type
from tests import corpus
from tests.conftest import free_port, open_library, run


@pytest.fixture
def client(lib: Clipdex, tmp_path: Path) -> TestClient:
    return TestClient(create_app(lib, thumbnails=tmp_path / "thumbs", max_upload=200_000))


def png_bytes(tmp_path: Path) -> bytes:
    return corpus.pattern_image(tmp_path / "upload.png", seed=3).read_bytes()


def test_search_info_and_similar_by_id(client: TestClient, lib: Clipdex) -> None:
    info = client.get("/api/info").json()
    assert (info["images"], info["dimension"]) == (17, 32)
    assert info["disk_bytes"] > 0 and len(info["roots"]) == 1 and info["last_ingest"]  # as clipdex info --json
    assert info["indexes"] == []  # exact search below index_threshold
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


# The page's endpoints, on one library of real files built once for the module: two folders, an
# exact copy, a photo with a camera in its EXIF, a tall and a wide picture, clusters and tags.
CAMERA_EXIF = {0x010F: "Canon", 0x0110: "Canon EOS 5D"}


def build_gallery(root: Path, model: str) -> Clipdex:
    """The gallery library (shared with tests/test_web.py): ingested, clustered, tagged."""
    photos = root / "photos"
    corpus.good_images(photos / "mixed")
    trip = photos / "trip"
    trip.mkdir()
    shutil.copy(photos / "mixed" / "photo.jpg", trip / "photo copy.jpg")  # an exact duplicate
    camera = Image.Exif()
    camera.update(CAMERA_EXIF)
    camera.get_ifd(0x8769)[0x9003] = "2019:03:04 10:00:00"  # DateTimeOriginal
    rng = np.random.default_rng(5)
    wide = Image.fromarray(rng.integers(0, 255, (200, 600, 3), dtype=np.uint8))
    wide.save(trip / "wide.jpg", quality=85, exif=camera.tobytes())
    Image.fromarray(rng.integers(0, 255, (300, 90, 3), dtype=np.uint8)).save(trip / "tall.png")
    library = open_library(str(root / "db"), model)
    library.ingest([photos])
    cluster(library.collection, library.encoder, 3)
    classify(library.collection, library.encoder, ["cat", "dog"], store="tag")
    return library


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, export_cache: Path) -> Iterator[Clipdex]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPDEX_CACHE", str(export_cache))
        env.setenv("CLIPDEX_WORKERS", "0")
        yield build_gallery(tmp_path_factory.mktemp("gallery"), tiny_model)


@pytest.fixture(scope="module")
def web(gallery: Clipdex, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    return TestClient(create_app(gallery, thumbnails=tmp_path_factory.mktemp("gallery-thumbs")))


def ids_of(body: dict[str, Any], key: str = "hits") -> list[str]:
    return [h["id"] for h in body[key]]


def test_docs_are_served_offline_from_our_own_assets(web: TestClient) -> None:
    html = web.get("/docs").text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
    assert urls and "swagger-ui-bundle.js" in html
    assert not re.search(r"https?://", html), "the docs page names another host"
    for url in urls:
        assert url.startswith("/"), url
        assert web.get(url).status_code == 200, url
    assert web.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_originals_answer_range_requests(web: TestClient, gallery: Clipdex) -> None:
    hit = next(r for r in gallery.collection.columns(["id", "path"]) if r["path"].endswith("wide.jpg"))
    data = Path(hit["path"]).read_bytes()
    url = f"/api/images/{hit['id']}"
    whole = web.get(url)
    assert (whole.status_code, whole.headers["accept-ranges"], whole.content) == (200, "bytes", data)
    for header, first, last in [("bytes=0-99", 0, 99), ("bytes=100-", 100, len(data) - 1), ("bytes=-50", len(data) - 50, len(data) - 1), (f"bytes=10-{len(data) * 2}", 10, len(data) - 1)]:  # fmt: skip
        part = web.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
        assert part.content == data[first : last + 1]
    for bad in (f"bytes={len(data)}-", "bytes=-0"):
        refused = web.get(url, headers={"Range": bad})
        assert (refused.status_code, refused.headers["content-range"]) == (416, f"bytes */{len(data)}")
    assert web.get(url, headers={"Range": "bytes=0-1,5-9"}).content == data  # several ranges: the whole file


def test_originals_browsers_cannot_show_come_as_jpeg(web: TestClient, gallery: Clipdex) -> None:
    rows = {r["format"]: r for r in gallery.collection.columns(["id", "path", "format", "width", "height"])}
    for kind in ("TIFF", "HEIF"):
        if kind not in rows:  # no HEIF encoder on this machine
            continue
        row = rows[kind]
        assert web.get(f"/api/images/{row['id']}").headers["content-type"] == media_type(kind)
        sent = web.get(f"/api/images/{row['id']}", params={"format": "jpeg"})
        assert sent.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(sent.content)).size == (row["width"], row["height"])
    jpeg = rows["JPEG"]
    assert web.get(f"/api/images/{jpeg['id']}?format=jpeg").content == Path(jpeg["path"]).read_bytes()
    assert web.get(f"/api/images/{jpeg['id']}?format=png").json()["detail"] == (
        "format=png: the only conversion is format=jpeg"
    )


def test_filters_narrow_browse_and_search_alike(web: TestClient, gallery: Clipdex) -> None:
    facets = web.get("/api/facets").json()
    count = gallery.collection.count()
    assert facets["images"] == count and sum(facets["formats"].values()) == count
    trip = next(f for f in facets["folders"] if f.endswith("/trip"))
    assert facets["folders"][trip] == 3
    assert set(facets["tags"]) == {"tag"} and sum(facets["tags"]["tag"].values()) == count
    assert [c["cluster"] for c in facets["clusters"]] == [0, 1, 2] and all(c["label"] for c in facets["clusters"])
    assert (facets["first"], facets["last"]) < ("2019-03-05", "2019-03-05") < (facets["last"], facets["last"])
    rows = {r["id"]: r for r in gallery.collection.columns(["id", "path", "format", "taken_at", "tag", "cluster"])}
    tag = next(iter(facets["tags"]["tag"]))
    cases = [
        ({"format": ["PNG", "GIF"]}, lambda r: r["format"] in ("PNG", "GIF")),
        ({"folder": trip}, lambda r: r["path"].startswith(trip + "/")),
        ({"folder": trip + "/"}, lambda r: r["path"].startswith(trip + "/")),
        ({"after": "2019-03-04", "before": "2019-03-04"}, lambda r: r["path"].endswith("wide.jpg")),
        ({"after": "2024-05"}, lambda r: r["taken_at"] is None or r["taken_at"].year == 2024),
        ({"before": "2019"}, lambda r: r["path"].endswith("wide.jpg")),
        ({"tag": f"tag:{tag}"}, lambda r: r["tag"] == tag),
        ({"cluster": [1, 2], "format": "JPEG"}, lambda r: r["cluster"] in (1, 2) and r["format"] == "JPEG"),
        ({"folder": "/x' OR '1'='1"}, lambda r: False),  # quoted: a folder of that name, which none is in
        ({"tag": "tag:' OR 1=1 OR tag='"}, lambda r: False),
    ]
    for params, expected in cases:
        wanted = {i for i, r in rows.items() if expected(r)}
        browsed = web.get("/api/browse", params={**params, "limit": 200}).json()
        assert browsed["total"] == len(wanted) and set(ids_of(browsed, "images")) == wanted, params
        found = web.get("/api/query", params={**params, "q": "a photo", "k": 100}).json()
        assert set(ids_of(found)) == wanted, params
    page = web.get("/api/browse", params={"limit": 5, "offset": 5}).json()
    assert page["total"] == count
    assert ids_of(page, "images") == ids_of(web.get("/api/browse?limit=10").json(), "images")[5:]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"after": "June"}, "from date 'June': write it as 2024-06-01 (or 2024-06, or 2024)"),
        ({"after": "2024-02", "before": "2024-01"}, "the date range 2024-02-01 to 2024-01-31 is empty; put the"),
        ({"folder": "trip"}, "folder 'trip': give the folder as an absolute path, as the results show it"),
        ({"tag": "vector:x"}, "tag 'vector:x': 'vector' is not a tag column; tag columns: tag"),
        ({"tag": "beach"}, "tag 'beach': write it as column:value, e.g. tag:beach"),
        ({"q": "a + + b"}, "two operators in a row before '+'; write words + words - words"),
        ({"q": "a dog -"}, "the query ends with + or -; add words or an image after it"),
        ({"q": "nothing.jpg"}, "nothing.jpg: no stored image has this name, and the server never reads files by"),
        ({"q": "like:nope"}, "like:nope: no image with this id in the collection"),
        ({"q": ""}, "the search text is empty; give some words, e.g. search for 'a dog'"),
        ({"q": "x", "k": 0}, "k: input should be greater than or equal to 1"),
    ],
)
def test_the_page_gets_sentences_for_bad_requests(web: TestClient, params: dict[str, Any], detail: str) -> None:
    body = web.get("/api/query", params=params).json()
    assert (body.get("message") or body["detail"]).startswith(detail)


def test_query_algebra_in_the_box(web: TestClient, gallery: Clipdex) -> None:
    paths = {Path(r["path"]).name: r["id"] for r in gallery.collection.columns(["id", "path"])}
    found = web.get("/api/query", params={"q": "sunset.jpg", "k": 3}).json()
    assert found["terms"] == [{"kind": "id", "value": paths["sunset.jpg"], "weight": 1.0}]
    assert ids_of(found) == [h.id for h in gallery.similar_to(paths["sunset.jpg"], k=3)]
    mixed = web.get("/api/query", params={"q": "2:a beach - sunset.jpg + a dog", "k": 5}).json()
    assert [(t["kind"], t["weight"]) for t in mixed["terms"]] == [("text", 2.0), ("id", -1.0), ("text", 1.0)]
    expected = gallery.query([Term("a beach", 2.0), Term(paths["sunset.jpg"], -1.0, "id"), Term("a dog")], k=5)
    assert ids_of(mixed) == [h.id for h in expected]
    liked = web.get("/api/query", params={"like": paths["photo.jpg"], "k": 2}).json()
    assert paths["photo.jpg"] not in ids_of(liked) and liked["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_lightbox_details_name_the_camera_and_labels(web: TestClient, gallery: Clipdex) -> None:
    wide = next(r for r in gallery.collection.columns(["id", "path"]) if r["path"].endswith("wide.jpg"))
    body = web.get(f"/api/images/{wide['id']}/details").json()
    assert (body["camera"], body["taken_at"], body["width"], body["height"]) == (
        "Canon EOS 5D",
        "2019-03-04T10:00:00",
        600,
        200,
    )
    assert body["size"] == Path(wide["path"]).stat().st_size and set(body["labels"]) == {
        "tag",
        "cluster",
        "cluster_name",
    }


def test_duplicates_come_a_page_at_a_time(web: TestClient, gallery: Clipdex) -> None:
    first = web.get("/api/duplicates", params={"limit": 1}).json()
    assert first["total"] >= 1 and len(first["groups"]) == 1
    exact = first["groups"][0]
    assert exact["tier"] == "exact" and {Path(m["path"]).name for m in exact["members"]} == {
        "photo.jpg",
        "photo copy.jpg",
    }
    assert first["summary"]["deletable"] >= 1 and first["summary"]["bytes"] >= exact["members"][1]["size"]
    # The same figures as clipdex duplicates: similar shots are not counted as deletable.
    from pipeline.analyse.duplicates import find_duplicates, summarise  # noqa: PLC0415

    cli = summarise(find_duplicates(gallery.collection))
    expected = {"groups": cli.groups, "by_tier": cli.by_tier, "files": cli.files, "deletable": cli.deletable,
                "bytes": cli.deletable_bytes, "tiers": ["exact", "near"]}  # fmt: skip
    assert first["summary"] == expected
    assert web.get("/api/duplicates", params={"offset": first["total"]}).json()["groups"] == []
    assert web.get("/api/duplicates", params={"limit": 201}).status_code == 422


def test_the_map_is_computed_once_per_collection_version(
    web: TestClient, gallery: Clipdex, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = overview_module.map_points
    monkeypatch.setattr(overview_module, "map_points", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = web.get("/api/map").json()
    assert len(first["points"]) == gallery.collection.count() and all(
        0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in first["points"]
    )
    names = {c["label"] for c in first["clusters"]}
    assert len(names) == 3 and {p["label"] for p in first["points"]} == names
    assert web.get("/api/map").json() == first
    cluster(gallery.collection, gallery.encoder, 2)  # a write: the next map is computed afresh
    assert len(web.get("/api/map").json()["clusters"]) == 2
    assert len(calls) == 2  # the first request and the first after the write
    cluster(gallery.collection, gallery.encoder, 3)
    assert "<title>clipdex map</title>" in web.get("/map").text


def test_the_401_names_the_token_option(gallery: Clipdex, tmp_path: Path) -> None:
    detail = TestClient(create_app(gallery, token="s3cret", thumbnails=tmp_path)).get("/api/info").json()["detail"]
    assert "--token or CLIPDEX_TOKEN" in detail
