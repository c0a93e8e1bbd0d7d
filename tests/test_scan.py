"""Scanner.scan and sniff_image: which files are images, which folders are skipped, loops and links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import InputNotFound
from pipeline.ingest.scan import SKIPPED_FOLDERS, Scanner, ScanResult, sniff_image
from tests import corpus


def _jpeg(path: Path) -> Path:
    return corpus.solid_jpeg(path, (10, 120, 200), size=(8, 8))


def _rel(result: ScanResult, root: Path) -> list[str]:
    """Listed files as sorted paths relative to root, with / separators."""
    return sorted(Path(f.path).relative_to(root).as_posix() for f in result.files)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The test corpus, and the relative paths of the files a scan must list."""
    root = tmp_path_factory.mktemp("scan-corpus")
    good = corpus.good_images(root / "good")
    bad = corpus.bad_files(root / "bad")
    corpus.non_images(root / "other")
    expected = [f"good/{p.name}" for p in good.values()] + [f"bad/{p.name}" for p in bad.values()]
    return root, sorted([*expected, "other/clip.mp4"])  # a (fake) video is listed: ingest records it as failed


# ---------------------------------------------------------------- the corpus as a whole


def test_walk_lists_good_and_bad_images_and_videos_recursively(corpus_root: tuple[Path, list[str]]) -> None:
    root, expected = corpus_root

    result = Scanner().scan([root])

    assert _rel(result, root) == expected
    assert result.videos == 1  # other/clip.mp4, listed among the files
    assert result.errors == []


def test_listed_files_carry_absolute_path_size_and_mtime(corpus_root: tuple[Path, list[str]]) -> None:
    result = Scanner().scan([corpus_root[0]])

    assert result.files
    for f in result.files:
        info = os.stat(f.path)
        assert os.path.isabs(f.path)
        assert (f.size, f.mtime_ns) == (info.st_size, info.st_mtime_ns)


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _jpeg(tmp_path / "photos" / "a.jpg")
    monkeypatch.chdir(tmp_path)

    result = Scanner().scan(["photos"])

    assert [f.path for f in result.files] == [str(tmp_path / "photos" / "a.jpg")]


def test_home_in_root_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _jpeg(tmp_path / "photos" / "a.jpg")
    monkeypatch.setenv("HOME", str(tmp_path))

    result = Scanner().scan(["~/photos"])

    assert [f.path for f in result.files] == [str(tmp_path / "photos" / "a.jpg")]


def test_single_file_root_is_listed(tmp_path: Path) -> None:
    photo = _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "b.jpg")

    result = Scanner().scan([photo])

    assert [f.path for f in result.files] == [str(photo)]
    assert result.errors == []


def test_file_given_directly_is_taken_whatever_its_name(tmp_path: Path) -> None:
    readme = corpus.non_images(tmp_path)["readme.txt"]
    hidden = _jpeg(tmp_path / ".hidden.jpg")

    result = Scanner(include=["*.png"], exclude=["*.jpg"]).scan([readme, hidden])

    assert [f.path for f in result.files] == [str(readme), str(hidden)]


def test_overlapping_roots_list_each_file_once(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "sub" / "b.jpg")

    result = Scanner().scan([tmp_path / "sub", tmp_path, tmp_path / "sub" / "b.jpg"])

    assert _rel(result, tmp_path) == ["a.jpg", "sub/b.jpg"]


# ---------------------------------------------------------------- skipped folders and files


def test_hidden_folders_and_files_are_skipped(tmp_path: Path) -> None:
    _jpeg(tmp_path / "shown.jpg")
    _jpeg(tmp_path / ".hidden.jpg")
    _jpeg(tmp_path / ".thumbnails" / "t.jpg")
    _jpeg(tmp_path / "sub" / ".cache" / "c.jpg")
    _jpeg(tmp_path / "sub" / "kept.jpg")

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["shown.jpg", "sub/kept.jpg"]


@pytest.mark.parametrize("folder", sorted(SKIPPED_FOLDERS))
def test_nas_and_system_folders_are_skipped(tmp_path: Path, folder: str) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / folder / "thumb.jpg")
    _jpeg(tmp_path / "album" / folder / "thumb.jpg")

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg"]


def test_skip_excludes_a_folder(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "collection" / "data" / "preview.jpg")
    _jpeg(tmp_path / "other" / "b.jpg")

    result = Scanner(skip=[str(tmp_path / "collection")]).scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg", "other/b.jpg"]


def test_skip_accepts_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "db" / "x.jpg")
    monkeypatch.chdir(tmp_path)

    result = Scanner(skip=["db"]).scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg"]


# ---------------------------------------------------------------- include and exclude globs


