"""Incremental ingest through the Python API: added, changed, touched, moved, deleted, failed, resumed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import Clipdex, ModelMismatch
from pipeline.errors import InputNotFound
from storage import Collection
from tests import corpus
from tests.conftest import open_library

N_GOOD = 17  # corpus.good_images (heic included)
N_BAD = 7  # corpus.bad_files, and corpus.non_images' fake clip.mp4 (a failed video)


def vectors(lib: Clipdex) -> dict[str, tuple[str, bytes]]:
    """path -> (id, vector bytes), for comparing runs exactly."""
    out = {}
    for path in lib.collection.file_states():
        record = lib.collection.get_by_path(path)
        assert record is not None
        out[path] = (record.id, record.vector.tobytes())
    return out


def test_first_run_adds_every_image_and_records_every_failure(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    report = lib.ingest([photos])
    assert report.counts() == {
        "added": N_GOOD,
        "updated": 0,
        "moved": 0,
        "removed": 0,
        "unchanged": 0,
        "failed": N_BAD,
        "captions": 0,
        "videos": 0,
        "moments": 0,
        "live_photos": 0,
        "vanished": 0,
    }
    failed = {Path(f.path).name: f.reason for f in lib.collection.failures()}
    assert set(failed) == {"truncated.jpg", "empty.jpg", "notes.jpg", "noise.png", "bomb.png", "broken.png", "clip.mp4"}
    assert failed["clip.mp4"].startswith("not a video clipdex can read, or truncated (ffmpeg: ")
    assert failed["empty.jpg"] == "empty file (0 bytes)"
    assert "raise it with --max-pixels" in failed["bomb.png"]
    rows = lib.collection.file_states()
    assert all(os.path.isabs(p) for p in rows)
    assert len({r.id for r in rows.values()}) == N_GOOD
    rotated = lib.collection.get_by_path(str(photos / "good" / "rotated.jpg"))
    assert rotated is not None
    assert (rotated.width, rotated.height) == (32, 64)
    assert rotated.caption == corpus.EXIF_DESCRIPTION
    assert rotated.caption_source == "embedded"
    assert rotated.caption_vector is not None
    assert rotated.taken_at is not None and rotated.taken_at.year == 2024
    assert np.isclose(np.linalg.norm(rotated.vector), 1.0, atol=1e-5)


def test_rerun_changes_nothing_and_decodes_nothing(
    photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    before = vectors(lib)
    version = lib.collection._images.version

    def no_decoding(*args: object) -> None:
        raise AssertionError("an unchanged file was decoded")

    monkeypatch.setattr("pipeline.ingest.local.decode_media", no_decoding)
    monkeypatch.setattr("pipeline.ingest.plan.hash_file", no_decoding)
    monkeypatch.setattr("models.load_encoder", no_decoding)  # nothing to embed: no model is loaded
    report = open_library(db, tiny_model).ingest([photos])  # a new process's view: no model in memory
    assert (report.added, report.updated, report.moved, report.removed) == (0, 0, 0, 0)
    assert (report.unchanged, report.failed) == (N_GOOD, N_BAD)
    assert vectors(lib) == before
    assert lib.collection._images.version == version  # not even an empty commit


def test_changed_file_is_reembedded_under_the_same_id(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    target = photos / "good" / "photo.jpg"
    old = vectors(lib)[str(target)]
    corpus.solid_jpeg(target, (0, 200, 30), size=(80, 60))
    report = lib.ingest([photos])
    assert (report.added, report.updated, report.unchanged) == (0, 1, N_GOOD - 1)
    new = vectors(lib)[str(target)]
    assert new[0] == old[0]
    assert new[1] != old[1]
    record = lib.collection.get(new[0])
    assert record is not None and (record.width, record.height) == (80, 60)


def test_touched_file_keeps_its_vector(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    target = photos / "good" / "photo.jpg"
    before = vectors(lib)[str(target)]
    os.utime(target, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.ingest.local.decode_media", lambda *a: pytest.fail("a touched file was decoded"))
        patch.setattr("models.load_encoder", lambda spec: pytest.fail("a model was loaded for a touched file"))
        report = open_library(db, tiny_model).ingest([photos])  # hashed, the same bytes: kept as it is
    assert (report.updated, report.unchanged) == (0, N_GOOD)
    assert vectors(lib)[str(target)] == before
    assert lib.collection.file_states()[str(target)].mtime_ns == 1_600_000_000_000_000_000
    assert lib.ingest([photos]).unchanged == N_GOOD  # and the new mtime was recorded


def test_moved_and_renamed_files_keep_id_and_vector_without_decoding(
    photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    before = vectors(lib)
    (photos / "moved").mkdir()
    old_a, new_a = photos / "good" / "photo.jpg", photos / "moved" / "renamed.jpg"
    old_b, new_b = photos / "good" / "scan.tiff", photos / "good" / "scan-2019.tiff"
    shutil.move(old_a, new_a)
    shutil.move(old_b, new_b)

    def no_decoding(*args: object) -> None:
        raise AssertionError("a moved file was decoded")

    monkeypatch.setattr("pipeline.ingest.local.decode_media", no_decoding)
    report = lib.ingest([photos])
    assert (report.moved, report.added, report.removed, report.unchanged) == (2, 0, 0, N_GOOD - 2)
    after = vectors(lib)
    assert after[str(new_a)] == before[str(old_a)]
    assert after[str(new_b)] == before[str(old_b)]
    assert str(old_a) not in after and len(after) == N_GOOD


def test_deleted_files_are_removed_and_their_failures_forgotten(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    (photos / "good" / "photo.jpg").unlink()
    (photos / "bad" / "empty.jpg").unlink()
    report = lib.ingest([photos])
    assert (report.removed, report.failed) == (1, N_BAD - 1)
    assert lib.collection.count() == N_GOOD - 1
    assert len(lib.collection.failures()) == N_BAD - 1


def test_another_root_leaves_the_first_alone(photos: Path, db: str, tiny_model: str, tmp_path: Path) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    extra = tmp_path / "extra"
    corpus.pattern_image(extra / "a.png", seed=5)
    report = lib.ingest([extra])
    assert (report.added, report.removed) == (1, 0)
    assert lib.collection.count() == N_GOOD + 1
    single = lib.ingest([extra / "a.png"])  # a single file root: unchanged
    assert (single.unchanged, single.removed) == (1, 0)


def test_failed_files_are_not_retried_until_they_change(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    broken = photos / "bad" / "truncated.jpg"
    corpus.solid_jpeg(broken, (10, 20, 30))  # repaired
    report = lib.ingest([photos])
    assert (report.added, report.failed) == (1, N_BAD - 1)
    assert str(broken) not in {f.path for f in lib.collection.failures()}
    assert lib.ingest([photos], retry_failed=True).failed == N_BAD - 1


def test_a_crash_keeps_finished_batches_and_the_next_run_completes(
    photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = open_library(db, tiny_model, batch_size=4, commit_rows=4)
    real_upsert = Collection.upsert
    calls = []

    def crash_on_third_commit(self: Collection, records: list[object], *, new: bool = False) -> None:
        if records:
            calls.append(len(records))
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_upsert(self, records, new=new)  # type: ignore[arg-type]

    monkeypatch.setattr(Collection, "upsert", crash_on_third_commit)
    with pytest.raises(KeyboardInterrupt):
        lib.ingest([photos / "good"])
    assert lib.collection.count() == 8
    monkeypatch.setattr(Collection, "upsert", real_upsert)
    report = lib.ingest([photos / "good"])
    assert (report.added, report.unchanged) == (N_GOOD - 8, 8)
    assert len(set(lib.collection.file_states())) == N_GOOD


def test_worker_processes_give_the_same_vectors_as_in_process(photos: Path, tmp_path: Path, tiny_model: str) -> None:
    inline = open_library(str(tmp_path / "inline"), tiny_model, workers=0)
    pooled = open_library(str(tmp_path / "pooled"), tiny_model, workers=2)
    inline.ingest([photos])
    report = pooled.ingest([photos])
    assert (report.added, report.failed) == (N_GOOD, N_BAD)
    a = {p: v for p, (_, v) in vectors(inline).items()}
    b = {p: v for p, (_, v) in vectors(pooled).items()}
    assert a == b


def test_collection_folder_inside_the_photos_is_skipped(photos: Path, tiny_model: str) -> None:
    lib = open_library(str(photos / "good" / ".." / "index"), tiny_model)
    lib.ingest([photos])
    assert lib.ingest([photos]).unchanged == N_GOOD
    assert not any("/index/" in p for p in lib.collection.file_states())


def test_captions_from_sidecar_and_manifest_follow_edits(photos: Path, db: str, tiny_model: str) -> None:
    good = photos / "good"
    (good / "photo.txt").write_text("\n  a dog on the beach  \nsecond line\n")
    manifest = photos / "captions.csv"
    manifest.write_text("path,caption\ngood/scan.tiff,a scanned letter\n")
    lib = open_library(db, tiny_model)
    lib.ingest([photos], captions=manifest)
    photo = lib.collection.get_by_path(str(good / "photo.jpg"))
    scan = lib.collection.get_by_path(str(good / "scan.tiff"))
    assert photo is not None and (photo.caption, photo.caption_source) == ("a dog on the beach", "sidecar")
    assert scan is not None and (scan.caption, scan.caption_source) == ("a scanned letter", "manifest")
    assert photo.caption_vector is not None
    assert np.allclose(photo.caption_vector, lib.embed_text("a dog on the beach"), atol=1e-6)

    (good / "photo.txt").write_text("a cat on a sofa")
    report = lib.ingest([photos], captions=manifest)
    assert (report.captions, report.updated) == (1, 0)
    photo = lib.collection.get_by_path(str(good / "photo.jpg"))
    assert photo is not None and photo.caption == "a cat on a sofa"
    hits = lib.search("a cat on a sofa", target="caption", k=1)
    assert [h.path for h in hits] == [str(good / "photo.jpg")]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)

    (good / "photo.txt").unlink()
    assert lib.ingest([photos], captions=manifest).captions == 1
    photo = lib.collection.get_by_path(str(good / "photo.jpg"))
    assert photo is not None and (photo.caption, photo.caption_vector) == (None, None)


def test_a_second_model_is_refused_and_nothing_changes(
    photos: Path, db: str, tiny_model: str, other_model: str
) -> None:
    open_library(db, tiny_model).ingest([photos])
    files_before = sorted(p.relative_to(db) for p in Path(db).rglob("*"))
    with pytest.raises(ModelMismatch, match=r"holds vectors of local-dir:.*tiny-model.*, not local-dir:.*other-model"):
        open_library(db, other_model)
    assert sorted(p.relative_to(db) for p in Path(db).rglob("*")) == files_before


def test_missing_root_is_refused_before_anything_is_written(db: str, tiny_model: str, tmp_path: Path) -> None:
    lib = open_library(db, tiny_model)
    with pytest.raises(InputNotFound, match=r"/nowhere does not exist; check the path to ingest"):
        lib.ingest([tmp_path / "nowhere"])
    assert lib.collection.count() == 0


def test_search_similar_and_filters(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    good = photos / "good"
    hits = lib.similar(good / "photo.jpg", k=3)
    assert hits[0].path == str(good / "photo.jpg")
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    by_id = lib.similar_to(hits[0].id, k=3)
    assert hits[0].id not in {h.id for h in by_id}
    wide = lib.search("anything", k=50, where="width >= 64")
    assert wide and all(h.width >= 64 for h in wide)
    assert lib.search("anything", k=50, where="format = 'PNG' AND path LIKE '%/good/%'")
    assert lib.search("anything", k=5, min_score=1.01) == []
    floor = hits[1].score
    assert all(h.score >= floor for h in lib.similar(good / "photo.jpg", k=50, min_score=floor))


def test_index_is_built_above_the_threshold_and_refreshed_after(
    photos: Path, db: str, tiny_model: str, tmp_path: Path
) -> None:
    lib = open_library(db, tiny_model, index_threshold=10)
    plain = open_library(str(tmp_path / "exact"), tiny_model)
    plain.ingest([photos])
    exact = [h.path for h in plain.similar(photos / "good" / "photo.jpg", k=3)]
    report = lib.ingest([photos])
    assert report.index == "built"
    assert lib.collection.has_index()
    assert not plain.collection.has_index()
    assert [h.path for h in lib.similar(photos / "good" / "photo.jpg", k=3)] == exact
    corpus.pattern_image(photos / "good" / "new.png", seed=42)
    assert lib.ingest([photos]).index == "refreshed"
    assert lib.ingest([photos]).index == "current"


def test_repeated_text_queries_are_embedded_once(
    photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    calls: list[list[str]] = []
    real = lib.encoder.embed_texts
    monkeypatch.setattr(lib.encoder, "embed_texts", lambda texts: calls.append(list(texts)) or real(texts))
    first = lib.search("a red bicycle", k=3)
    assert lib.search("a red bicycle", k=3) == first
    assert calls == [["a red bicycle"]]
