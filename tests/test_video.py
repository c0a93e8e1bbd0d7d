"""Videos: moments sampled, stored, found by a photo at the right time, synced by file, and bad
videos failed with a reason. The videos are made here with PyAV: scenes of known pictures at
known times."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from models.transform import ImageTransform
from pipeline import Clipdex
from pipeline.ingest.decode import DecodeFailed
from pipeline.ingest.video import DecodedVideo, Sampling, decode_video, frame_at
from storage.schema import IMAGES, META
from tests.conftest import open_library, run

FPS = 8
SIDE = 64
SCENE_S = 2.0
H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"
VP9 = "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else None
SMALL = ImageTransform(size=(32, 32))


def _checkers() -> np.ndarray:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    board = ((x // 8 + y // 8) % 2 * 255).astype(np.uint8)
    return np.stack([board, 255 - board, np.full_like(board, 40)], axis=-1)


def _gradient() -> np.ndarray:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    return np.stack([x * 4, y * 4, 255 - x * 2], axis=-1).astype(np.uint8)


def _rings() -> np.ndarray:
    y, x = np.mgrid[0:SIDE, 0:SIDE] - SIDE / 2
    ring = ((np.hypot(x, y) // 5) % 2 * 255).astype(np.uint8)
    return np.stack([ring, np.full_like(ring, 200), 255 - ring], axis=-1)


PICTURES = {"checkers": _checkers(), "gradient": _gradient(), "rings": _rings()}


def write_video(
    path: Path, scenes: Sequence[np.ndarray], codec: str = H264, seconds: float = SCENE_S, gop: int = 250
) -> Path:
    """A video of the pictures one after another, `seconds` each, at FPS, a keyframe at least
    every gop frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "8", "g": str(gop)}
        for picture in scenes:
            for _ in range(round(seconds * FPS)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def save_picture(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PICTURES[name]).save(path)
    return path


@dataclass
class Library:
    lib: Clipdex
    root: Path  # the ingested folder
    queries: Path  # the pictures, outside the folder
    db: str


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, export_cache: Path) -> Iterator[Library]:
    """checkers 0-2 s, red 2-4 s, gradient 4-6 s in an H.264 MP4; gradient, checkers, rings in a
    VP9 WebM; two photos (checkers, and a red square)."""
    base = tmp_path_factory.mktemp("videos")
    root, queries = base / "library", base / "queries"
    red = np.zeros((SIDE, SIDE, 3), np.uint8)
    red[..., 0] = 255
    write_video(root / "clips" / "scenes.mp4", [PICTURES["checkers"], red, PICTURES["gradient"]])
    if VP9:
        write_video(root / "clips" / "other.webm", [PICTURES["gradient"], PICTURES["checkers"], PICTURES["rings"]], VP9)
    save_picture(root / "photos" / "checkers.png", "checkers")
    Image.fromarray(red).save(root / "photos" / "red.png")
    for name in PICTURES:
        save_picture(queries / f"{name}.png", name)
    db = str(base / "db")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPDEX_CACHE", str(export_cache))
        lib = open_library(db, tiny_model)
        report = lib.ingest([root])
        assert (report.added, report.failed, report.videos) == (4 if VP9 else 3, 0, 2 if VP9 else 1), report
        assert report.moments == lib.collection.count() - 2  # every row but the two photos
        yield Library(lib, root, queries, db)


def _moments(lib: Clipdex, path: Path) -> list[dict[str, object]]:
    rows = lib.collection.columns(["id", "path", "kind", "file_id", "timestamp", "duration", "fps", "codec"])
    return sorted((r for r in rows if r["path"] == str(path)), key=lambda r: float(str(r["timestamp"])))


def test_moments_are_rows_of_their_video(library: Library) -> None:
    video = library.root / "clips" / "scenes.mp4"
    rows = _moments(library.lib, video)
    assert [r["timestamp"] for r in rows] == [0.0, 2.0, 4.0]  # the interval, and the cuts, at 2 s and 4 s
    file_id = rows[0]["file_id"]
    assert [r["id"] for r in rows] == [f"{file_id}@0", f"{file_id}@2000", f"{file_id}@4000"]
    assert {(r["kind"], r["duration"], r["fps"], r["codec"]) for r in rows} == {
        ("video", 6.0, float(FPS), "h264" if H264 == "libx264" else "mpeg4")
    }
    state = library.lib.collection.file_states()[str(video)]
    assert state.id == file_id and state.kind == "video"
    videos, moments = library.lib.collection.video_counts()
    assert (videos, moments) == ((2, 6) if VP9 else (1, 3))
    photo = library.lib.collection.get_by_path(str(library.root / "photos" / "red.png"))
    assert photo is not None and (photo.kind, photo.file_id, photo.timestamp) == ("image", photo.id, None)


