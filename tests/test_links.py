"""Folder symlinks: followed only where they stay under a folder given, unless --follow-links says so;
rows stored under a link that is no longer followed are kept, never deleted silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline import Clipdex
from pipeline.ingest.scan import Scanner
from tests import corpus
from tests.conftest import open_library, run


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A root with one image and a link, etc, to a folder outside it that holds two more."""
    root = tmp_path / "photos"
    corpus.pattern_image(root / "a.jpg", seed=1)
    outside = tmp_path / "outside"
    corpus.pattern_image(outside / "x.jpg", seed=2)
    corpus.pattern_image(outside / "deep" / "y.png", seed=3)
    (root / "etc").symlink_to(outside, target_is_directory=True)
    return root, outside


def one_link_note(link: Path, target: Path) -> str:
    return (
        f"1 folder link points outside the folders given and was not followed ({link} -> {os.path.realpath(target)}); "
        "pass --follow-links to follow it"
    )


def stored(lib: Clipdex) -> list[str]:
    return sorted(lib.collection.file_states())


# ---------------------------------------------------------------- the scanner


def test_a_link_outside_the_root_is_not_walked(tree: tuple[Path, Path]) -> None:
    root, outside = tree

    result = Scanner().scan([root])

    assert [f.path for f in result.files] == [str(root / "a.jpg")]
    assert result.unfollowed == [(str(root / "etc"), os.path.realpath(outside))]
    assert result.errors == []


def test_follow_links_walks_a_link_outside_the_root(tree: tuple[Path, Path]) -> None:
    root, _ = tree

    result = Scanner(follow_links=True).scan([root])

    assert sorted(f.path for f in result.files) == [
        str(root / "a.jpg"),
        str(root / "etc" / "deep" / "y.png"),
        str(root / "etc" / "x.jpg"),
    ]
    assert result.unfollowed == []


@pytest.mark.parametrize("follow_links", [False, True])
def test_a_link_to_another_root_given_is_an_alias(tree: tuple[Path, Path], follow_links: bool) -> None:
    root, outside = tree

    result = Scanner(follow_links=follow_links).scan([root, outside / "deep"])

    # etc leads outside the roots (outside/deep is one, outside is not); etc/deep is found as outside/deep.
    expected = [root / "a.jpg", outside / "deep" / "y.png"] + ([root / "etc" / "x.jpg"] if follow_links else [])
    assert sorted(f.path for f in result.files) == sorted(map(str, expected))


def test_a_link_to_a_second_root_is_not_walked_or_reported(tree: tuple[Path, Path]) -> None:
    root, outside = tree

    result = Scanner().scan([root, outside])

    assert sorted(f.path for f in result.files) == sorted(
        str(p) for p in (root / "a.jpg", outside / "deep" / "y.png", outside / "x.jpg")
    )
    assert result.unfollowed == []


def test_a_chain_of_links_is_judged_by_its_real_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    corpus.pattern_image(root / "sub" / "a.jpg", seed=1)
    (tmp_path / "hop").symlink_to(root / "sub", target_is_directory=True)  # outside, but back inside
    (root / "via").symlink_to(tmp_path / "hop", target_is_directory=True)

    result = Scanner().scan([root])

    assert [f.path for f in result.files] == [str(root / "sub" / "a.jpg")]
    assert result.unfollowed == []


def test_overlapping_roots_report_a_link_once(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "album").mkdir()
    (root / "album" / "up").symlink_to(outside / "deep", target_is_directory=True)

    result = Scanner().scan([root / "album", root])

    assert result.unfollowed == [
        (str(root / "album" / "up"), os.path.realpath(outside / "deep")),
        (str(root / "etc"), os.path.realpath(outside)),
    ]


