"""The one embed step: decoded pixels -> forward passes -> finite check -> the rows to store.

Local ingest, the Ray engine's encoder actors and reembed all turn decoded images into rows here,
so a vector the model botched (NaN or infinity) is a recorded failure on every path, never a row.
A video's moments are embedded in the same batches as photos, one row each (id FILE_ID@MS).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models import Encoder
from pipeline.ingest.captions import Caption, choose_caption
from pipeline.ingest.decode import Decoded
from pipeline.ingest.video import DecodedVideo
from storage import Failure, ImageRecord

NON_FINITE = "the model gave this image a vector of NaN or infinity (fp16 overflow?); try --precision fp32"
# A commit every commit_rows rows or COMMIT_SECONDS seconds, whichever comes first: few enough
# commits that the table stays a few large fragments, often enough that a crash loses little.
COMMIT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    """The row a decoded image becomes: its id, the size and mtime to record, its planned caption."""

    id: str
    size: int
    mtime_ns: int
    caption: Caption | None = None  # None: the image's own description, if it has one
    stamp: str | None = None  # of the sidecar file, stored when the caption comes from it


@dataclass
class Embedded:
    """Rows made by the embed step, and the images it could not embed."""

    records: list[ImageRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __iadd__(self, other: Embedded) -> Embedded:
        self.records += other.records
        self.failures += other.failures
        return self

    def __len__(self) -> int:
        return len(self.records) + len(self.failures)


def embed_decoded(encoder: Encoder, items: Sequence[tuple[Decoded | DecodedVideo, Target]]) -> Embedded:
    """Forward passes of the encoder's batch size over decoded images and video moments (and one
    over the images' captions): their rows, or failures (a video with a botched vector fails whole)."""
    if not items:
        return Embedded()
    pixels = [p for d, _ in items for p in _pixels(d)]
    step = max(1, encoder.batch_size)
    passes = [encoder.embed_pixels(np.stack(pixels[i : i + step])) for i in range(0, len(pixels), step)]
    vectors = np.concatenate(passes)
    now = datetime.now(UTC)
    out = Embedded()
    images: list[tuple[Decoded, Target, np.ndarray]] = []
    start = 0
    for d, t in items:
        count = len(d.moments) if isinstance(d, DecodedVideo) else 1
        own = vectors[start : start + count]
        start += count
        if not np.isfinite(own).all():
            out.failures.append(Failure(d.path, NON_FINITE, t.size, t.mtime_ns, now))
        elif isinstance(d, DecodedVideo):
            out.records += video_records(d, t, own)
        else:
            images.append((d, t, own[0]))
    _image_records(encoder, images, out)
    return out


def video_records(video: DecodedVideo, target: Target, vectors: np.ndarray) -> list[ImageRecord]:
    """One row per moment: id FILE_ID@MILLISECONDS, the video's facts, no caption."""
    rows: dict[str, ImageRecord] = {}
    for moment, vector in zip(video.moments, vectors, strict=True):
        row_id = f"{target.id}@{round(moment.timestamp * 1000)}"
        rows.setdefault(
            row_id,
            ImageRecord(
                id=row_id,
                path=video.path,
                size=target.size,
                mtime_ns=target.mtime_ns,
                hash=video.hash,
                width=video.width,
                height=video.height,
                format=video.format,
                vector=vector,
                taken_at=video.taken_at,
                kind="video",
                file_id=target.id,
                timestamp=moment.timestamp,
                duration=video.duration,
                fps=video.fps,
                codec=video.codec,
            ),
        )
    return list(rows.values())


def _image_records(encoder: Encoder, kept: list[tuple[Decoded, Target, np.ndarray]], out: Embedded) -> None:
    captions = [choose_caption(t.caption, d.description) for d, t, _ in kept]
    caption_vectors = embed_captions(encoder, [text for text, _ in captions])
    for (d, t, vector), (text, source), caption_vector in zip(kept, captions, caption_vectors, strict=True):
        out.records.append(
            d.record(
                t.id,
                size=t.size,
                mtime_ns=t.mtime_ns,
                vector=vector,
                caption=(text, source, caption_vector),
                caption_stamp=t.stamp,
            )
        )


def _pixels(decoded: Decoded | DecodedVideo) -> list[np.ndarray]:
    if isinstance(decoded, DecodedVideo):
        return [m.pixels for m in decoded.moments]
    if decoded.pixels is None:
        raise ValueError(f"{decoded.path} was hashed, not decoded: it has no pixels to embed")
    return [decoded.pixels]


def embed_captions(encoder: Encoder, captions: Sequence[str | None]) -> list[np.ndarray | None]:
    """The text vectors of captions, in one forward pass (None for no caption, or a non-finite vector)."""
    texts = [c for c in captions if c]
    vectors = iter(encoder.embed_texts(texts)) if texts else iter(())
    out: list[np.ndarray | None] = []
    for caption in captions:
        vector = next(vectors) if caption else None
        out.append(vector if vector is not None and np.isfinite(vector).all() else None)
    return out


class Batches:
    """Decoded images and video moments gathered into forward passes of the encoder's batch size."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._waiting: list[tuple[Decoded | DecodedVideo, Target]] = []
        self._pixels = 0  # images and moments waiting

    def add(self, decoded: Decoded | DecodedVideo, target: Target) -> Embedded:
        """Queue an image or a video; full batches are embedded and returned (else nothing)."""
        self._waiting.append((decoded, target))
        self._pixels += len(decoded.moments) if isinstance(decoded, DecodedVideo) else 1
        return self.flush() if self._pixels >= self.encoder.batch_size else Embedded()

    def flush(self) -> Embedded:
        """Embed what waits."""
        waiting, self._waiting, self._pixels = self._waiting, [], 0
        return embed_decoded(self.encoder, waiting)


class CommitClock:
    """When the rows waiting for a commit should be written: every `rows` rows or `seconds` seconds."""

    def __init__(self, rows: int, seconds: float = COMMIT_SECONDS) -> None:
        self.rows = rows
        self.seconds = seconds
        self._last = time.monotonic()

    def due(self, waiting: int) -> bool:
        """True when `waiting` rows should be committed now."""
        return waiting > 0 and (waiting >= self.rows or time.monotonic() - self._last >= self.seconds)

    def committed(self) -> None:
        """A commit was made: start counting again."""
        self._last = time.monotonic()