def test_a_photo_finds_the_moment_that_shows_it(library: Library) -> None:
    for name, expected in (("checkers", 0.0), ("gradient", 4.0)):
        hits = library.lib.similar(library.queries / f"{name}.png", kind="video")
        mp4 = [h for h in hits if h.path.endswith("scenes.mp4")]
        assert len(mp4) == 1  # once per result list, at its best moment
        assert mp4[0].timestamp is not None and expected <= mp4[0].timestamp < expected + SCENE_S, (name, mp4[0])
    if VP9:
        hits = library.lib.similar(library.queries / "rings.png", kind="video")
        assert hits[0].path.endswith("other.webm") and hits[0].timestamp == 4.0


def test_a_moment_s_frame_is_the_one_shown_at_its_time(library: Library) -> None:
    video = str(library.root / "clips" / "scenes.mp4")
    for seconds, expected in ((0.0, PICTURES["checkers"]), (2.0, None), (4.5, PICTURES["gradient"])):
        frame = np.asarray(frame_at(video, seconds, SIDE, 10**9), np.float32)
        if expected is None:  # the red scene
            assert frame[..., 0].mean() > 200 and frame[..., 1:].mean() < 40
        else:
            assert np.abs(frame - expected).mean() < 12, seconds
    with pytest.raises(OSError, match="No such file"):
        frame_at(str(library.root / "photos" / "red.png") + ".missing", 0.0, SIDE, 10**9)


def test_a_video_is_listed_once_with_its_other_moments(library: Library) -> None:
    hits = library.lib.search("a picture", k=10, moments=True)
    paths = [h.path for h in hits]
    assert len(paths) == len(set(paths)) == (4 if VP9 else 3)
    video = next(h for h in hits if h.path.endswith("scenes.mp4"))
    times = [m.timestamp for m in video.moments]
    assert sorted({*times, video.timestamp}) == [0.0, 2.0, 4.0] and times == sorted(times)
    assert all(m.id != video.id for m in video.moments)
    photos = library.lib.search("a picture", kind="image")
    assert {h.kind for h in photos} == {"image"} and len(photos) == 2
    where = library.lib.search("a picture", where="kind = 'video' AND timestamp >= 2")
    assert {h.kind for h in where} == {"video"} and all((h.timestamp or 0) >= 2 for h in where)


def test_similar_to_a_moment_finds_moments_and_photos_but_not_its_own_video(library: Library) -> None:
    rows = _moments(library.lib, library.root / "clips" / "scenes.mp4")
    hits = library.lib.similar_to(str(rows[0]["id"]), k=10)  # the checkers moment
    assert not any(h.path.endswith("scenes.mp4") for h in hits)
    best = {Path(h.path).name: h for h in hits[: 2 if VP9 else 1]}
    assert "checkers.png" in best  # the photo of the same picture
    if VP9:
        assert best["other.webm"].timestamp == 2.0  # the other video, at its checkers scene


def test_cli_json_and_table_show_the_time(library: Library) -> None:
    query = str(library.queries / "gradient.png")
    out = run("similar", query, "--db", library.db, "--json", "--kind", "video", "--moments").stdout
    lines = [json.loads(line) for line in out.splitlines()]
    mp4 = next(d for d in lines if d["path"].endswith("scenes.mp4"))
    assert mp4["kind"] == "video" and mp4["timestamp"] == 4.0 and mp4["duration"] == 6.0
    assert mp4["id"] == f"{mp4['file_id']}@4000"
    assert [m["timestamp"] for m in mp4["moments"]] == [0.0, 2.0]
    table = run("similar", query, "--db", library.db, "--kind", "video", "--moments").stdout
    assert "at 00:04 (also 00:00, 00:02)" in table
    photo = run("search", "a picture", "--db", library.db, "--json", "--kind", "image").stdout.splitlines()[0]
    assert json.loads(photo)["kind"] == "image" and json.loads(photo)["timestamp"] is None
    bad = run("search", "x", "--db", library.db, "--kind", "gif", ok=False)
    assert bad.exit_code == 2


