"""--engine ray on a local Ray (2 CPUs, fractional actors): same rows and vectors as local ingest,
for photos and videos' moments, incremental sync, failures, the index built by Ray tasks (S3 is
tests/test_ray_s3.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline import Clipdex
from pipeline.config import Settings
from pipeline.errors import ClipdexError
from storage import FileState
from tests import corpus
from tests.conftest import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MANY = 100  # enough for several chunks per actor and an index above index_threshold=50
ROW_FIELDS = ("size", "mtime_ns", "hash", "width", "height", "format", "taken_at", "description", "caption",
              "caption_source")  # fmt: skip


@pytest.fixture(scope="module")
def shared_ray(tmp_path_factory: pytest.TempPathFactory, export_cache: Path) -> Iterator[None]:
    """One local Ray (2 CPUs) for this module's tests: starting one takes seconds. Its workers get
    the run's export cache, as the tests' own environment is set per test, after Ray started."""
    import ray  # noqa: PLC0415 - seconds to import; only the Ray tests need it

    ray.init(
        num_cpus=2,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"CLIPDEX_CACHE": str(export_cache)}},
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """117 valid images of every kind (with captions), 6 broken files."""
    root = tmp_path / "library"
    corpus.good_images(root / "good")
    corpus.bad_files(root / "bad")
    for i in range(MANY):
        corpus.pattern_image(root / "many" / f"{i:03d}.jpg", seed=i)
    return root


def open_ray(db: str, model: str, **settings: object) -> Clipdex:
    """A collection ingested with Ray: 2 encoder actors of half a CPU each, fp32 to compare with local."""
    base = Settings(engine="ray", workers=2, cpus_per_worker=0.5, precision="fp32")
    return Clipdex.open(db, model=model, create=True, settings=base.override(**settings))


def open_local(db: str, model: str) -> Clipdex:
    return Clipdex.open(db, model=model, create=True, settings=Settings(workers=0, precision="fp32"))


def rows(lib: Clipdex) -> dict[str, tuple[object, ...]]:
    """path -> the stored facts of its row."""
    out = {}
    for path in lib.collection.file_states():
        record = lib.collection.get_by_path(path)
        assert record is not None
        out[path] = tuple(getattr(record, f) for f in ROW_FIELDS)
    return out


def vectors(lib: Clipdex) -> dict[str, np.ndarray]:
    states: dict[str, FileState] = lib.collection.file_states()
    ids, matrix = lib.collection.vectors()
    by_id = dict(zip(ids, matrix, strict=True))
    return {path: by_id[state.id] for path, state in states.items()}


def assert_same_collections(local: Clipdex, ray: Clipdex) -> None:
    assert rows(ray) == rows(local)
    mine, theirs = vectors(ray), vectors(local)
    cosines = [float(mine[p] @ theirs[p]) for p in theirs]
    assert min(cosines) >= 0.9999
    failures = {(f.path, f.reason) for f in ray.collection.failures()}
    assert failures == {(f.path, f.reason) for f in local.collection.failures()}
    assert ray.collection.count() == len(set(ray.collection.file_states()))  # one row per path


def counts(report: object) -> dict[str, int]:
    keep = ("added", "updated", "moved", "removed", "unchanged", "failed", "captions")
    return {k: v for k, v in report.counts().items() if k in keep}  # type: ignore[attr-defined]


def test_ray_ingest_equals_local_ingest_and_syncs(
    shared_ray: None, library: Path, tmp_path: Path, tiny_model: str
) -> None:
    local = open_local(str(tmp_path / "local"), tiny_model)
    ray = open_ray(str(tmp_path / "ray"), tiny_model, index_threshold=50)
    first = ray.ingest([library])
    assert counts(first) == counts(local.ingest([library]))
    assert (first.added, first.failed) == (17 + MANY, 6)
    assert ray.collection.model == local.collection.model  # same fingerprint
    assert_same_collections(local, ray)
    assert (first.index, ray.collection.has_index()) == ("built", True)  # by Ray tasks
    found = vectors(ray)
    hits = [ray.search_vector(found[str(library / "many" / f"{i:03d}.jpg")], k=1)[0].path for i in range(20)]
    assert hits == [str(library / "many" / f"{i:03d}.jpg") for i in range(20)]  # each finds itself

    many = library / "many"
    corpus.pattern_image(many / "000.jpg", seed=1000)  # changed content
    corpus.pattern_image(many / "001.jpg", seed=1001, size=(80, 60))
    (many / "002.jpg").unlink()  # deleted
    (many / "003.jpg").rename(many / "moved.jpg")  # moved
    os.utime(many / "004.jpg", ns=(1, 1))  # touched: same bytes, other mtime
    (many / "005.txt").write_text("a caption added later")  # sidecar of 005.jpg
    corpus.pattern_image(many / "new.jpg", seed=2000)
    shutil.copy(library / "bad" / "truncated.jpg", many / "006.jpg")  # a stored image breaks

    second = ray.ingest([library])
    assert counts(second) == counts(local.ingest([library]))
    assert counts(second) == {
        "added": 1, "updated": 2, "moved": 1, "removed": 2, "unchanged": 17 + MANY - 5, "failed": 7, "captions": 1,
    }  # fmt: skip
    assert_same_collections(local, ray)
    assert ray.collection.get_by_path(str(many / "006.jpg")) is None  # its old vector is gone
    assert second.index == "refreshed"

    third = ray.ingest([library])
    assert counts(third) == {**counts(second), "added": 0, "updated": 0, "moved": 0, "removed": 0, "captions": 0,
                             "unchanged": 17 + MANY - 1}  # fmt: skip


def moments(lib: Clipdex) -> dict[tuple[str, float], tuple[object, ...]]:
    """(path, timestamp) -> a video moment's stored facts and vector, for every moment."""
    columns = ["id", "path", "kind", "timestamp", "duration", "fps", "codec", "width", "height", "hash"]
    rows = [r for r in lib.collection.columns(columns) if r["kind"] == "video"]
    ids, matrix = lib.collection.vectors([str(r["id"]) for r in rows])
    by_id = dict(zip(ids, matrix, strict=True))
    return {(str(r["path"]), float(str(r["timestamp"]))): (*(r[c] for c in columns[4:]), by_id[r["id"]]) for r in rows}


