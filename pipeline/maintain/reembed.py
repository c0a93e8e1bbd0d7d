"""Re-embedding a collection with another model: stored files are decoded again (no folder walk),
their vectors and caption vectors built by the new model in a second table, then the collection
switches to it in one commit. Until then every query uses the old model's vectors alone, and an
interrupted run resumes where it stopped. The rows come from the same decode and embed steps as
ingest's (pipeline.ingest.video.decode_media, pipeline.ingest.embed), and the run ends with ingest's
finishing step (index, compaction). A video's moments are sampled again (the same moments for the
same sampling settings) and staged together, in one commit: a resumed run counts a file as done
when its rows are staged."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from models import Encoder, Fingerprint
from pipeline.config import DEFAULT_INDEX_THRESHOLD
from pipeline.errors import BadOption, FilesUnreadable
from pipeline.ingest.decode import DecodeFailed
from pipeline.ingest.embed import Batches, CommitClock, Embedded, Target
from pipeline.ingest.pool import DecodePool
from pipeline.ingest.progress import Progress, ProgressFn, no_progress
from pipeline.ingest.sync import finish_writes
from pipeline.ingest.video import Sampling, decode_media
from storage import Failure, FileState

if TYPE_CHECKING:
    from storage import Collection, Staging


@dataclass
class ReembedReport:
    """What a re-embedding did."""

    model: str
    reembedded: int = 0
    resumed: int = 0  # rows a previous, interrupted run had already done
    failed: int = 0  # files that could not be read again: the switch waits until they are dealt with
    index: str = "none"  # the ANN index of the new vectors: none, built, refreshed or current
    seconds: float = 0.0


def reembed(
    collection: Collection,
    encoder: Encoder,
    *,
    workers: int = 0,
    max_pixels: int = 200_000_000,
    commit_rows: int = 2048,
    index_threshold: int = DEFAULT_INDEX_THRESHOLD,
    sampling: Sampling | None = None,
    progress: ProgressFn | None = None,
) -> ReembedReport:
    """Build the new model's vectors for every stored image and video moment (videos sampled with
    `sampling`, by default ingest's), then switch the collection to them."""
    with collection.writer("reembed"):
        report = _stage_all(
            collection, encoder, workers, max_pixels, sampling or Sampling(), commit_rows, progress or no_progress
        )
        report.index = finish_writes(collection, index_threshold, changed=True)
        return report


def _stage_all(
    collection: Collection,
    encoder: Encoder,
    workers: int,
    max_pixels: int,
    sampling: Sampling,
    commit_rows: int,
    progress: ProgressFn,
) -> ReembedReport:
    started = time.monotonic()
    fingerprint = encoder.fingerprint
    if Fingerprint.from_json(collection.model) == fingerprint:
        raise BadOption(f"the collection already uses {fingerprint.label}; name another --model")
    staging = collection.staging(fingerprint.to_json(), fingerprint.dimension)
    states = {s.id: s for s in collection.file_states().values()}  # by file id: a video once
    # Staged rows stay only while they still describe the stored file (an ingest may have run);
    # the rest are discarded, so the rows staged below are new ids and can be appended.
    staged = staging.done()
    current = {i for i, row in staged.items() if _file_id(i) in states and row == _key(states[_file_id(i)])}
    staging.discard(set(staged) - current)
    done = {_file_id(i) for i in current}
    todo = [s for s in states.values() if s.id not in done]
    report = ReembedReport(model=fingerprint.label, resumed=len(current))
    by_path = {s.path: s for s in todo}
    batches = Batches(encoder)
    waiting = Embedded()
    clock = CommitClock(commit_rows)
    failures: list[Failure] = []
    with DecodePool(workers) as pool:
        results = pool.map(decode_media, list(by_path), encoder.transform, max_pixels, sampling)
        for count, result in enumerate(results, 1):
            if isinstance(result, DecodeFailed):
                failures.append(_failure(by_path[result.path], result.reason))
            else:
                waiting += batches.add(result, _target(by_path[result.path], result.hash, result.size))
            if count == len(by_path):
                waiting += batches.flush()
            if clock.due(len(waiting)) or (waiting and count == len(by_path)):
                report.reembedded += _stage(staging, waiting, failures)
                waiting = Embedded()
                clock.committed()
            progress(Progress("embed", count, len(by_path)))
    report.failed = len(failures)
    if failures:
        # Switching now would drop these images (their old vectors cannot stay): keep the old model.
        first = failures[0]
        raise FilesUnreadable(
            f"{len(failures)} stored files could not be read again (first: {first.path}: {first.reason}); "
            f"the collection still uses {Fingerprint.from_json(collection.model).label}; bring them back, or "
            "let `clipdex ingest` remove them, then run reembed again (it resumes)"
        )
    staging.switch()
    report.seconds = time.monotonic() - started
    return report


def _file_id(row_id: str) -> str:
    """The file a staged row belongs to: a moment's id is FILE_ID@MILLISECONDS, a photo's its own."""
    return row_id.partition("@")[0]


def _key(state: FileState) -> tuple[str, str, str | None]:
    return (state.path, state.hash, state.caption)


def _target(state: FileState, digest: str, size: int) -> Target:
    """The stored row's id and caption; content that changed since the last ingest gets mtime 0,
    so the next ingest checks it."""
    mtime_ns = state.mtime_ns if digest == state.hash else 0
    return Target(state.id, size, mtime_ns, (state.caption, state.caption_source), state.caption_stamp)


def _failure(state: FileState, reason: str) -> Failure:
    return Failure(state.path, reason, state.size, state.mtime_ns, datetime.now(UTC))


def _stage(staging: Staging, embedded: Embedded, failures: list[Failure]) -> int:
    """Append embedded rows to the staging table in one commit; collect the images that failed."""
    staging.add(embedded.records)
    failures += embedded.failures
    return len(embedded.records)