def test_sync_by_file_unchanged_moved_changed_deleted(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "lib"
    video = write_video(root / "a" / "clip.mp4", [PICTURES["checkers"], PICTURES["rings"]])
    lib = open_library(str(tmp_path / "db"), tiny_model)
    first = lib.ingest([root])
    assert (first.added, first.moments) == (1, 2)
    before = {r["id"]: r for r in _moments(lib, video)}
    vectors = lib.collection.vectors(list(before))

    def no_decoding(*args: object) -> None:
        raise AssertionError("an unchanged video was opened")

    with monkeypatch.context() as patch:
        patch.setattr("pipeline.ingest.local.decode_media", no_decoding)
        patch.setattr("pipeline.ingest.plan.hash_file", no_decoding)
        versions = lib.collection.versions()
        again = lib.ingest([root])
        assert (again.added, again.updated, again.unchanged, again.moments) == (0, 0, 1, 0)
        now = lib.collection.versions()
        assert (now["images"], now["failures"]) == (versions["images"], versions["failures"])  # no empty commit

    os.utime(video, ns=(1, 1))  # touched: the same bytes with another mtime (a restore, a copy)
    with monkeypatch.context() as patch:
        patch.setattr("pipeline.ingest.local.decode_media", no_decoding)  # hashed, not decoded again
        touched = lib.ingest([root])
    assert (touched.unchanged, touched.updated, touched.added, touched.moments) == (1, 0, 0, 0)
    assert {r["id"] for r in _moments(lib, video)} == set(before)
    assert lib.collection.file_states()[str(video)].mtime_ns == 1

    moved = root / "b" / "renamed.mp4"
    moved.parent.mkdir()
    os.rename(video, moved)
    report = lib.ingest([root])
    assert (report.moved, report.added, report.removed, report.moments) == (1, 0, 0, 0)
    after = {r["id"]: r for r in _moments(lib, moved)}
    assert set(after) == set(before) and not _moments(lib, video)
    ids, moved_vectors = lib.collection.vectors(list(after))
    assert dict(zip(ids, moved_vectors.tolist(), strict=True)) == dict(
        zip(vectors[0], vectors[1].tolist(), strict=True)
    )

    write_video(moved, [PICTURES["gradient"]] * 3)  # changed: 6 s now, other pictures
    report = lib.ingest([root])
    assert (report.updated, report.added, report.moments) == (1, 0, 3)
    redone = _moments(lib, moved)
    assert [r["timestamp"] for r in redone] == [0.0, 2.0, 4.0]
    assert {r["file_id"] for r in redone} == {next(iter(before.values()))["file_id"]}  # same file id

    moved.unlink()
    report = lib.ingest([root], prune_empty=True)
    assert report.removed == 1 and not _moments(lib, moved) and lib.collection.count() == 0


def test_bad_videos_fail_with_a_reason_and_the_batch_goes_on(tmp_path: Path, tiny_model: str) -> None:
    root = tmp_path / "lib"
    good = write_video(root / "good.mp4", [PICTURES["rings"]])
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "empty.mov").write_bytes(b"")
    write_audio_only(root / "song.m4v")
    (root / "notes.mp4").write_text("not a video at all\n", encoding="utf-8")
    save_picture(root / "IMG_1.JPG", "gradient")
    write_video(root / "IMG_1.MOV", [PICTURES["gradient"]])  # a Live Photo's video: part of the photo
    lib = open_library(str(tmp_path / "db"), tiny_model, workers=1)  # a real decode process
    report = lib.ingest([root])
    assert (report.added, report.failed, report.live_photos) == (2, 4, 1)
    reasons = {Path(f.path).name: f.reason for f in lib.collection.failures()}
    assert reasons["empty.mov"] == "empty file (0 bytes)"
    assert reasons["song.m4v"] == "no video stream (audio only)"
    assert reasons["truncated.mp4"].startswith("not a video clipdex can read, or truncated (ffmpeg: ")
    assert reasons["notes.mp4"].startswith("not a video clipdex can read, or truncated (ffmpeg: ")
    assert all("\n" not in r for r in reasons.values())
    assert lib.collection.video_counts() == (1, 1)
    assert not _moments(lib, root / "IMG_1.MOV")