@pytest.fixture
def album(tmp_path: Path) -> Path:
    for rel in (
        "a.jpg",
        "b.png",
        "2023/c.jpg",
        "2024/d.jpg",
        "2024/e.png",
        "2024/drafts/f.jpg",
        "drafts/g.png",
    ):
        _jpeg(tmp_path / "album" / rel)
    return tmp_path / "album"


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        (["*.png"], ["2024/e.png", "b.png", "drafts/g.png"]),
        (["2024/*"], ["2024/d.jpg", "2024/drafts/f.jpg", "2024/e.png"]),
        (["2024/*.png", "a.jpg"], ["2024/e.png", "a.jpg"]),
        (["d.jpg"], ["2024/d.jpg"]),
        (["*.gif"], []),
    ],
)
def test_include_matches_names_and_relative_paths(album: Path, include: list[str], expected: list[str]) -> None:
    assert _rel(Scanner(include=include).scan([album]), album) == expected


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [
        (["*.png"], ["2023/c.jpg", "2024/d.jpg", "2024/drafts/f.jpg", "a.jpg"]),
        (["2024/*"], ["2023/c.jpg", "a.jpg", "b.png", "drafts/g.png"]),
        (["a.jpg", "2024/e.png"], ["2023/c.jpg", "2024/d.jpg", "2024/drafts/f.jpg", "b.png", "drafts/g.png"]),
        # A folder name prunes that folder wherever it is, and everything inside it.
        (["drafts"], ["2023/c.jpg", "2024/d.jpg", "2024/e.png", "a.jpg", "b.png"]),
        # A relative path prunes only that folder.
        (["2024/drafts"], ["2023/c.jpg", "2024/d.jpg", "2024/e.png", "a.jpg", "b.png", "drafts/g.png"]),
        (["202?"], ["a.jpg", "b.png", "drafts/g.png"]),
    ],
)
def test_exclude_matches_names_and_relative_paths(album: Path, exclude: list[str], expected: list[str]) -> None:
    assert _rel(Scanner(exclude=exclude).scan([album]), album) == expected


def test_exclude_beats_include(album: Path) -> None:
    result = Scanner(include=["*.jpg"], exclude=["2024"]).scan([album])

    assert _rel(result, album) == ["2023/c.jpg", "a.jpg"]


def test_excluded_folder_is_not_walked(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")

    result = Scanner(exclude=["drafts"]).scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg"]
    assert result.errors == []  # the broken link inside was never looked at


# ---------------------------------------------------------------- links


def test_symlink_loop_terminates_and_lists_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _jpeg(root / "a.jpg")
    _jpeg(root / "sub" / "b.jpg")
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)
    (root / "self").symlink_to(".", target_is_directory=True)

    result = Scanner().scan([root])

    assert _rel(result, root) == ["a.jpg", "sub/b.jpg"]
    assert result.errors == []


def test_two_links_to_one_folder_walk_it_once(tmp_path: Path) -> None:
    _jpeg(tmp_path / "outside" / "x.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link1").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "link2").symlink_to(tmp_path / "outside", target_is_directory=True)

    result = Scanner(follow_links=True).scan([root])

    assert _rel(result, root) == ["link1/x.jpg"]


def test_symlink_to_a_file_is_listed_under_the_link_path(tmp_path: Path) -> None:
    target = _jpeg(tmp_path / "outside" / "real.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(target)

    result = Scanner().scan([root])

    assert [f.path for f in result.files] == [str(root / "link.jpg")]
    assert result.files[0].size == target.stat().st_size


def test_broken_symlink_with_image_extension_is_an_error(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "deleted.txt")  # not an image: ignored

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg"]
    assert result.errors == [(str(tmp_path / "gone.jpg"), "cannot read: No such file or directory (a broken link?)")]


def test_broken_symlink_given_as_root_is_an_error(tmp_path: Path) -> None:
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "deleted")

    result = Scanner().scan([link])

    assert result.files == []
    assert result.errors == [(str(link), "cannot read: No such file or directory (a broken link?)")]


# ---------------------------------------------------------------- what counts as an image


def test_image_without_extension_is_found_by_content(tmp_path: Path) -> None:
    image = corpus.good_images(tmp_path / "good")["no_extension"]
    mixed = tmp_path / "mixed"
    corpus.non_images(mixed)
    (mixed / "IMG_0001").write_bytes(image.read_bytes())

    result = Scanner().scan([mixed])

    assert _rel(result, mixed) == ["IMG_0001", "clip.mp4"]  # the video by its extension, readme.txt not at all


def test_non_images_without_image_extension_are_ignored(tmp_path: Path) -> None:
    corpus.non_images(tmp_path)
    (tmp_path / "Makefile").write_text("all:\n\ttrue\n", encoding="utf-8")
    (tmp_path / "empty").write_bytes(b"")

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["clip.mp4"]  # only the video (by its extension)
    assert result.errors == []
    assert result.videos == 1


def test_text_file_named_jpg_is_listed(tmp_path: Path) -> None:
    notes = corpus.bad_files(tmp_path)["text_as_jpg"]

    result = Scanner(include=["notes.jpg"]).scan([tmp_path])

    assert [f.path for f in result.files] == [str(notes)]


def test_image_extension_is_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / "IMG_1.JPG").write_bytes(b"not really")
    (tmp_path / "IMG_2.Png").write_bytes(b"not really")

    assert _rel(Scanner().scan([tmp_path]), tmp_path) == ["IMG_1.JPG", "IMG_2.Png"]


