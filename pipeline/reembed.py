"""Re-embedding a collection with another model: stored files are decoded again (no folder walk),
their vectors and caption vectors built by the new model in a second table, then the collection
switches to it in one commit. Until then every query uses the old model's vectors alone, and an
interrupted run resumes where it stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models import Encoder, Fingerprint
from pipeline.decode import Decoded, DecodeFailed, decode_file
from pipeline.errors import ClipdexError
from pipeline.ingest import Progress, ProgressFn
from pipeline.workers import DecodePool
from storage import FileState

if TYPE_CHECKING:
    from storage import Collection, Staging


@dataclass
class ReembedReport:
    """What a re-embedding did."""

    model: str
    reembedded: int = 0
    resumed: int = 0  # rows a previous, interrupted run had already done
    failed: int = 0  # files that could not be read again: the switch waits until they are dealt with
    seconds: float = 0.0


def reembed(
    collection: Collection,
    encoder: Encoder,
    *,
    workers: int = 0,
    max_pixels: int = 200_000_000,
    progress: ProgressFn | None = None,
) -> ReembedReport:
    """Build the new model's vectors for every stored image, then switch the collection to them."""
    with collection.writer("reembed"):
        return _reembed(collection, encoder, workers=workers, max_pixels=max_pixels, progress=progress)


def _reembed(
    collection: Collection, encoder: Encoder, *, workers: int, max_pixels: int, progress: ProgressFn | None
) -> ReembedReport:
    started = time.monotonic()
    fingerprint = encoder.fingerprint
    if Fingerprint.from_json(collection.model) == fingerprint:
        raise ClipdexError(f"the collection already uses {fingerprint.label}; name another --model")
    staging = collection.staging(fingerprint.to_json(), fingerprint.dimension)
    states = {s.id: s for s in collection.file_states().values()}
    # Staged rows stay only while they still describe the stored image (an ingest may have run).
    staged = staging.done()
    current = {i for i, row in staged.items() if i in states and row == _key(states[i])}
    staging.discard(set(staged) - current)
    todo = [s for s in states.values() if s.id not in current]
    report = ReembedReport(model=fingerprint.label, resumed=len(current))
    by_path = {s.path: s for s in todo}
    batch: list[Decoded] = []
    unreadable: list[DecodeFailed] = []
    with DecodePool(workers) as pool:
        results = pool.map(decode_file, list(by_path), encoder.transform, max_pixels)
        for count, result in enumerate(results, 1):
            if isinstance(result, DecodeFailed):
                unreadable.append(result)
                report.failed += 1
            else:
                batch.append(result)
            if len(batch) >= encoder.batch_size or (count == len(by_path) and batch):
                report.reembedded += _stage(staging, encoder, batch, by_path)
                batch = []
            if progress is not None:
                progress(Progress("embed", count, len(by_path)))
    if unreadable:
        # Switching now would drop these images (their old vectors cannot stay): keep the old model.
        first = unreadable[0]
        raise ClipdexError(
            f"{len(unreadable)} stored files could not be read again (first: {first.path}: {first.reason}); "
            f"the collection still uses {Fingerprint.from_json(collection.model).label}; bring them back, or "
            "let `clipdex ingest` remove them, then run reembed again (it resumes)"
        )
    staging.switch()
    report.seconds = time.monotonic() - started
    return report


def _key(state: FileState) -> tuple[str, str, str | None]:
    return (state.path, state.hash, state.caption)


def _stage(staging: Staging, encoder: Encoder, batch: list[Decoded], by_path: dict[str, FileState]) -> int:
    vectors = encoder.embed_pixels(np.stack([d.pixels for d in batch if d.pixels is not None]))
    states = [by_path[d.path] for d in batch]
    captions = [s.caption for s in states]
    texts = [c for c in captions if c]
    caption_vectors = iter(encoder.embed_texts(texts)) if texts else iter(())
    records = []
    for d, state, vector, caption in zip(batch, states, vectors, captions, strict=True):
        # Content that changed since the last ingest gets mtime 0, so the next ingest checks it.
        mtime_ns = state.mtime_ns if d.hash == state.hash else 0
        caption_info = (caption, state.caption_source, next(caption_vectors) if caption else None)
        records.append(d.record(state.id, size=d.size, mtime_ns=mtime_ns, vector=vector, caption=caption_info))
    staging.add(records)
    return len(records)
