"""clipdex verify: finds rows untrue to their files, unsound vectors, duplicates and contradicting
failures; --repair fixes them and keeps the rows of a folder that is gone."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline import Clipdex
from storage import Failure
from tests import corpus
from tests.conftest import open_library, run
from tests.test_video import PICTURES, write_video


def damaged(tmp_path: Path, tiny_model: str) -> tuple[Clipdex, dict[str, Path]]:
    """A collection with one of each problem verify knows."""
    root = tmp_path / "photos"
    files = {name: corpus.pattern_image(root / f"{name}.jpg", seed=i) for i, name in enumerate(
        ["content", "size", "missing", "vector", "duplicate", "failure", "fine"])}  # fmt: skip
    files["away"] = corpus.pattern_image(tmp_path / "drive" / "away.jpg", seed=99)
    lib = open_library(str(tmp_path / "db"), tiny_model)
    lib.ingest([root, tmp_path / "drive"])
    collection = lib.collection

    # Same size and mtime, other bytes: only the hash can tell.
    path = files["content"]
    stat = path.stat()
    data = bytearray(path.read_bytes())
    corpus.pattern_image(tmp_path / "other.jpg", seed=1234)
    other = (tmp_path / "other.jpg").read_bytes()
    data[: min(len(data), len(other))] = other[: len(data)]
    path.write_bytes(bytes(data[: stat.st_size]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with files["size"].open("ab") as f:
        f.write(b"\0" * 10)
    files["missing"].unlink()
    shutil.rmtree(tmp_path / "drive")  # a whole folder gone: an unmounted drive?
    record = collection.get_by_path(str(files["vector"]))
    assert record is not None
    collection.upsert([dataclasses.replace(record, vector=record.vector * 2)])
    record = collection.get_by_path(str(files["duplicate"]))
    assert record is not None
    collection.upsert([dataclasses.replace(record, id="f" * 16)])
    collection.record_failures([Failure(str(files["failure"]), "an old failure", 1, 1, record.ingested_at)])  # type: ignore[arg-type]
    return lib, files


def test_verify_finds_each_problem_and_repair_fixes_them(tmp_path: Path, tiny_model: str) -> None:
    lib, files = damaged(tmp_path, tiny_model)
    db = lib.collection.uri
    changed = lib.collection.get_by_path(str(files["content"]))
    assert changed is not None
    found = run("verify", "--db", db, "--json", ok=False)
    report = json.loads(found.stdout)
    assert report["checked"] == 9
    assert report["problems"] == {"content": 1, "size": 1, "missing": 1, "folder-missing": 1, "vector": 1,
                                  "duplicate": 1, "stale-failure": 1}  # fmt: skip
    kinds = {(d["kind"], Path(d["path"]).name) for d in report["details"]}
    assert kinds == {("content", "content.jpg"), ("size", "size.jpg"), ("missing", "missing.jpg"),
                     ("folder-missing", "away.jpg"), ("vector", "vector.jpg"), ("duplicate", "duplicate.jpg"),
                     ("stale-failure", "failure.jpg")}  # fmt: skip
    text = run("verify", "--db", db, ok=False)
    assert text.stdout.splitlines()[0].startswith("checked 9 rows (")
    assert f"missing: {files['missing']}: the file is gone" in text.stdout.splitlines()
    assert text.stderr == "run `clipdex verify --repair` to fix them\n"

    repaired = run("verify", "--db", db, "--repair", ok=False)  # the unmounted folder's row stays: exit 1
    assert repaired.stdout.splitlines()[-1] == (
        "repaired: 1 rows of deleted files removed, 4 files re-ingested, 1 failures cleared"
    )
    after = json.loads(run("verify", "--db", db, "--json", ok=False).stdout)
    assert after["problems"] == {"folder-missing": 1}
    fresh = open_library(str(tmp_path / "fresh"), tiny_model)
    fresh.ingest([tmp_path / "photos"])
    ids, matrix = lib.collection.vectors()
    mine = {lib.collection.get(i).path: v for i, v in zip(ids, matrix, strict=True)}  # type: ignore[union-attr]
    fresh_ids, fresh_matrix = fresh.collection.vectors()
    theirs = {fresh.collection.get(i).path: v for i, v in zip(fresh_ids, fresh_matrix, strict=True)}  # type: ignore[union-attr]
    assert set(mine) - set(theirs) == {str(files["away"])}
    assert min(float(mine[p] @ theirs[p]) for p in theirs) >= 0.999  # every row shows its file's bytes
    assert np.isclose(np.linalg.norm(mine[str(files["vector"])]), 1.0)
    again = lib.collection.get_by_path(str(files["content"]))
    assert again is not None and again.id == changed.id and again.hash != changed.hash  # read again in place


def test_verify_of_a_sound_collection(tmp_path: Path, tiny_model: str, photos: Path) -> None:
    lib = open_library(str(tmp_path / "db"), tiny_model)
    lib.ingest([photos])
    report = lib.verify()
    assert report.ok and report.checked == lib.collection.count()
    done = run("verify", "--db", lib.collection.uri)
    assert done.stdout.startswith(f"checked {report.checked} rows (") and done.stdout.endswith(": 0 problems\n")


def test_verify_checks_a_video_once_for_all_its_moments(tmp_path: Path, tiny_model: str) -> None:
    scenes = [PICTURES["checkers"], PICTURES["gradient"], PICTURES["rings"]]
    video = write_video(tmp_path / "photos" / "clip.mp4", scenes)
    corpus.pattern_image(tmp_path / "photos" / "photo.jpg", seed=3)
    lib = open_library(str(tmp_path / "db"), tiny_model)
    lib.ingest([tmp_path / "photos"])
    moments = lib.collection.video_counts()[1]
    assert moments >= 3  # many rows, one file: not a duplicate
    fresh = lib.verify()
    assert (fresh.ok, fresh.checked) == (True, moments + 1)
    stats = lib.stats()
    assert (stats.images, stats.videos, stats.moments) == (1, 1, moments)
    info = run("info", "--db", lib.collection.uri)
    assert info.stdout.splitlines()[2:4] == ["images       1", f"videos       1 ({moments} moments)"]
    data = json.loads(run("info", "--db", lib.collection.uri, "--json").stdout)
    assert (data["images"], data["videos"], data["moments"]) == (1, 1, moments)

    moment = next(r for r in lib.collection.columns(["id", "kind"]) if r["kind"] == "video")
    record = lib.collection.get(str(moment["id"]))
    assert record is not None and record.timestamp is not None
    lib.collection.upsert([dataclasses.replace(record, vector=record.vector * 2)])
    write_video(video, scenes[::-1])  # other content at the same path
    report = lib.verify()
    assert sorted((p.kind, p.path) for p in report.problems) == [
        ("size" if video.stat().st_size != record.size else "content", str(video)),  # once, not once per moment
        ("vector", str(video)),
    ]
    vector = next(p for p in report.problems if p.kind == "vector")
    assert vector.detail == f"image vector of the moment at {record.timestamp:.1f} s has length 2.0000, not 1"

    repaired = lib.verify(repair=True)
    assert (repaired.removed, repaired.reingested) == (0, 1)
    assert lib.verify().ok
    rows = [r for r in lib.collection.columns(["path", "file_id"]) if r["path"] == str(video)]
    assert len(rows) == lib.collection.video_counts()[1] and len({r["file_id"] for r in rows}) == 1