def test_videos_are_listed_and_counted(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.MOV", "c.mkv", "d.3gp", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    _jpeg(tmp_path / "e.jpg")

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.mp4", "b.MOV", "c.mkv", "d.3gp", "e.jpg"]  # hidden files stay out
    assert result.videos == 4


def test_videos_outside_include_are_not_counted(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "b.mp4").write_bytes(b"")

    assert Scanner(include=["keep/*"]).scan([tmp_path]).videos == 1


def test_special_files_are_ignored(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    _jpeg(tmp_path / "a.jpg")

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg"]
    assert result.errors == []


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"GIF87a\x01\x00",
        b"GIF89a\x01\x00",
        b"BM\xb6\x16\x00\x00",
        b"II*\x00\x08\x00\x00\x00",
        b"MM\x00*\x00\x00\x00\x08",
        b"RIFF\xba\x04\x00\x00WEBPVP8 ",
        b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00",
        b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00",
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00",
    ],
)
def test_sniff_image_recognises_image_headers(header: bytes) -> None:
    assert sniff_image(header)


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"\xff\xd8",
        b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00",  # MP4 video
        b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00",  # QuickTime video
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # WAV audio
        b"%PDF-1.7\n",
        b"PK\x03\x04",
        b"These are my notes",
        b'{"name": "clipdex"}',
    ],
)
def test_sniff_image_rejects_other_headers(header: bytes) -> None:
    assert not sniff_image(header)


def test_sniff_image_accepts_every_good_corpus_file(tmp_path: Path) -> None:
    for name, path in corpus.good_images(tmp_path).items():
        assert sniff_image(path.read_bytes()[:16]), name


# ---------------------------------------------------------------- sidecars


def test_sidecars_are_found_beside_images(tmp_path: Path) -> None:
    _jpeg(tmp_path / "IMG_1.jpg")
    (tmp_path / "IMG_1.txt").write_text("a dog", encoding="utf-8")
    _jpeg(tmp_path / "IMG_2.jpg")
    (tmp_path / "IMG_2.jpg.txt").write_text("a cat", encoding="utf-8")
    _jpeg(tmp_path / "IMG_3.jpg")
    _jpeg(tmp_path / "IMG_4.jpg")
    (tmp_path / "IMG_4.txt").write_text("short form wins", encoding="utf-8")
    (tmp_path / "IMG_4.jpg.txt").write_text("long form", encoding="utf-8")

    result = Scanner().scan([tmp_path])

    assert {Path(f.path).name: f.sidecar for f in result.files} == {
        "IMG_1.jpg": str(tmp_path / "IMG_1.txt"),
        "IMG_2.jpg": str(tmp_path / "IMG_2.jpg.txt"),
        "IMG_3.jpg": None,
        "IMG_4.jpg": str(tmp_path / "IMG_4.txt"),
    }


def test_sidecar_in_another_folder_is_not_used(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a" / "IMG_1.jpg")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "IMG_1.txt").write_text("elsewhere", encoding="utf-8")

    result = Scanner().scan([tmp_path])

    assert [f.sidecar for f in result.files] == [None]


def test_sidecar_of_file_given_directly(tmp_path: Path) -> None:
    photo = _jpeg(tmp_path / "IMG_1.jpg")
    (tmp_path / "IMG_1.txt").write_text("a dog", encoding="utf-8")

    result = Scanner().scan([photo])

    assert [f.sidecar for f in result.files] == [str(tmp_path / "IMG_1.txt")]


def test_long_form_sidecar_of_file_given_directly(tmp_path: Path) -> None:
    photo = _jpeg(tmp_path / "IMG_2.jpg")
    (tmp_path / "IMG_2.jpg.txt").write_text("a cat", encoding="utf-8")

    result = Scanner().scan([photo])

    assert [f.sidecar for f in result.files] == [str(tmp_path / "IMG_2.jpg.txt")]


# ---------------------------------------------------------------- errors


def test_missing_root_raises_input_not_found(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    missing = tmp_path / "nope"

    with pytest.raises(InputNotFound) as info:
        Scanner().scan([tmp_path, missing])

    assert str(info.value) == f"{missing} does not exist; check the path to ingest"


def test_unreadable_folder_is_reported(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    locked = tmp_path / "locked"
    _jpeg(locked / "secret.jpg")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user can read a chmod 000 folder (root?)")
        result = Scanner().scan([tmp_path])
    finally:
        locked.chmod(0o755)

    assert _rel(result, tmp_path) == ["a.jpg"]
    assert result.errors == [(str(locked), "cannot list folder: Permission denied; check permissions")]


def test_folder_that_cannot_be_listed_is_reported_even_as_root(tmp_path: Path) -> None:
    # A folder whose path is longer than PATH_MAX cannot be opened by path, whoever runs the test.
    _jpeg(tmp_path / "a.jpg")
    name = "d" * 250
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    too_long = str(tmp_path)
    while len(too_long) < os.pathconf(tmp_path, "PC_PATH_MAX"):  # the first folder over the limit
        too_long = os.path.join(too_long, name)

    result = Scanner().scan([tmp_path])

    assert _rel(result, tmp_path) == ["a.jpg"]
    assert result.errors == [(too_long, "cannot list folder: File name too long; check permissions")]
