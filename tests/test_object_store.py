"""Collections on object storage: every command against s3:// on a local S3-compatible server (moto)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


def test_every_command_works_on_s3(s3: str, photos: Path, tiny_model: str, other_model: str, tmp_path: Path) -> None:
    first = json.loads(run("ingest", str(photos), "--db", s3, "--model", tiny_model, "--json").stdout.splitlines()[-1])
    assert (first["added"], first["failed"]) == (17, 7)  # 6 bad images, 1 fake video
    shutil.move(photos / "good" / "photo.jpg", photos / "good" / "renamed.jpg")
    again = json.loads(run("ingest", str(photos), "--db", s3, "--json").stdout.splitlines()[-1])
    assert (again["moved"], again["unchanged"], again["added"]) == (1, 16, 0)
    assert json.loads(run("info", "--db", s3, "--json").stdout)["images"] == 17
    hits = [json.loads(x) for x in run("search", "a dog", "-k", "3", "--db", s3, "--json").stdout.splitlines()]
    assert len(hits) == 3
    assert len(run("similar", "--id", hits[0]["id"], "-k", "2", "--db", s3, "--paths").stdout.splitlines()) == 2
    assert len(run("failures", "--db", s3).stdout.splitlines()) == 7
    run("classify", "--labels", "cat,dog", "--store", "tag", "--db", s3)
    assert run("search", "x", "-k", "50", "--db", s3, "--where", "tag IS NOT NULL", "--paths").stdout.count("\n") == 17
    run("duplicates", "--db", s3)
    run("map", "--out", str(tmp_path / "map.html"), "--db", s3)
    exported = json.loads(run("export", "--out", str(tmp_path / "rows.parquet"), "--db", s3, "--json").stdout)
    assert exported["rows"] == 17
    run("reembed", "--db", s3, "--model", other_model)
    assert json.loads(run("info", "--db", s3, "--json").stdout)["model"]["model"] == other_model
    missing = run("info", "--db", "s3://photos/nothing-here", ok=False)
    assert (
        missing.stderr == "Error: --db s3://photos/nothing-here: no collection here yet; run `clipdex ingest` first\n"
    )


def test_images_on_s3_with_the_local_engine(s3: str, tmp_path: Path, tiny_model: str) -> None:
    """An s3:// prefix as the source: odd keys, globs on key folders, rows of filtered-out objects
    kept, deletions noticed, thumbnails and originals served from the bucket."""
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from pipeline.server.app import create_app  # noqa: PLC0415
    from tests import corpus  # noqa: PLC0415
    from tests.conftest import open_library  # noqa: PLC0415
    from tests.test_ray_s3 import upload  # noqa: PLC0415

    local = tmp_path / "up"
    corpus.pattern_image(local / "Photo #3.jpg", seed=1)
    corpus.pattern_image(local / "what?.png", seed=2)
    corpus.pattern_image(local / "tmp" / "scratch.jpg", seed=3)
    corpus.pattern_image(local / "2024" / "beach.jpg", seed=4)
    (local / "2024" / "beach.txt").write_text("a day at the beach")
    source = "s3://photos/images"
    upload(local, source)
    lib = open_library(str(tmp_path / "db"), tiny_model, exclude=("tmp",))
    report = lib.ingest([source])
    assert (report.added, report.failed) == (3, 0)
    states = lib.collection.file_states()
    assert set(states) == {f"{source}/Photo #3.jpg", f"{source}/what?.png", f"{source}/2024/beach.jpg"}
    assert states[f"{source}/2024/beach.jpg"].caption == "a day at the beach"  # its sidecar object
    narrowed = open_library(str(tmp_path / "db"), tiny_model, include=("*.png",)).ingest([source])
    assert (narrowed.removed, narrowed.unchanged) == (0, 1)  # left out by --include, still there: kept

    client = TestClient(create_app(lib, thumbnails=tmp_path / "thumbs"))
    image_id = states[f"{source}/Photo #3.jpg"].id
    thumb = client.get(f"/api/images/{image_id}/thumbnail")
    assert (thumb.status_code, thumb.headers["content-type"]) == (200, "image/jpeg")
    original = client.get(f"/api/images/{image_id}")
    assert original.content == (local / "Photo #3.jpg").read_bytes()

    from pipeline.ingest.sources import _resolve  # noqa: PLC0415

    fs, key = _resolve(f"{source}/Photo #3.jpg")
    fs.delete_file(key)
    again = lib.ingest([source])
    assert (again.removed, again.unchanged) == (1, 2)
    assert client.get(f"/api/images/{image_id}").status_code == 404
