"""The one embed step: decoded pixels -> one forward pass -> finite check -> the rows to store.

Local ingest, the Ray engine's encoder actors and reembed all turn decoded images into rows here,
so a vector the model botched (NaN or infinity) is a recorded failure on every path, never a row.
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


def embed_decoded(encoder: Encoder, images: Sequence[tuple[Decoded, Target]]) -> Embedded:
    """One forward pass over decoded images (and one over their captions): their rows, or failures."""
    if not images:
        return Embedded()
    pixels = np.stack([_pixels(d) for d, _ in images])
    vectors = encoder.embed_pixels(pixels)
    finite = np.isfinite(vectors).all(axis=1)
    now = datetime.now(UTC)
    out = Embedded()
    out.failures = [
        Failure(d.path, NON_FINITE, t.size, t.mtime_ns, now)
        for (d, t), ok in zip(images, finite, strict=True)
        if not ok
    ]
    kept = [(d, t, v) for (d, t), v, ok in zip(images, vectors, finite, strict=True) if ok]
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
    return out


def _pixels(decoded: Decoded) -> np.ndarray:
    if decoded.pixels is None:
        raise ValueError(f"{decoded.path} was hashed, not decoded: it has no pixels to embed")
    return decoded.pixels


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
    """Decoded images gathered into forward passes of the encoder's batch size."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._waiting: list[tuple[Decoded, Target]] = []

    def add(self, decoded: Decoded, target: Target) -> Embedded:
        """Queue an image; a full batch is embedded and returned (else nothing)."""
        self._waiting.append((decoded, target))
        return self.flush() if len(self._waiting) >= self.encoder.batch_size else Embedded()

    def flush(self) -> Embedded:
        """Embed what waits."""
        waiting, self._waiting = self._waiting, []
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