@pytest.mark.skipif(VP9 is None, reason="this PyAV has no VP9 encoder")
def test_the_cap_spreads_moments_over_the_whole_video(tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.webm", [PICTURES["checkers"], PICTURES["rings"]] * 2, str(VP9))
    result = decode_video(str(video), SMALL, 10**9, Sampling(interval=0.5, max_frames=4))
    assert isinstance(result, DecodedVideo)
    times = [m.timestamp for m in result.moments]
    assert len(times) <= 4 and times[0] == 0.0 and times[-1] >= 6.0  # the interval widened to 8 s / 4
    assert result.duration == 8.0 and (result.width, result.height) == (SIDE, SIDE)


def test_keyframes_only_when_they_come_often_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = write_video(
        tmp_path / "phone.mp4", [PICTURES["checkers"], PICTURES["rings"], PICTURES["gradient"]], gop=FPS
    )
    decoded: list[int] = []
    real = decode_video.__globals__["_pixels"]

    def counting(frame: av.VideoFrame, transform: ImageTransform) -> np.ndarray:
        decoded.append(int(frame.key_frame))
        return real(frame, transform)  # type: ignore[no-any-return]

    monkeypatch.setattr("pipeline.ingest.video._pixels", counting)
    result = decode_video(str(video), SMALL, 10**9, Sampling(interval=2.0))
    assert isinstance(result, DecodedVideo)
    assert [m.timestamp for m in result.moments] == [0.0, 2.0, 4.0]
    assert decoded == [1, 1, 1]  # keyframes every second: only they were decoded
    dense = decode_video(str(video), SMALL, 10**9, Sampling(interval=0.5))  # below KEYFRAME_MODE_S
    assert isinstance(dense, DecodedVideo) and len(dense.moments) == 12 and 0 in decoded[3:]


def test_a_cut_takes_a_moment_and_a_pan_does_not(tmp_path: Path) -> None:
    video = tmp_path / "pan.mp4"
    red = np.zeros((SIDE, SIDE, 3), np.uint8)
    red[..., 0] = 255
    y, x = np.mgrid[0:SIDE, 0 : SIDE * 5]
    wide = np.stack([128 + 120 * np.sin(x / 6), 128 + 60 * np.cos(y / 7), 128 + 60 * np.sin((x + y) / 13)], axis=-1)
    with av.open(str(video), "w") as out:
        stream = out.add_stream(H264, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        # The camera pans over a scene for 3 s, 8 pixels a frame (the pixels change as much as at
        # a cut, their brightness does not), then cuts to red.
        frames = [wide[:, 8 * n : 8 * n + SIDE].astype(np.uint8) for n in range(3 * FPS)] + [red] * FPS
        for picture in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    result = decode_video(str(video), SMALL, 10**9, Sampling(interval=10.0))
    assert isinstance(result, DecodedVideo)
    assert [(m.timestamp, m.scene) for m in result.moments] == [(0.0, False), (3.0, True)]


def test_limits_cut_a_video_short_with_a_reason(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", [PICTURES["checkers"]] * 6)  # 96 frames
    slow = decode_video(str(video), SMALL, 10**9, Sampling(budget_s=0.0))
    assert isinstance(slow, DecodeFailed) and slow.reason.startswith("decoding took longer than 0 s")
    big = decode_video(str(video), SMALL, 1000, Sampling())
    assert isinstance(big, DecodeFailed) and "raise it with --max-pixels" in big.reason


def test_a_collection_of_schema_2_is_upgraded(tmp_path: Path, tiny_model: str) -> None:
    db = str(tmp_path / "db")
    photos = tmp_path / "photos"
    save_picture(photos / "a.png", "checkers")
    lib = open_library(db, tiny_model)
    lib.ingest([photos])
    stored = lib.collection.get_by_path(str(photos / "a.png"))
    assert stored is not None
    import lancedb  # noqa: PLC0415 - only to make an old collection by hand

    raw = lancedb.connect(db)
    raw.open_table(IMAGES).drop_columns(["kind", "file_id", "timestamp", "duration", "fps", "codec"])
    raw.open_table(META).update(where="key = 'schema_version'", values={"value": "2"})
    upgraded = open_library(db, tiny_model)
    assert upgraded.collection.schema_version == 3
    row = upgraded.collection.get(stored.id)
    assert row is not None and (row.kind, row.file_id, row.timestamp) == ("image", stored.id, None)
    write_video(photos / "clip.mp4", [PICTURES["rings"]])
    report = upgraded.ingest([photos])
    assert (report.added, report.unchanged, report.moments) == (1, 1, 1)
