"""Incremental ingest: scan, compare with the collection, decode in workers, embed in batches, write.

Each batch is one commit, so an interrupted run keeps what it finished and the next run does
the rest. A file is decoded only when it is new or its size or mtime changed; a new path whose
content hash equals that of a vanished file is a move, and keeps its vector.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from models import Encoder
from pipeline.captions import read_sidecar
from pipeline.decode import Decoded, DecodeFailed, decode_file, hash_file
from pipeline.scan import ScannedFile, Scanner, ScanResult
from pipeline.sources import is_uri
from pipeline.workers import DecodePool
from storage import CaptionUpdate, Failure, FileState, ImageRecord, Moved

# A commit every commit_rows rows (IngestOptions) or COMMIT_SECONDS seconds, whichever comes
# first: few enough commits that the table stays a few large fragments, often enough that a
# crash loses little.
COMMIT_SECONDS = 10.0
NON_FINITE = "the model gave this image a vector of NaN or infinity (fp16 overflow?); try --precision fp32"

if TYPE_CHECKING:
    from storage import Collection


@dataclass
class IngestReport:
    """What one ingest run did."""

    added: int = 0
    updated: int = 0  # changed content, re-embedded
    moved: int = 0  # same content at a new path: vector kept
    removed: int = 0
    unchanged: int = 0
    failed: int = 0  # files in scope that cannot be ingested (new failures and known ones)
    captions: int = 0  # captions added, changed or removed without re-embedding the image
    videos_skipped: int = 0
    new_failures: list[Failure] = field(default_factory=list)
    vanished: int = 0  # files that disappeared between the scan and their decoding
    interrupted: bool = False  # stopped on request (Ctrl-C) after a committed batch
    index: str = "none"  # the ANN index after the run: none, built, refreshed or current
    notes: list[str] = field(default_factory=list)  # things the user should know, one line each
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """True when the run wrote anything."""
        return bool(self.added or self.updated or self.moved or self.removed or self.captions or self.new_failures)

    def counts(self) -> dict[str, int]:
        """The integer counters, as the CLI's --json prints them."""
        return {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}


