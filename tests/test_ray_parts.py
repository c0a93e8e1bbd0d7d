"""The Ray engine's pure parts, without a Ray: how a job's rows become one outcome per file (a
video's moments reach the actors in several batches), which rows are stored, how files are cut
into jobs and blocks. tests/test_ray.py runs them on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.ingest.decode import DecodeFailed
from pipeline.ingest.ray import (
    CHUNK_ROWS,
    DECODE_BATCH,
    _file_outcomes,
    _merged_outcomes,
    _stored_rows,
    chunks,
    decode_blocks,
    decode_video_apart,
)
from pipeline.ingest.scan import ScannedFile
from pipeline.ingest.video import DecodedVideo, Sampling, decode_video
from tests.test_video import PICTURES, SMALL, write_video

NAN = "the model gave this image a vector of NaN or infinity"


def job_rows(rows: list[tuple[str, str, str | None, str]]) -> pa.Table:
    """(path, hash, failure, kind) rows as an actor's output gives them."""
    return pa.table({name: [r[i] for r in rows] for i, name in enumerate(("path", "hash", "failure", "kind"))})


def test_a_video_split_over_batches_is_one_outcome_and_fails_whole_if_any_batch_failed() -> None:
    first = job_rows(
        [("/v.mp4", "h1", None, "video"), ("/v.mp4", "h1", None, "video"), ("/a.jpg", "ha", None, "image")]
    )
    second = job_rows(
        [("/v.mp4", "", NAN, None), ("/w.mp4", "h2", None, "video"), ("/bad.jpg", "", "truncated", "image")]
    )
    third = job_rows([("/w.mp4", "h2", None, "video"), ("/w.mp4", "h2", None, "video")])
    per_block = [row for block in (first, second, third) for row in _file_outcomes(block).to_pylist()]
    assert len(per_block) == 6  # one row per file and block, not per moment
    merged = _merged_outcomes(per_block)
    assert {p: (o.failure, o.hash, o.moments) for p, o in merged.items()} == {
        "/v.mp4": (NAN, "h1", 2),  # failed whole: its good moments are not stored
        "/a.jpg": (None, "ha", 0),
        "/w.mp4": (None, "h2", 3),
        "/bad.jpg": ("truncated", "", 0),
    }
    # The same whichever batch comes first.
    again = _merged_outcomes([row for block in (third, second, first) for row in _file_outcomes(block).to_pylist()])
    assert {p: (o.failure, o.moments) for p, o in again.items()} == {
        p: (o.failure, o.moments) for p, o in merged.items()
    }


def test_stored_rows_leave_out_failures_and_skipped_files() -> None:
    block = job_rows([("/v.mp4", "h1", None, "video"), ("/v.mp4", "", NAN, None), ("/a.jpg", "ha", None, "image"),
                      ("/t.jpg", "ht", None, "image")])  # fmt: skip
    kept = _stored_rows(block, skip={"/v.mp4", "/t.jpg"})  # a failed video, a touched photo
    assert kept.column("path").to_pylist() == ["/a.jpg"] and "failure" not in kept.column_names


def test_jobs_count_a_video_as_its_most_moments_and_blocks_put_videos_alone_first() -> None:
    photos = [ScannedFile(f"/p/{i}.jpg", 1, 1) for i in range(CHUNK_ROWS - 10)]
    videos = [ScannedFile(f"/v/{i}.mp4", 1, 1) for i in range(3)]
    jobs = list(chunks([*photos, *videos, ScannedFile("/p/last.jpg", 1, 1)], max_frames=300))
    assert jobs[0] == photos  # the first video would take the first job past CHUNK_ROWS
    assert [len(j) for j in jobs] == [CHUNK_ROWS - 10, 4]  # 3 x 300 + 1
    many = list(chunks([ScannedFile(f"/v/{i}.mp4", 1, 1) for i in range(200)], max_frames=300))
    assert [len(j) for j in many] == [CHUNK_ROWS // 300] * (200 // (CHUNK_ROWS // 300)) + [200 % (CHUNK_ROWS // 300)]
    items = [{"path": p} for p in ("/a.jpg", "/v.mp4", *(f"/{i}.png" for i in range(DECODE_BATCH)), "/w.mov")]
    blocks = [b.column("path").to_pylist() for b in decode_blocks(items)]
    assert blocks[:2] == [["/v.mp4"], ["/w.mov"]]
    assert [len(b) for b in blocks[2:]] == [DECODE_BATCH, 1]


def test_a_ray_task_decodes_a_video_in_a_child_process_as_the_local_pool_does(tmp_path: Path) -> None:
    import pipeline.ingest.ray as engine  # noqa: PLC0415

    video = write_video(tmp_path / "clip.mp4", [PICTURES["checkers"], PICTURES["rings"]])
    here = decode_video(str(video), SMALL, 10**8, Sampling())
    apart = decode_video_apart(str(video), SMALL, 10**8, Sampling())
    assert isinstance(here, DecodedVideo) and isinstance(apart, DecodedVideo)
    assert [m.timestamp for m in apart.moments] == [m.timestamp for m in here.moments] == [0.0, 2.0]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(apart.moments, here.moments, strict=True))
    pool = engine._video_pool
    assert pool is not None and pool.workers == 1  # kept for the worker's next video task
    broken = decode_video_apart(str(tmp_path / "missing.mp4"), SMALL, 10**8, Sampling())
    assert isinstance(broken, DecodeFailed) and engine._video_pool is pool
    pool.close()
    engine._video_pool = None
