"""Incremental sync where libraries get tricky: overwrites, unlistable folders, filters, unmounted
drives, symlinks, captions that must survive, files that break. Nothing stored may be lost wrongly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline import Clipdex, ModelMismatch
from storage import Collection, StorageError
from tests import corpus
from tests.conftest import open_library, run


@pytest.fixture
def pics(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    for i in range(3):
        corpus.pattern_image(root / f"p{i}.jpg", seed=i)
    corpus.pattern_image(root / "sub" / "s.png", seed=10)
    return root


def paths_and_ids(lib: Clipdex) -> dict[str, str]:
    return {p: s.id for p, s in lib.collection.file_states().items()}


def test_moving_a_file_onto_a_stored_path_leaves_one_row(pics: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([pics])
    ids = paths_and_ids(lib)
    shutil.move(pics / "p0.jpg", pics / "p1.jpg")
    report = lib.ingest([pics])
    assert (report.updated, report.removed, report.moved) == (1, 1, 0)
    rows = lib.collection._images.search().select(["path"]).limit(None).to_arrow().column("path").to_pylist()
    assert sorted(rows) == sorted({str(pics / "p1.jpg"), str(pics / "p2.jpg"), str(pics / "sub" / "s.png")})
    assert paths_and_ids(lib)[str(pics / "p1.jpg")] == ids[str(pics / "p1.jpg")]
    assert lib.ingest([pics]).unchanged == 3


def test_rows_under_a_folder_that_cannot_be_listed_are_kept(
    pics: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([pics])
    before = paths_and_ids(lib)
    real_scandir = os.scandir

    def denied(path: str) -> object:
        if str(path) == str(pics / "sub"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("pipeline.ingest.scan.os.scandir", denied)
    report = lib.ingest([pics])
    assert (report.removed, report.failed) == (0, 1)
    assert paths_and_ids(lib) == before
    monkeypatch.undo()
    assert lib.ingest([pics]).added == 0


def test_filters_narrow_the_scan_but_do_not_delete(pics: Path, db: str, tiny_model: str) -> None:
    corpus.pattern_image(pics / "IMG_9.JPG", seed=9)
    lib = open_library(db, tiny_model)
    assert lib.ingest([pics]).added == 5
    lib.settings = lib.settings.override(include=("*.jpg",))
    report = lib.ingest([pics])
    assert (report.unchanged, report.removed) == (4, 0)  # IMG_9.JPG matches *.jpg; s.png is kept
    assert lib.collection.count() == 5


def test_an_emptied_root_is_taken_for_an_unmounted_drive(pics: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([pics])
    shutil.rmtree(pics)
    pics.mkdir()
    report = lib.ingest([pics])
    assert report.removed == 0
    assert report.notes == [
        f"{pics}: no images found but 4 stored; kept them (is the drive mounted?); "
        "if they were deleted, run again with --prune-empty"
    ]
    assert lib.ingest([pics], prune_empty=True).removed == 4


def test_manifest_captions_survive_a_run_without_the_manifest(pics: Path, db: str, tiny_model: str) -> None:
    manifest = pics.parent / "m.csv"
    manifest.write_text("pics/p0.jpg,a red bicycle\n")
    lib = open_library(db, tiny_model)
    lib.ingest([pics], captions=manifest)
    assert lib.ingest([pics]).captions == 0
    record = lib.collection.get_by_path(str(pics / "p0.jpg"))
    assert record is not None and (record.caption, record.caption_source) == ("a red bicycle", "manifest")
    manifest.write_text("pics/p1.jpg,a blue car\n")
    assert lib.ingest([pics], captions=manifest).captions == 2  # p0 dropped, p1 added
    record = lib.collection.get_by_path(str(pics / "p0.jpg"))
    assert record is not None and record.caption is None


def test_removing_a_sidecar_brings_back_the_embedded_description(tmp_path: Path, db: str, tiny_model: str) -> None:
    good = tmp_path / "good"
    corpus.good_images(good)
    (good / "rotated.txt").write_text("my own words")
    lib = open_library(db, tiny_model)
    lib.ingest([good])
    record = lib.collection.get_by_path(str(good / "rotated.jpg"))
    assert record is not None and record.caption_source == "sidecar"
    (good / "rotated.txt").unlink()
    assert lib.ingest([good]).captions == 1
    record = lib.collection.get_by_path(str(good / "rotated.jpg"))
    assert record is not None
    assert (record.caption, record.caption_source) == (corpus.EXIF_DESCRIPTION, "embedded")


def test_caption_edits_of_touched_and_moved_files_apply_in_the_same_run(pics: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([pics])
    (pics / "p0.txt").write_text("a touched photo")
    os.utime(pics / "p0.jpg", ns=(10**18, 10**18))
    shutil.move(pics / "p1.jpg", pics / "renamed.jpg")
    (pics / "renamed.txt").write_text("a moved photo")
    report = lib.ingest([pics])
    assert (report.moved, report.captions) == (1, 2)
    assert lib.collection.get_by_path(str(pics / "p0.jpg")).caption == "a touched photo"  # type: ignore[union-attr]
    assert lib.collection.get_by_path(str(pics / "renamed.jpg")).caption == "a moved photo"  # type: ignore[union-attr]


def test_a_file_that_breaks_loses_its_stale_row(pics: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([pics])
    data = (pics / "p1.jpg").read_bytes()
    (pics / "p1.jpg").write_bytes(data[: len(data) // 3])
    report = lib.ingest([pics])
    assert (report.failed, report.updated) == (1, 0)
    assert lib.collection.get_by_path(str(pics / "p1.jpg")) is None
    assert [f.path for f in lib.collection.failures()] == [str(pics / "p1.jpg")]


def test_symlinks_never_duplicate_rows(pics: Path, db: str, tiny_model: str, tmp_path: Path) -> None:
    (pics / "alias").symlink_to(pics / "sub")
    (tmp_path / "link").symlink_to(pics)
    lib = open_library(db, tiny_model)
    lib.ingest([pics])
    lib.ingest([tmp_path / "link"])
    assert sorted(lib.collection.file_states()) == sorted(
        str(p) for p in (pics / "p0.jpg", pics / "p1.jpg", pics / "p2.jpg", pics / "sub" / "s.png")
    )


def test_mismatch_names_the_asked_model_without_inventing_its_dimension(pics: Path, db: str, tiny_model: str) -> None:
    open_library(db, tiny_model).ingest([pics])
    with pytest.raises(ModelMismatch) as info:
        open_library(db, "ViT-B-32")
    assert ", not ViT-B-32 (laion2b_s34b_b79k); use --model local-dir:" in str(info.value)


def test_write_errors_are_one_line(pics: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = open_library(db, tiny_model)

    def read_only(*args: object, **kwargs: object) -> None:
        raise RuntimeError("lance error: LanceError(IO): Permission denied\nmore detail")

    monkeypatch.setattr(lib.collection._images, "merge_insert", read_only)
    monkeypatch.setattr(lib.collection._images, "add", read_only)
    with pytest.raises(StorageError, match=r"cannot write \(lance error: .*Permission denied\); check free space"):
        lib.ingest([pics])


def test_db_that_is_a_file_and_bad_manifest_on_a_new_db(tmp_path: Path, pics: Path, tiny_model: str) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    result = run("info", "--db", str(afile), ok=False)
    assert result.stderr == f"Error: --db {afile} is a file; point --db at a folder (new, or holding a collection)\n"
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    new_db = tmp_path / "new-db"
    args = ["ingest", str(pics), "--db", str(new_db), "--model", tiny_model, "--captions", str(tmp_path / "bad.jsonl")]
    assert "line 1: not JSON" in run(*args, ok=False).stderr
    assert not new_db.exists()
    with pytest.raises(Exception, match="is a file"):
        Collection.create(str(afile), model="{}", dimension=4)