def test_a_loop_through_a_followed_link_is_survived(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (outside / "back").symlink_to(outside, target_is_directory=True)

    result = Scanner(follow_links=True).scan([root])

    assert len(result.files) == 3


# ---------------------------------------------------------------- ingest


def test_ingest_does_not_follow_a_link_outside_and_says_so(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, outside = tree
    lib = open_library(db, tiny_model)

    report = lib.ingest([root])

    assert report.added == 1
    assert stored(lib) == [str(root / "a.jpg")]
    assert report.notes == [one_link_note(root / "etc", outside)]


def test_two_links_outside_make_one_note(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, outside = tree
    (root / "also").symlink_to(outside / "deep", target_is_directory=True)

    report = open_library(db, tiny_model).ingest([root])

    assert report.notes == [
        f"2 folder links point outside the folders given and were not followed "
        f"(first: {root / 'also'} -> {os.path.realpath(outside / 'deep')}); pass --follow-links to follow them"
    ]


def test_follow_links_setting_walks_the_link(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, _ = tree
    lib = open_library(db, tiny_model, follow_links=True)

    report = lib.ingest([root])

    assert (report.added, report.notes) == (3, [])
    assert stored(lib) == [str(root / "a.jpg"), str(root / "etc" / "deep" / "y.png"), str(root / "etc" / "x.jpg")]


def test_a_link_to_a_second_root_does_not_duplicate_rows(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, outside = tree
    lib = open_library(db, tiny_model)

    report = lib.ingest([root, outside])

    assert (report.added, report.notes) == (3, [])
    assert stored(lib) == sorted(str(p) for p in (root / "a.jpg", outside / "deep" / "y.png", outside / "x.jpg"))


def test_rows_under_a_link_no_longer_followed_are_kept(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, outside = tree
    lib = open_library(db, tiny_model, follow_links=True)
    lib.ingest([root])
    before = lib.collection.file_states()
    (outside / "x.jpg").unlink()  # even a file gone from there is not judged: it was not scanned
    lib.settings = lib.settings.override(follow_links=False)

    report = lib.ingest([root])

    assert (report.removed, report.unchanged) == (0, 1)
    assert lib.collection.file_states() == before
    assert report.notes == [
        one_link_note(root / "etc", outside),
        "2 stored images lie under folder links that were not followed: kept as they are; "
        "pass --follow-links to update them, or delete the links to remove them",
    ]
    (root / "etc").unlink()  # what the note says removes them
    report = lib.ingest([root])
    assert (report.removed, report.notes) == (2, [])
    assert stored(lib) == [str(root / "a.jpg")]


def test_following_again_updates_rows_kept_under_a_link(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, outside = tree
    lib = open_library(db, tiny_model, follow_links=True)
    lib.ingest([root])
    shutil.rmtree(outside / "deep")
    lib.settings = lib.settings.override(follow_links=False)
    assert lib.ingest([root]).removed == 0
    lib.settings = lib.settings.override(follow_links=True)

    report = lib.ingest([root])

    assert (report.removed, report.unchanged, report.notes) == (1, 2, [])


# ---------------------------------------------------------------- the CLI


def test_cli_follow_links_flag(tree: tuple[Path, Path], db: str, tiny_model: str) -> None:
    root, outside = tree

    plain = run("ingest", str(root), "--db", db, "--model", tiny_model)
    assert f"note: {one_link_note(root / 'etc', outside)}" in plain.stderr.splitlines()
    assert plain.stdout.startswith("1 added, ")

    followed = run("ingest", str(root), "--db", db, "--follow-links")
    assert "note:" not in followed.stderr
    assert followed.stdout.startswith("2 added, 0 updated, 0 moved, 0 removed, 1 unchanged, ")


def test_cli_no_follow_links_beats_the_environment(
    tree: tuple[Path, Path], db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    monkeypatch.setenv("CLIPDEX_FOLLOW_LINKS", "yes")

    assert run("ingest", str(root), "--db", db, "--model", tiny_model, "--no-follow-links").stdout.startswith(
        "1 added, "
    )
    assert run("ingest", str(root), "--db", db).stdout.startswith("2 added, ")
