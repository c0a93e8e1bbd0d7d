"""Duplicates that help: the original kept, a summary, paths for xargs, and moves that lose nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipeline import Clipdex
from pipeline.analyse.duplicates import copy_marked, deletable, find_duplicates, summarise
from tests import corpus
from tests.conftest import open_library, run

OLD, NEW = 1_180_000_000, 1_690_000_000  # 2007 and 2023, as mtimes
THRESHOLDS = ("--near", "0.9995", "--similar", "0.98", "--burst", "30")


def make_album(root: Path) -> Path:
    """An original with a Finder-style copy elsewhere, a resized copy of it, a pair whose
    copy-named file is the older one, and unrelated pictures."""
    original = corpus.large_jpeg(root / "2007" / "08" / "IMG_0412.JPG", megapixels=0.3, seed=1)
    (root / "2023" / "07").mkdir(parents=True)
    shutil.copy(original, root / "2023" / "07" / "Dune copy.jpg")  # same bytes, same mtime (copy keeps it)
    with Image.open(original) as im:
        im.resize((im.width // 2, im.height // 2)).save(root / "2023" / "07" / "small.jpg", quality=95)
    photo = corpus.pattern_image(root / "b" / "photo.png", seed=30)
    shutil.copy(photo, root / "b" / "photo - Copy.png")
    for seed in (40, 41, 42):
        corpus.pattern_image(root / "other" / f"other{seed}.png", seed=seed)
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (OLD, OLD))
    os.utime(root / "b" / "photo.png", (NEW, NEW))  # the copy-named file is the older one: it is kept
    for hours, seed in enumerate((40, 41, 42), 1):  # hours apart: not a burst
        os.utime(root / "other" / f"other{seed}.png", (OLD + hours * 3600, OLD + hours * 3600))
    os.utime(root / "2023" / "07" / "small.jpg", (NEW, NEW))
    return root


@pytest.fixture(scope="module")
def album_lib(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Clipdex]:
    """The album ingested once, for the tests that only read."""
    base = tmp_path_factory.mktemp("dups")
    root = make_album(base / "album")
    lib = open_library(str(base / "db"), tiny_model, workers=0)
    lib.ingest([root])
    return root, lib


@pytest.mark.parametrize(
    "name",
    ["Dune copy.jpg", "Dune - Copy.jpg", "Dune copy 2.jpg", "Dune (1).jpg", "Dune_1.jpg", "Dune-2.JPG",
     "Copy of Dune.jpg", "Dune - Copy (2).jpg", "Dune Kopie.jpg"],
)  # fmt: skip
def test_copy_marks_are_recognised(name: str) -> None:
    assert copy_marked(f"/photos/{name}")


@pytest.mark.parametrize("name", ["IMG_0412.JPG", "Dune.jpg", "copycat.jpg", "DSC_0001.jpg", "2019-07-14.jpg"])
def test_originals_carry_no_copy_mark(name: str) -> None:
    assert not copy_marked(f"/photos/{name}")


def test_keepers_are_the_originals(album_lib: tuple[Path, Clipdex]) -> None:
    root, lib = album_lib
    groups = find_duplicates(lib.collection, near=0.9995, similar=0.98, burst_seconds=30)
    named = [(g.tier, g.keeper.path, g.why, sorted(os.path.relpath(m.path, root) for m in g.members)) for g in groups]
    assert named == [
        (
            "exact",
            str(root / "2007/08/IMG_0412.JPG"),
            "name without a copy mark",
            ["2007/08/IMG_0412.JPG", "2023/07/Dune copy.jpg"],
        ),
        ("exact", str(root / "b/photo - Copy.png"), "earliest modified", ["b/photo - Copy.png", "b/photo.png"]),
        ("near", str(root / "2007/08/IMG_0412.JPG"), "largest picture", ["2007/08/IMG_0412.JPG", "2023/07/small.jpg"]),
    ]
    assert lib.duplicates(near=0.9995, similar=0.98, burst_seconds=30) == groups
    summary = summarise(groups)
    going = [os.path.relpath(m.path, root) for m in deletable(groups)]
    assert going == ["2023/07/Dune copy.jpg", "b/photo.png", "2023/07/small.jpg"]
    assert (summary.groups, summary.files, summary.deletable) == (3, 5, 3)
    assert summary.deletable_bytes == sum(os.path.getsize(root / p) for p in going)


def test_cli_summary_json_and_print_deletable(album_lib: tuple[Path, Clipdex]) -> None:
    root, lib = album_lib
    db = lib.collection.uri
    going = [root / "2023/07/Dune copy.jpg", root / "b/photo.png", root / "2023/07/small.jpg"]
    freed = sum(p.stat().st_size for p in going)
    result = run("duplicates", *THRESHOLDS, "--db", db, "--print-deletable")
    assert result.stdout == "".join(f"{p}\n" for p in going)  # nothing else on stdout, for xargs -d '\n'
    assert result.stderr.startswith(
        "3 groups (2 exact, 1 near, 0 similar), 5 files; 3 could go (exact, near), freeing "
    )
    lines = run("duplicates", *THRESHOLDS, "--db", db, "--json").stdout.splitlines()
    assert [json.loads(line).get("tier") for line in lines[:-1]] == ["exact", "exact", "near"]
    assert json.loads(lines[-1]) == {
        "summary": {"groups": 3, "exact": 2, "near": 1, "similar": 0, "files": 5, "deletable": 3,
                    "deletable_bytes": freed, "tiers": ["exact", "near"]}
    }  # fmt: skip
    text = run("duplicates", *THRESHOLDS, "--db", db).stdout.splitlines()
    assert text[0] == f"exact (2): keep {root / '2007/08/IMG_0412.JPG'} (name without a copy mark)"
    assert text[-1].startswith("3 groups (2 exact, 1 near, 0 similar), 5 files; 3 could go")
    usage = run("duplicates", "--db", db, "--json", "--print-deletable", ok=False)
    assert "give one of --json, --print-deletable and --move-to" in usage.stderr
    assert "--yes confirms --move-to" in run("duplicates", "--db", db, "--yes", ok=False).stderr


def test_move_to_is_a_dry_run_then_moves_keeping_folders_never_overwriting(tmp_path: Path, tiny_model: str) -> None:
    root = make_album(tmp_path / "album")
    db = str(tmp_path / "db")
    lib = open_library(db, tiny_model, workers=0)
    lib.ingest([root])
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    rows = lib.collection.count()
    dest = tmp_path / "dupes"

    dry = run("duplicates", *THRESHOLDS, "--db", db, "--move-to", str(dest))
    assert dry.stdout.splitlines() == [
        f"would move {root / '2023/07/Dune copy.jpg'} -> {dest / '2023/07/Dune copy.jpg'}",
        f"would move {root / 'b/photo.png'} -> {dest / 'b/photo.png'}",
        f"would move {root / '2023/07/small.jpg'} -> {dest / '2023/07/small.jpg'}",
    ]
    assert "dry run: 3 files" in dry.stderr and "add --yes" in dry.stderr
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before and not dest.exists()

    (dest / "b").mkdir(parents=True)
    (dest / "b" / "photo.png").write_bytes(b"already here")  # must not be overwritten
    moved = run("duplicates", *THRESHOLDS, "--db", db, "--move-to", str(dest), "--yes")
    assert moved.stdout.splitlines() == [
        f"moved {root / '2023/07/Dune copy.jpg'} -> {dest / '2023/07/Dune copy.jpg'}",
        f"moved {root / '2023/07/small.jpg'} -> {dest / '2023/07/small.jpg'}",
    ]
    assert f"skipped {root / 'b/photo.png'}: {dest / 'b/photo.png'} exists; nothing is overwritten" in moved.stderr
    assert (dest / "b" / "photo.png").read_bytes() == b"already here"
    assert (dest / "2023/07/Dune copy.jpg").read_bytes() == before[root / "2023/07/Dune copy.jpg"]
    assert not (root / "2023/07/Dune copy.jpg").exists() and (root / "b/photo.png").exists()
    assert lib.collection.count() == rows - 2  # the moved files' rows went: nothing reports them missing
    assert lib.collection.get_by_path(str(root / "2023/07/Dune copy.jpg")) is None
    assert lib.collection.get_by_path(str(root / "b/photo.png")) is not None
    left = run("duplicates", *THRESHOLDS, "--db", db, "--print-deletable").stdout
    assert left == f"{root / 'b/photo.png'}\n"

    os.utime(root / "b/photo.png", (NEW + 60, NEW + 60))  # changed since ingest: it stays
    again = run("duplicates", *THRESHOLDS, "--db", db, "--move-to", str(tmp_path / "elsewhere"), "--yes")
    assert again.stdout == ""
    assert "it changed since ingest; run clipdex ingest" in again.stderr
    assert (root / "b/photo.png").exists()


def test_move_to_a_file_is_one_line(album_lib: tuple[Path, Clipdex], tmp_path: Path) -> None:
    _, lib = album_lib
    target = tmp_path / "a-file"
    target.write_text("x")
    result = run("duplicates", *THRESHOLDS, "--db", lib.collection.uri, "--move-to", str(target), ok=False)
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"--move-to {target}: not a folder; give a folder (it is created when missing)")
    )
