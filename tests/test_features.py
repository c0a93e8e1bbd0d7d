"""Library features: honest scores, duplicates in tiers, zero-shot tags, evaluation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import Clipdex, ClipdexError
from pipeline.analyse.classify import classify
from pipeline.analyse.duplicates import find_duplicates
from pipeline.analyse.evaluate import evaluate
from pipeline.config import Settings
from pipeline.query import Term
from tests import corpus
from tests.conftest import open_library, run


def test_within_keeps_results_close_to_the_best(lib: Clipdex) -> None:
    hits = lib.query([Term("a red car")], k=17)
    close = lib.query([Term("a red car")], k=17, within=0.01)
    assert close == [h for h in hits if h.score >= hits[0].score - 0.01]
    assert close[0] == hits[0]


def test_honest_drops_what_a_generic_caption_fits_as_well(lib: Clipdex) -> None:
    hits = lib.query([Term("a red car")], k=17)
    honest = lib.query([Term("a red car")], k=17, honest=True)
    ids, vectors = lib.collection.vectors([h.id for h in hits])
    query = lib.query_vector([Term("a red car")])
    generic = [
        lib.embed_text(t) for t in ("a photo", "an image", "a picture", "a photo of something", "a blurry photo")
    ]
    expected = [
        h
        for h in hits
        if float(vectors[ids.index(h.id)] @ query) > max(float(vectors[ids.index(h.id)] @ g) for g in generic)
    ]
    assert honest == expected
    assert lib.query([Term("a photo")], k=17, honest=True) == []  # the baseline itself never beats itself


def test_cli_says_no_good_match(lib: Clipdex, db: str) -> None:
    result = run("search", "a photo", "--honest", "--db", db)
    assert (result.stdout, result.stderr) == ("", "no good match (no image fits better than a generic caption)\n")


@pytest.fixture
def album(tmp_path: Path) -> Path:
    """A copy, a re-encoded resize, a burst of two shots, and unrelated pictures."""
    root = tmp_path / "album"
    original = corpus.large_jpeg(root / "original.jpg", megapixels=0.3, seed=1)
    shutil.copy(original, root / "copy.jpg")
    with Image.open(original) as im:
        im.resize((im.width // 2, im.height // 2)).save(root / "small.png")
    for i, name in enumerate(("burst1.jpg", "burst2.jpg")):
        path = corpus.large_jpeg(root / name, megapixels=0.3, seed=7)
        with Image.open(path) as im:
            im.crop((i * 12, 0, im.width - 12 + i * 12, im.height)).save(path, quality=70 + i * 20)
        os.utime(path, (1_700_000_000 + i * 5, 1_700_000_000 + i * 5))
    for seed in (20, 21, 22):
        other = corpus.pattern_image(root / f"other{seed}.png", seed=seed)
        os.utime(other, (1_650_000_000 + seed * 3600, 1_650_000_000 + seed * 3600))  # hours apart
    for name in ("original.jpg", "copy.jpg", "small.png"):
        os.utime(root / name, (1_600_000_000, 1_600_000_000))
    return root


def test_duplicates_come_in_tiers_with_the_largest_as_keeper(album: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([album])
    groups = find_duplicates(lib.collection, near=0.9995, similar=0.98, burst_seconds=30)
    tiers = {g.tier: sorted(Path(m.path).name for m in g.members) for g in groups}
    assert tiers["exact"] == ["copy.jpg", "original.jpg"]
    assert Path(groups[0].keeper.path).name in ("copy.jpg", "original.jpg")
    near = next(g for g in groups if g.tier == "near")
    assert sorted(Path(m.path).name for m in near.members)[1] == "small.png"  # with one of the copies
    assert Path(near.keeper.path).name != "small.png"  # the larger picture is kept
    assert sorted(Path(m.path).name for g in groups if g.tier == "similar" for m in g.members) == [
        "burst1.jpg",
        "burst2.jpg",
    ]
    out = run("duplicates", "--near", "0.9995", "--similar", "0.98", "--burst", "30", "--db", db, "--json").stdout
    *lines, summary = [json.loads(line) for line in out.splitlines()]  # a group a line, then the totals
    assert [line["tier"] for line in lines] == [g.tier for g in groups]
    assert summary["summary"]["groups"] == len(groups)


def test_classify_tags_and_stores_them_for_where(lib: Clipdex, db: str) -> None:
    tags = classify(lib.collection, lib.encoder, ["cat", "dog", "car"], store="tag")
    assert len(tags) == 17
    assert {t.label for t in tags} <= {"cat", "dog", "car"}
    label = tags[0].label
    hits = lib.search("anything", k=50, where=f"tag = '{label}'")
    assert {h.id for h in hits} == {t.id for t in tags if t.label == label}
    lines = run("classify", "--labels", "cat,dog,car", "--db", db, "--json").stdout.splitlines()
    assert [json.loads(line)["label"] for line in lines] == [t.label for t in tags]
    with pytest.raises(ClipdexError, match="at least two labels"):
        classify(lib.collection, lib.encoder, ["cat"])
    with pytest.raises(ClipdexError, match=r"needs exactly one \{\} for the label"):
        classify(lib.collection, lib.encoder, ["cat", "dog"], prompt="a photo")


def test_eval_reports_recall_both_ways(tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "captioned"
    for seed in range(12):
        corpus.pattern_image(folder / f"img{seed}.png", seed=seed)
        (folder / f"img{seed}.txt").write_text(f"picture number {seed}")
    import models  # noqa: PLC0415

    encoder = models.load_encoder(models.EncoderSpec(model=tiny_model, device="cpu", precision="fp32"))
    report = evaluate(encoder, folder)
    assert report.images == 12
    for recalls in (report.text_to_image, report.image_to_text):
        assert list(recalls) == [1, 5, 10]
        assert 0 <= recalls[1] <= recalls[5] <= recalls[10] <= 1
    data = json.loads(run("eval", str(folder), "--model", tiny_model, "--json").stdout)
    assert data["images"] == 12
    assert data["text_to_image_R@10"] == report.text_to_image[10]
    corpus.pattern_image(tmp_path / "plain" / "a.png", seed=1)
    with pytest.raises(ClipdexError, match="no captioned images"):
        evaluate(encoder, tmp_path / "plain")


def test_cluster_names_and_stores_groups(lib: Clipdex, db: str) -> None:
    from pipeline.analyse.clusters import cluster, kmeans, silhouette  # noqa: PLC0415

    found = cluster(lib.collection, lib.encoder, 3)
    assert sum(c.size for c in found) == 17
    assert len(found) == 3 and all(len(c.name.split(", ")) == 3 for c in found)
    rows = lib.collection.columns(["cluster", "cluster_name"])
    assert {r["cluster"] for r in rows} == {c.number for c in found}
    biggest = found[0]
    assert len(lib.search("x", k=50, where=f"cluster = {biggest.number}")) == biggest.size
    out = run("cluster", "--auto", "--db", db, "--json").stdout.splitlines()
    assert sum(json.loads(line)["images"] for line in out) == 17
    # k-means finds planted clusters, and the silhouette prefers the right k.
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    points = np.concatenate([c + 0.05 * rng.standard_normal((30, 16)) for c in centres]).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    _, labels = kmeans(points, 4, rng)
    assert sorted(np.bincount(labels)) == [30, 30, 30, 30]
    distance = 1 - points @ points.T
    assert silhouette(distance, labels) > silhouette(distance, kmeans(points, 2, rng)[1])


def test_map_is_one_self_contained_page(lib: Clipdex, db: str, tmp_path: Path) -> None:
    out = tmp_path / "map.html"
    run("map", "--out", str(out), "--db", db)
    page = out.read_text()
    assert page.count("data:image/jpeg;base64,") == 17
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside


def test_reembed_switches_models_without_mixing_and_resumes(
    photos: Path, db: str, tiny_model: str, other_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models  # noqa: PLC0415
    from pipeline.maintain.reembed import reembed  # noqa: PLC0415
    from storage import Collection, Staging  # noqa: PLC0415

    (photos / "good" / "photo.txt").write_text("a dog on the beach")
    old = open_library(db, tiny_model)
    old.ingest([photos / "good"])
    before = {p: s.id for p, s in old.collection.file_states().items()}
    new_encoder = models.load_encoder(models.EncoderSpec(model=other_model, device="cpu"))

    # Interrupted after the first batch: the collection still answers with the old model only.
    real_add = Staging.add
    calls: list[int] = []

    def crash_after_first(self: Staging, records: list[object]) -> None:
        calls.append(len(records))
        real_add(self, records)  # type: ignore[arg-type]
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Staging, "add", crash_after_first)
    monkeypatch.setattr(new_encoder, "_batch_size", 5)
    with pytest.raises(KeyboardInterrupt):
        reembed(Collection.open(db), new_encoder, commit_rows=5)  # a commit after each batch
    assert Clipdex.open(db, settings=Settings(workers=0)).encoder.fingerprint == old.encoder.fingerprint
    monkeypatch.setattr(Staging, "add", real_add)

    report = reembed(Collection.open(db), new_encoder)
    assert (report.reembedded, report.resumed, report.failed) == (12, 5, 0)
    lib = Clipdex.open(db, settings=Settings(workers=0))  # the collection's model is now the other one
    assert lib.encoder.fingerprint == new_encoder.fingerprint
    assert {p: s.id for p, s in lib.collection.file_states().items()} == before  # same ids, nothing re-scanned
    photo = lib.collection.get_by_path(str(photos / "good" / "photo.jpg"))
    assert photo is not None and photo.caption == "a dog on the beach"
    assert np.allclose(photo.vector, lib.embed_image(photos / "good" / "photo.jpg"), atol=1e-5)
    assert np.allclose(photo.caption_vector, lib.embed_text("a dog on the beach"), atol=1e-5)  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"holds vectors of local-dir:.*other-model"):
        Clipdex.open(db, model=tiny_model, settings=Settings(workers=0))
    assert lib.ingest([photos / "good"]).unchanged == 17
    result = run("reembed", "--db", db, "--model", other_model, ok=False)
    assert "already uses local-dir:" in result.stderr


def test_reembed_keeps_one_row_per_moment_and_resumes_a_staged_video(
    tmp_path: Path, db: str, tiny_model: str, other_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models  # noqa: PLC0415
    from pipeline.ingest.video import DecodedVideo, decode_media  # noqa: PLC0415
    from pipeline.maintain.reembed import reembed  # noqa: PLC0415
    from storage import Collection, Staging  # noqa: PLC0415
    from tests.test_video import PICTURES, write_video  # noqa: PLC0415

    video = write_video(tmp_path / "photos" / "clip.mp4", [PICTURES["checkers"], PICTURES["rings"]])
    corpus.pattern_image(tmp_path / "photos" / "photo.jpg", seed=4)
    old = open_library(db, tiny_model)
    old.ingest([tmp_path / "photos"])
    columns = ["id", "file_id", "kind", "timestamp"]
    before = sorted(map(str, old.collection.columns(columns)))
    moments = old.collection.video_counts()[1]
    assert moments >= 2
    encoder = models.load_encoder(models.EncoderSpec(model=other_model, device="cpu"))

    # Interrupted just after the video's moments were staged: the next run takes them as done.
    real_add = Staging.add

    def crash_after_the_video(self: Staging, records: list[object]) -> None:
        real_add(self, records)  # type: ignore[arg-type]
        if any(r.kind == "video" for r in records):  # type: ignore[attr-defined]
            raise KeyboardInterrupt

    monkeypatch.setattr(Staging, "add", crash_after_the_video)
    monkeypatch.setattr(encoder, "_batch_size", 1)
    with pytest.raises(KeyboardInterrupt):
        reembed(Collection.open(db), encoder, commit_rows=1)
    monkeypatch.setattr(Staging, "add", real_add)
    report = reembed(Collection.open(db), encoder)
    assert report.resumed >= moments and report.resumed + report.reembedded == moments + 1

    lib = Clipdex.open(db, settings=Settings(workers=0))
    assert lib.encoder.fingerprint == encoder.fingerprint
    assert sorted(map(str, lib.collection.columns(columns))) == before  # the same rows: one per moment
    decoded = decode_media(str(video), encoder.transform, 10**9)
    assert isinstance(decoded, DecodedVideo)
    expected = dict(zip((m.timestamp for m in decoded.moments), encoder.embed_pixels(
        np.stack([m.pixels for m in decoded.moments])), strict=True))  # fmt: skip
    stored = {
        r["id"]: r["timestamp"] for r in lib.collection.columns(["id", "timestamp"]) if r["timestamp"] is not None
    }
    ids, vectors = lib.collection.vectors(list(stored))
    for row_id, vector in zip(ids, vectors, strict=True):
        assert np.allclose(vector, expected[stored[row_id]], atol=1e-5)


def test_extra_columns_never_break_lookups_and_builtins_are_refused(lib: Clipdex, db: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from pipeline.server.app import create_app  # noqa: PLC0415

    classify(lib.collection, lib.encoder, ["cat", "dog"], store="tag")
    first = lib.search("x", k=1)[0]
    assert lib.similar_to(first.id, k=2)
    client = TestClient(create_app(lib, thumbnails=tmp_path / "t"))
    assert client.get(f"/api/images/{first.id}/thumbnail").status_code == 200
    assert client.get(f"/api/similar/{first.id}").status_code == 200
    before = lib.collection.column_names()
    for column, message in (
        ("path", "built-in"),
        ("cluster", "not a SQL word"),
        ("Tag", "lowercase"),
        ("x_score", "lowercase"),
    ):
        with pytest.raises(ClipdexError, match=message):
            classify(lib.collection, lib.encoder, ["cat", "dog"], store=column)
    assert lib.collection.column_names() == before
    with pytest.raises(Exception, match="unbalanced parentheses"):
        lib.search("x", where="1=1) OR (1=1")


def test_duplicate_chains_are_split_around_keepers(tmp_path: Path) -> None:
    from storage import Collection, ImageRecord  # noqa: PLC0415

    collection = Collection.create(str(tmp_path / "c"), model="{}", dimension=2)
    angles = np.arange(10) * np.arccos(0.96)  # each vector 0.96 from the next: a chain
    records = [
        ImageRecord(
            f"i{n}",
            f"/p/{n}.jpg",
            1000 - n,
            n * 10**12,
            f"h{n}",
            10,
            10,
            "JPEG",
            np.array([np.cos(a), np.sin(a)], np.float32),
        )
        for n, a in enumerate(angles)
    ]
    collection.upsert(records)
    groups = find_duplicates(collection, near=0.95, similar=0.99, burst_seconds=0)
    assert groups
    for group in groups:
        assert all(m.score >= 0.95 for m in group.members)


def test_reembed_waits_for_unreadable_files_and_server_says_restart(
    photos: Path, db: str, tiny_model: str, other_model: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient  # noqa: PLC0415

    import models  # noqa: PLC0415
    from pipeline.maintain.reembed import reembed  # noqa: PLC0415
    from pipeline.server.app import create_app  # noqa: PLC0415
    from storage import Collection  # noqa: PLC0415

    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    client = TestClient(create_app(lib, thumbnails=tmp_path / "t"), raise_server_exceptions=False)
    encoder = models.load_encoder(models.EncoderSpec(model=other_model, device="cpu"))
    shutil.move(photos / "good" / "photo.jpg", tmp_path / "away.jpg")  # an unmounted drive, say
    with pytest.raises(ClipdexError, match=r"1 stored files could not be read again \(first: .*photo.jpg: cannot read"):
        reembed(Collection.open(db), encoder)
    assert Collection.open(db).model == lib.collection.model  # still the old model, nothing lost
    assert lib.collection.count() == 17
    shutil.move(tmp_path / "away.jpg", photos / "good" / "photo.jpg")
    report = reembed(Collection.open(db), encoder)
    assert (report.resumed, report.reembedded) == (16, 1)
    response = client.get("/api/search", params={"q": "x"})
    assert response.status_code == 503
    assert response.json()["detail"].endswith("now holds another model's vectors; restart clipdex serve")


def test_map_escapes_paths_and_raw_thumbnails_work(tmp_path: Path, db: str, tiny_model: str) -> None:
    from pipeline.analyse.clusters import map_html  # noqa: PLC0415
    from tests.test_decode import _fake_raw  # noqa: PLC0415

    folder = tmp_path / "x<img src=y onerror=alert(1)>"
    folder.mkdir()
    corpus.pattern_image(folder / "x.png", seed=1)
    _fake_raw(folder / "DSC_1.NEF", [(160, 120)])
    lib = open_library(db, tiny_model)
    assert lib.ingest([folder]).added == 2
    page = map_html(lib.collection)
    assert "<img src=y" not in page
    assert page.count("data:image/jpeg;base64,") == 2  # the RAW file's preview too
