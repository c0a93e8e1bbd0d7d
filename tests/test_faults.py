"""Faults inside a run: files that are not regular files, sidecars that cannot be read, manifests
that keep their precedence, and a run that changes nothing writing nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline import Clipdex
from pipeline.errors import ManifestError
from pipeline.ingest.captions import read_manifest
from storage import BadFilter
from tests.conftest import open_library


def test_a_fifo_named_like_an_image_is_skipped_with_a_note(photos: Path, db: str, tiny_model: str) -> None:
    os.mkfifo(photos / "good" / "x.jpg")
    lib = open_library(db, tiny_model)
    report = lib.ingest([photos / "good"])  # returns: nothing waits for a writer
    assert str(photos / "good" / "x.jpg") not in lib.collection.file_states()
    assert any("FIFOs, sockets or devices" in n and "x.jpg" in n for n in report.notes)
    assert report.failed == 0


def test_a_fifo_as_sidecar_or_manifest_never_blocks(photos: Path, db: str, tiny_model: str, tmp_path: Path) -> None:
    os.mkfifo(photos / "good" / "photo.txt")  # the sidecar of photo.jpg
    lib = open_library(db, tiny_model)
    report = lib.ingest([photos / "good"])
    assert report.added == 17
    assert any("sidecar files could not be read" in n and "not a regular file (a FIFO)" in n for n in report.notes)
    os.mkfifo(tmp_path / "captions.csv")
    with pytest.raises(ManifestError, match="not a regular file"):
        read_manifest(tmp_path / "captions.csv")


def test_an_unreadable_sidecar_keeps_the_stored_caption(photos: Path, db: str, tiny_model: str) -> None:
    photo, sidecar = photos / "good" / "photo.jpg", photos / "good" / "photo.txt"
    sidecar.write_text("a dog on the beach")
    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    sidecar.unlink()
    os.mkfifo(sidecar)  # there, but not readable as a caption (root can read any plain file)
    report = lib.ingest([photos / "good"])
    record = lib.collection.get_by_path(str(photo))
    assert record is not None and (record.caption, record.caption_source) == ("a dog on the beach", "sidecar")
    assert report.captions == 0 and len([n for n in report.notes if "sidecar" in n]) == 1


def test_manifest_captions_keep_precedence_over_sidecars_across_runs(
    photos: Path, db: str, tiny_model: str, tmp_path: Path
) -> None:
    photo = photos / "good" / "photo.jpg"
    (photos / "good" / "photo.txt").write_text("a sidecar caption")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{photo},a manifest caption\n")
    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"], captions=manifest)
    for _ in range(2):  # without the manifest, then with it again: no flip-flop
        assert lib.ingest([photos / "good"]).captions == 0
        assert lib.ingest([photos / "good"], captions=manifest).captions == 0
    record = lib.collection.get_by_path(str(photo))
    assert record is not None and (record.caption, record.caption_source) == ("a manifest caption", "manifest")


def test_a_run_that_changes_nothing_commits_nothing(photos: Path, db: str, tiny_model: str) -> None:
    blocked = photos / "blocked"
    blocked.mkdir()
    lib = open_library(db, tiny_model)
    first = lib.ingest([photos])
    assert first.new_failures  # broken files, and more
    before = lib.collection.versions()
    again = lib.ingest([photos])
    assert lib.collection.versions() == before  # no table got a new version: nothing written, no optimize
    assert (again.changed, again.new_failures, again.failed) == (False, [], first.failed)
    shutil.rmtree(blocked)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("repeat(caption, 1000000000) = 'x'", r"repeat\(\) is not allowed in a filter"),
        ("LPAD(path, 999999999) = 'x'", r"LPAD\(\) is not allowed"),
        ("path = '" + "x" * 5000 + "'", "characters long"),
        ("path = '" + "x" * 2000 + "'", "a quoted value is over 1000 characters"),
    ],
)
def test_filters_that_could_take_the_memory_are_refused(lib: Clipdex, where: str, message: str) -> None:
    with pytest.raises(BadFilter, match=message):
        lib.search("a dog", where=where)


def test_everyday_filters_still_run(lib: Clipdex) -> None:
    for where in ("lower(format) = 'jpeg'", "width::bigint > 3 AND NOT (height < 2)", "format IN ('PNG', 'JPEG')"):
        lib.search("a dog", where=where)


def test_lookups_by_id_and_path_have_btree_indexes(photos: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model, index_threshold=1)
    report = lib.ingest([photos / "good"])
    assert report.index == "built"
    indexed = {tuple(i.columns): i.index_type for i in lib.collection._images.list_indices()}
    assert indexed[("id",)] == indexed[("path",)] == "BTree"
    photo = lib.collection.get_by_path(str(photos / "good" / "photo.jpg"))
    assert photo is not None
    light = lib.collection.get(photo.id, vectors=False)
    assert light is not None and (light.path, light.hash, light.vector.size) == (photo.path, photo.hash, 0)
    (photos / "good" / "new.png").write_bytes((photos / "good" / "photo.jpg").read_bytes())
    lib.ingest([photos / "good"])  # new rows are found by id before and after they reach the index
    assert lib.collection.get_by_path(str(photos / "good" / "new.png")) is not None


def test_unchanged_sidecars_are_not_read_again(
    photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.ingest import captions  # noqa: PLC0415

    sidecar = photos / "good" / "photo.txt"
    sidecar.write_text("a dog on the beach")
    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    reads: list[str] = []
    real = captions.sidecar_text
    monkeypatch.setattr(captions, "sidecar_text", lambda path: reads.append(path) or real(path))
    assert lib.ingest([photos / "good"]).captions == 0
    assert reads == []  # same size and mtime: the stored caption stands
    sidecar.write_text("a cat on the sofa")
    assert lib.ingest([photos / "good"]).captions == 1
    assert reads == [str(sidecar)]
    record = lib.collection.get_by_path(str(photos / "good" / "photo.jpg"))
    assert record is not None and record.caption == "a cat on the sofa"


def test_a_schema_1_collection_is_upgraded_in_place(photos: Path, db: str, tiny_model: str) -> None:
    from storage import SCHEMA_VERSION, Collection  # noqa: PLC0415

    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    images = lib.collection._images
    images.drop_columns(["caption_stamp"])  # as clipdex 1 wrote it
    meta = lib.collection._db.open_table("meta")
    meta.update(where="key = 'schema_version'", values={"value": "1"})
    upgraded = Collection.open(db)
    assert upgraded.schema_version == SCHEMA_VERSION == 3  # through 2 (caption_stamp) to 3 (videos)
    assert {"caption_stamp", "kind", "file_id", "timestamp"} <= set(upgraded.column_names())
    rows = upgraded.columns(["id", "kind", "file_id"])
    assert all((r["kind"], r["file_id"]) == ("image", r["id"]) for r in rows) and len(rows) == 17
    assert open_library(db, tiny_model).ingest([photos / "good"]).unchanged == 17


def test_dates_as_people_write_them(lib: Clipdex) -> None:
    for where in ("taken_at > '2024-06-01'", "taken_at >= '2024'", "taken_at BETWEEN '2000' AND '2030-12-31 23:59'",
                  "ingested_at > '2020-01'"):  # fmt: skip
        lib.search("a dog", where=where)
    assert lib.search("a dog", where="ingested_at > '2020'", k=50)  # every image was ingested since


def test_filter_errors_never_show_library_source_paths(lib: Clipdex) -> None:
    with pytest.raises(BadFilter) as info:
        lib.search("a dog", where="widht > 3")
    assert ".rs:" not in str(info.value) and "/root/" not in str(info.value)


def test_query_takes_strings_paths_and_terms(lib: Clipdex, photos: Path) -> None:
    from pipeline.query import Term  # noqa: PLC0415

    photo = photos / "good" / "photo.jpg"
    as_terms = lib.query([Term("a dog"), Term(str(photo), 1.0, "image"), Term("crowd", -1.0)], k=5)
    assert lib.query(f"a dog + {photo} - crowd", k=5) == as_terms
    assert lib.query(["a dog", "+", photo, "-", "crowd"], k=5) == as_terms
    assert lib.query("a dog", k=5) == lib.search("a dog", k=5)