def test_ray_decodes_videos_in_tasks_as_local_ingest_does(shared_ray: None, tmp_path: Path, tiny_model: str) -> None:
    from tests.test_video import PICTURES, save_picture, write_video  # noqa: PLC0415

    root = tmp_path / "lib"
    scenes = write_video(root / "scenes.mp4", [PICTURES["checkers"], PICTURES["rings"], PICTURES["gradient"]])
    write_video(root / "more" / "rings.mp4", [PICTURES["rings"]] * 2)
    data = scenes.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "fake.mov").write_text("not a video\n", encoding="utf-8")
    save_picture(root / "checkers.png", "checkers")
    # Batches of 2 rows: a video's moments reach the actors in several batches, beside the photo.
    local = Clipdex.open(str(tmp_path / "local"), model=tiny_model, create=True,
                         settings=Settings(workers=0, precision="fp32", batch_size=2))  # fmt: skip
    ray = open_ray(str(tmp_path / "ray"), tiny_model, batch_size=2)
    first, expected = ray.ingest([root]), local.ingest([root])
    assert not [n for n in first.notes if "Ray job" in n]  # done in Ray, not by the fallback
    assert (first.added, first.failed, first.videos, first.moments) == (3, 2, 2, 5)
    assert (expected.added, expected.failed, expected.videos, expected.moments) == (3, 2, 2, 5)
    mine, theirs = moments(ray), moments(local)
    assert sorted(mine) == sorted(theirs) == sorted([(str(scenes), 0.0), (str(scenes), 2.0), (str(scenes), 4.0),
                                                     (str(root / "more" / "rings.mp4"), 0.0),
                                                     (str(root / "more" / "rings.mp4"), 2.0)])  # fmt: skip
    for key, (*facts, vector) in mine.items():
        assert facts == list(theirs[key][:-1])
        assert float(vector @ theirs[key][-1]) >= 0.9999
    assert {(f.path, f.reason) for f in ray.collection.failures()} == {
        (f.path, f.reason) for f in local.collection.failures()
    }
    hit = ray.similar(root / "checkers.png", k=3, kind="video")
    assert (hit[0].path, hit[0].timestamp) == (str(scenes), 0.0)

    assert ray.ingest([root]).counts()["unchanged"] == 3  # nothing decoded again
    os.utime(root / "more" / "rings.mp4", ns=(1, 1))  # touched: hashed, not decoded nor embedded again
    touched = ray.ingest([root])
    assert (touched.unchanged, touched.updated, touched.moments) == (3, 0, 0)
    write_video(scenes, [PICTURES["gradient"]] * 2)  # changed: 4 s of other pictures
    again = ray.ingest([root])
    assert (again.updated, again.added, again.videos, again.moments) == (1, 0, 1, 2)
    assert sorted(k for k in moments(ray) if k[0] == str(scenes)) == [(str(scenes), 0.0), (str(scenes), 2.0)]
    assert ray.collection.video_counts() == (2, 4)