@dataclass(frozen=True)
class Progress:
    """A progress event: phase is 'scan', 'hash', 'embed' or 'done'."""

    phase: str
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class IngestOptions:
    """How to walk and decode; see pipeline.config.Settings for the defaults."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_pixels: int = 200_000_000
    workers: int = 0
    captions: Mapping[str, str] | None = None  # a manifest: absolute path -> caption; None: none given
    retry_failed: bool = False
    prune: bool = True  # remove rows of files that disappeared under the roots
    prune_empty: bool = False  # also when a root yields no images at all (else: an unmounted drive?)
    commit_rows: int = 2048  # rows per commit (or every COMMIT_SECONDS): what a crash can lose
    force: frozenset[str] = frozenset()  # paths to read again even if their size and mtime match


@dataclass
class _Pending:
    """What waits for the next commit."""

    records: list[ImageRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    touched: list[Moved] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.failures) + len(self.touched)


@dataclass
class _Plan:
    decode: list[ScannedFile] = field(default_factory=list)  # new or changed
    unchanged: list[ScannedFile] = field(default_factory=list)
    missing: list[FileState] = field(default_factory=list)  # stored, in scope, gone from disk
    known_failed: int = 0
    # Stored files to re-read captions for: unchanged, touched (mtime only) and moved ones.
    recaption: list[tuple[ScannedFile, FileState]] = field(default_factory=list)


class Ingester:
    """Brings a collection in line with folders on disk."""

    def __init__(
        self, collection: Collection, encoder: Encoder, options: IngestOptions, stop: threading.Event | None = None
    ) -> None:
        self.collection = collection
        self.encoder = encoder
        self.options = options
        self.stop = stop or threading.Event()  # set it (on Ctrl-C) to stop after the batch being written
        self._progress: ProgressFn = lambda _: None

    def run(self, roots: Sequence[str], progress: ProgressFn | None = None) -> IngestReport:
        """Scan the roots and sync the collection with them."""
        started = time.monotonic()
        self._progress = progress or self._progress
        report = IngestReport()
        opts = self.options
        scan = Scanner(opts.include, opts.exclude, skip=[self.collection.uri]).scan(roots)
        report.videos_skipped = scan.videos
        self._progress(Progress("scan", len(scan.files), len(scan.files)))
        states = self.collection.file_states()
        failed_before = self.collection.failure_states()
        # A run killed between writing a batch and clearing its failures leaves both: the row wins.
        self.collection.clear_failures(p for p in failed_before if p in states)
        failed_before = {p: f for p, f in failed_before.items() if p not in states}
        scopes = [r if is_uri(r) else os.path.abspath(os.path.expanduser(r)) for r in roots]
        plan = self._plan(scan, states, failed_before, scopes, report)
        report.unchanged = len(plan.unchanged)
        report.failed = plan.known_failed
        now = datetime.now(UTC)
        self._fail(report, [Failure(p, reason, 0, 0, now) for p, reason in scan.errors])

        if plan.decode and not self.stop.is_set():
            with DecodePool(opts.workers) as pool:
                to_decode = self._apply_moves(pool, plan, states, report)
                self._embed_all(pool, to_decode, states, plan, report)
        if self.stop.is_set():
            # What is written is complete and consistent; deletions and caption edits wait for the
            # next run, which also picks up the files not reached.
            report.interrupted = True
            report.seconds = time.monotonic() - started
            return report
        self._sync_captions(plan.recaption, report)
        if opts.prune:
            report.removed += self.collection.delete(s.id for s in plan.missing)
        present = {f.path for f in scan.files} | {p for p, _ in scan.errors}
        stale = [p for p in failed_before if _in_scope(p, scopes) and p not in present and not scan.exists(p)]
        self.collection.clear_failures(stale)
        report.seconds = time.monotonic() - started
        self._progress(Progress("done", 1, 1))
        return report

    def _plan(
        self,
        scan: ScanResult,
        states: dict[str, FileState],
        failed_before: dict[str, Failure],
        scopes: list[str],
        report: IngestReport,
    ) -> _Plan:
        plan = _Plan()
        seen = set()
        for f in scan.files:
            seen.add(f.path)
            stored = states.get(f.path)
            failure = failed_before.get(f.path)
            same = stored is not None and stored.size == f.size and stored.mtime_ns == f.mtime_ns
            if stored is not None and same and f.path not in self.options.force:
                plan.unchanged.append(f)
                plan.recaption.append((f, stored))
            elif (
                failure is not None
                and not self.options.retry_failed
                and (failure.size, failure.mtime_ns) == (f.size, f.mtime_ns)
            ):
                plan.known_failed += 1  # same bytes failed before: don't decode again
            else:
                plan.decode.append(f)
        # A stored file counts as gone only if it is really gone: not merely left out by
        # --include/--exclude, and not inside a folder we could not list this time.
        hidden = [folder for folder, _ in scan.errors if os.path.isdir(folder)]
        if not self.options.prune:
            return plan  # nothing is removed: no need to look for what is gone
        candidates = [
            s
            for p, s in states.items()
            if p not in seen and _in_scope(p, scopes) and not _in_scope(p, hidden) and not scan.exists(p)
        ]
        # A root that yields nothing while rows are stored under it is more likely an unmounted
        # drive than an emptied library: keep its rows.
        for root in scopes:
            under = [s for s in candidates if _in_scope(s.path, [root])]
            empty = (is_uri(root) or os.path.isdir(root)) and not any(_in_scope(p, [root]) for p in seen)
            if under and empty and not self.options.prune_empty:
                report.notes.append(
                    f"{root}: no images found but {len(under)} stored; kept them (is the drive mounted?); "
                    "if they were deleted, run again with --prune-empty"
                )
                candidates = [s for s in candidates if not _in_scope(s.path, [root])]
        plan.missing = candidates
        return plan

    def _apply_moves(
        self, pool: DecodePool, plan: _Plan, states: dict[str, FileState], report: IngestReport
    ) -> list[ScannedFile]:
        """Match new paths to vanished rows by content hash; return the files still to decode."""
        if not plan.missing:
            return plan.decode
        by_hash: dict[str, list[FileState]] = defaultdict(list)
        for state in plan.missing:
            by_hash[state.hash].append(state)
        sizes = {s.size for s in plan.missing}
        # Only a new path (a stored one is its own row) of a vanished file's size can be a move.
        candidates = {f.path: f for f in plan.decode if f.path not in states and f.size in sizes}
        moves: list[Moved] = []
        for done, result in enumerate(pool.map(hash_file, list(candidates)), 1):
            self._progress(Progress("hash", done, len(candidates)))
            if isinstance(result, DecodeFailed) or not by_hash.get(result.hash):
                continue  # decoding will record a failure, or embed a new image
            state = by_hash[result.hash].pop()
            f = candidates[result.path]
            moves.append(Moved(state.id, f.path, f.size, f.mtime_ns))
            plan.recaption.append((f, state))
        self.collection.move(moves)
        report.moved = len(moves)
        claimed = {m.id for m in moves}
        moved_paths = {m.path for m in moves}
        plan.missing = [s for s in plan.missing if s.id not in claimed]
        return [f for f in plan.decode if f.path not in moved_paths]

    def _embed_all(
        self,
        pool: DecodePool,
        files: list[ScannedFile],
        states: dict[str, FileState],
        plan: _Plan,
        report: IngestReport,
    ) -> None:
        by_path = {f.path: f for f in files}
        batch: list[Decoded] = []  # decoded, waiting for a forward pass
        pending = _Pending()  # embedded, failed and touched, waiting for a commit
        last_commit = time.monotonic()
        results = pool.map(decode_file, list(by_path), self.encoder.transform, self.options.max_pixels)
        for done, result in enumerate(results, 1):
            f = by_path[result.path]
            stored = states.get(result.path)
            if isinstance(result, DecodeFailed) and not is_uri(result.path) and not os.path.lexists(result.path):
                report.vanished += 1  # deleted or moved away since the scan: gone, not broken
                if stored is not None:
                    plan.missing.append(stored)
            elif isinstance(result, DecodeFailed):
                pending.failures.append(Failure(result.path, result.reason, f.size, f.mtime_ns, datetime.now(UTC)))
                if stored is not None:
                    plan.missing.append(stored)  # its stored vector shows content that is gone
            elif stored is not None and stored.hash == result.hash:
                pending.touched.append(Moved(stored.id, f.path, f.size, f.mtime_ns))  # mtime changed only
                plan.recaption.append((f, stored))
            else:
                batch.append(result)
            last = done == len(by_path)
            if len(batch) >= self.encoder.batch_size or (last and batch):
                records, failed = self._embed(batch, by_path, states)
                pending.records += records
                pending.failures += failed
                batch = []
            due = len(pending) >= self.options.commit_rows or time.monotonic() - last_commit >= COMMIT_SECONDS
            if pending and (due or last or self.stop.is_set()):
                self._write(pending, states, report)
                pending, last_commit = _Pending(), time.monotonic()
                if self.stop.is_set():
                    break
            self._progress(Progress("embed", done, len(by_path)))

    def _embed(
        self, batch: list[Decoded], files: dict[str, ScannedFile], states: dict[str, FileState]
    ) -> tuple[list[ImageRecord], list[Failure]]:
        """One forward pass over a batch of decoded images (and one over their captions)."""
        pixels = np.stack([d.pixels for d in batch if d.pixels is not None])
        vectors = self.encoder.embed_pixels(pixels)
        finite = np.isfinite(vectors).all(axis=1)
        failed = [
            Failure(d.path, NON_FINITE, files[d.path].size, files[d.path].mtime_ns, datetime.now(UTC))
            for d, ok in zip(batch, finite, strict=True)
            if not ok
        ]
        if failed:  # one image must not sink the commit of the others
            batch = [d for d, ok in zip(batch, finite, strict=True) if ok]
            vectors = vectors[finite]
        captions = [self._caption(files[d.path], d.description, states.get(d.path)) for d in batch]
        caption_vectors = self._embed_captions([c for c, _ in captions])
        records = []
        for d, vector, (caption, source), caption_vector in zip(batch, vectors, captions, caption_vectors, strict=True):
            stored, f = states.get(d.path), files[d.path]
            # size and mtime as scanned: if the file changed since, the next run sees a
            # difference and checks it again.
            image_id = stored.id if stored else secrets.token_hex(8)
            caption_info = (caption, source, caption_vector)
            records.append(d.record(image_id, size=f.size, mtime_ns=f.mtime_ns, vector=vector, caption=caption_info))
        return records, failed

    def _write(self, pending: _Pending, states: dict[str, FileState], report: IngestReport) -> None:
        """Commit embedded rows (new ones appended, changed ones replaced), touched rows and failures."""
        new = [r for r in pending.records if r.path not in states]  # else it keeps the stored id
        self.collection.upsert(new, new=True)
        self.collection.upsert([r for r in pending.records if r.path in states])
        report.added += len(new)
        report.updated += len(pending.records) - len(new)
        self.collection.clear_failures(r.path for r in pending.records)
        if pending.touched:
            self.collection.move(pending.touched)
            self.collection.clear_failures(t.path for t in pending.touched)
            report.unchanged += len(pending.touched)
        self._fail(report, pending.failures)

    def _fail(self, report: IngestReport, failures: list[Failure]) -> None:
        if failures:
            self.collection.record_failures(failures)
            report.failed += len(failures)
            report.new_failures.extend(failures)

    def _caption(self, f: ScannedFile, embedded: str | None, stored: FileState | None) -> tuple[str | None, str | None]:
        """The caption and its source: a manifest beats a sidecar file beats the image's own description.

        A manifest caption stays until a run that is given a manifest drops it.
        """
        manifest = self.options.captions
        if manifest is not None and f.path in manifest:
            return manifest[f.path], "manifest"
        sidecar = read_sidecar(f.sidecar) if f.sidecar else None
        if sidecar:
            return sidecar, "sidecar"
        if manifest is None and stored is not None and stored.caption_source == "manifest":
            return stored.caption, "manifest"
        if embedded:
            return embedded, "embedded"
        return None, None

    def _embed_captions(self, captions: Sequence[str | None]) -> list[np.ndarray | None]:
        texts = [c for c in captions if c]
        vectors = iter(self.encoder.embed_texts(texts)) if texts else iter(())
        return [next(vectors) if c else None for c in captions]

    def _sync_captions(self, files: Iterable[tuple[ScannedFile, FileState]], report: IngestReport) -> None:
        """Pick up sidecar and manifest edits for images whose own bytes did not change."""
        changes: list[tuple[str, str | None, str | None]] = []
        for f, stored in files:
            caption, source = self._caption(f, stored.description, stored)
            if (caption, source) != (stored.caption, stored.caption_source):
                changes.append((stored.id, caption, source))
        if changes:
            vectors = self._embed_captions([c for _, c, _ in changes])
            self.collection.set_captions(
                [CaptionUpdate(i, c, s, v) for (i, c, s), v in zip(changes, vectors, strict=True)]
            )
            report.captions = len(changes)


def _in_scope(path: str, scopes: Sequence[str]) -> bool:
    return any(path == s or path.startswith(s.rstrip(os.sep) + os.sep) for s in scopes)