def test_ray_actors_record_nan_vectors_as_failures(
    shared_ray: None, photos: Path, tmp_path: Path, nan_model: str
) -> None:
    from pipeline.ingest.embed import NON_FINITE  # noqa: PLC0415
    from tests.test_video import PICTURES, write_video  # noqa: PLC0415

    video = write_video(tmp_path / "videos" / "clip.mp4", [PICTURES["rings"], PICTURES["checkers"]])
    lib = open_ray(str(tmp_path / "db"), nan_model, batch_size=1)  # the video's moments in two batches
    report = lib.ingest([photos / "good", video.parent])
    assert (report.added, lib.collection.count()) == (0, 0)
    good = {str(p) for p in (photos / "good").rglob("*") if p.is_file() and p.suffix != ".txt"}
    assert {f.path: f.reason for f in lib.collection.failures()} == dict.fromkeys({*good, str(video)}, NON_FINITE)


def test_a_failed_ray_job_is_done_locally_not_lost(
    shared_ray: None, photos: Path, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.ingest.ray import RayEngine  # noqa: PLC0415

    def job_dies(self: object, sync: object, items: object) -> None:
        raise RuntimeError("ray.exceptions.WorkerCrashedError: The worker died unexpectedly")

    monkeypatch.setattr(RayEngine, "_embedded", job_dies)
    lib = open_ray(str(tmp_path / "db"), tiny_model)
    report = lib.ingest([photos / "good"])
    assert (report.added, lib.collection.count()) == (17, 17)
    assert any("Ray job of 17 files failed" in n and "ingested on this machine" in n for n in report.notes)


def test_cli_engine_ray(shared_ray: None, library: Path, tmp_path: Path, tiny_model: str) -> None:
    db = str(tmp_path / "db")
    args = ("--db", db, "--model", tiny_model, "--engine", "ray", "--workers", "2", "--cpus-per-worker", "0.5")
    out = run("ingest", str(library / "good"), *args, "--json").stdout.splitlines()[-1]
    assert (json.loads(out)["added"], json.loads(out)["failed"]) == (17, 0)
    assert len(run("search", "a dog", "--db", db, "-k", "3", "--paths").stdout.splitlines()) == 3


def test_a_cluster_needs_the_collection_on_object_storage(tmp_path: Path, tiny_model: str, photos: Path) -> None:
    lib = open_ray(str(tmp_path / "db"), tiny_model, ray_address="ray://head:10001")
    with pytest.raises(ClipdexError, match=r"on a Ray cluster the collection must be on object storage"):
        lib.ingest([photos / "good"])
    assert lib.collection.count() == 0
