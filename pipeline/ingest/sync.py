"""Incremental ingest: scan, plan, hand the files to decode to an engine, then captions and deletions.

The orchestration is the same for every engine; an engine (pipeline.ingest.local on this
machine, pipeline.ingest.ray on a cluster) only decodes, embeds and writes the files the plan
gives it, settling each decoded file through the run's Sync, so both engines count, keep ids and
record failures the same way.
"""

from __future__ import annotations

import functools
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from models import Encoder
from pipeline.ingest.captions import choose_caption, planned_caption, sidecar_stamp
from pipeline.ingest.embed import CommitClock, Embedded, Target, embed_captions
from pipeline.ingest.plan import IngestOptions, Plan, find_moves, find_touched, in_scope, make_plan
from pipeline.ingest.pool import DecodePool
from pipeline.ingest.progress import Progress, ProgressFn, no_progress
from pipeline.ingest.scan import ScannedFile, Scanner
from pipeline.ingest.sources import is_uri
from pipeline.ingest.video import is_video
from storage import CaptionUpdate, Compactor, Failure, FileState, IndexBuilder, Moved

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
    videos: int = 0  # video files embedded (added and updated), their moments in `moments`
    moments: int = 0  # rows embedded for videos' moments (added and updated videos)
    live_photos: int = 0  # Live Photo videos beside their stills: part of the photo, not ingested
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


class Engine(Protocol):
    """Decodes, embeds and writes the files a plan gives it (pipeline.ingest.local, .ray)."""

    def embed(self, files: list[ScannedFile], sync: Sync) -> None:
        """Bring these files into the collection, settling each through sync."""
        ...

    def finish(self, collection: Collection, index_threshold: int, changed: bool) -> str:
        """The index and compaction after a run (finish_writes); returns the index's state."""
        ...


class Sync:
    """One run's shared state: what is stored, what waits for a commit, and the report.

    Engines ask it for each file's Target, settle each decoded file through it (vanished, broken,
    touched, or to embed), and commit through it.
    """

    def __init__(
        self,
        collection: Collection,
        encoder: Callable[[], Encoder],
        options: IngestOptions,
        states: dict[str, FileState],
        plan: Plan,
        report: IngestReport,
        pool: DecodePool,
        stop: threading.Event,
        progress: ProgressFn,
        failed: Iterable[str] = (),
    ) -> None:
        self.collection = collection
        self._load_encoder = encoder
        self.options = options
        self.states = states
        self.plan = plan
        self.report = report
        self.pool = pool
        self.stop = stop
        self.progress = progress
        self.waiting = Embedded()  # embedded rows and failures for the next commit
        self.touched: list[Moved] = []  # mtime changed, content did not: the row stays
        self.clock = CommitClock(options.commit_rows)
        self.unreadable_sidecars: list[str] = []  # "path: reason", said once at the end
        # Paths with a recorded failure: only those are cleared (a DELETE that matches nothing
        # still makes a new table version, and a run that changes nothing must write nothing).
        self.failed = set(failed)

    @functools.cached_property
    def encoder(self) -> Encoder:
        """The model, loaded when the run first needs it: a run with nothing to embed loads none."""
        return self._load_encoder()

    def target(self, f: ScannedFile) -> Target:
        """The row this file becomes: a stored file keeps its id; size and mtime as scanned (if the
        file changed since, the next run sees a difference and checks it again)."""
        stored = self.states.get(f.path)
        if is_video(f.path):
            return Target(stored.id if stored else secrets.token_hex(8), f.size, f.mtime_ns)  # no captions
        stamp = sidecar_stamp(f.sidecar)
        caption = planned_caption(self.options.captions, f.path, f.sidecar, stored, self.unreadable_sidecars, stamp)
        return Target(stored.id if stored else secrets.token_hex(8), f.size, f.mtime_ns, caption, stamp)

    def settle(self, f: ScannedFile, failure: str | None, digest: str) -> bool:
        """Account for a decoded file (failure: why it could not be decoded; digest: its content
        hash); True when it must be embedded."""
        stored = self.states.get(f.path)
        if failure is not None:
            if not is_uri(f.path) and not os.path.lexists(f.path):
                self.report.vanished += 1  # deleted or moved away since the scan: gone, not broken
            else:
                self.waiting.failures.append(Failure(f.path, failure, f.size, f.mtime_ns, datetime.now(UTC)))
            if stored is not None:
                self.plan.missing.append(stored)  # its stored vector shows content that is gone
            return False
        if stored is not None and stored.hash == digest:
            self.touched.append(Moved(stored.id, f.path, f.size, f.mtime_ns))  # mtime changed only
            self.plan.recaption.append((f, stored))
            return False
        return True

    def waiting_rows(self) -> int:
        """Rows and failures waiting for the next commit."""
        return len(self.waiting) + len(self.touched)

    def due(self) -> bool:
        """True when what waits should be committed now (commit_rows of it, or COMMIT_SECONDS)."""
        return self.clock.due(self.waiting_rows())

    def commit(self) -> None:
        """Write what waits: new rows appended, changed ones replaced, touched rows, failures."""
        records = self.waiting.records
        # A changed video's moments are other rows than before (other times): the old ones go right
        # before the new ones land, so a kill between the two commits loses no file (the next run
        # embeds it again, as new) and never leaves two sets of moments for a path.
        redone = {r.file_id for r in records if r.kind == "video" and r.path in self.states and r.file_id}
        self.collection.delete(redone)
        new = [r for r in records if r.path not in self.states or r.kind == "video"]  # else it keeps its id
        self.collection.upsert(new, new=True)
        self.collection.upsert([r for r in records if r.path in self.states and r.kind != "video"])
        moments = Counter(r.path for r in records if r.kind == "video")
        self.count_stored(list(dict.fromkeys(r.path for r in records)), moments)  # a video once, not per moment
        if self.touched:
            self.collection.move(self.touched)
            self.clear_failures([t.path for t in self.touched])
            self.report.unchanged += len(self.touched)
        self.fail(self.waiting.failures)
        self.waiting, self.touched = Embedded(), []
        self.clock.committed()

    def count_stored(self, paths: Sequence[str], moments: Mapping[str, int]) -> None:
        """Count files that were written (here, or by Ray workers) and clear their old failures;
        moments: the rows written for each video among them (a video's moments land together)."""
        self.report.videos += sum(1 for p in paths if moments.get(p))
        self.report.moments += sum(moments.get(p, 0) for p in paths)
        new = sum(p not in self.states for p in paths)
        self.report.added += new
        self.report.updated += len(paths) - new
        self.clear_failures(paths)

    def clear_failures(self, paths: Iterable[str]) -> None:
        """Forget the recorded failures of these paths (those that have one)."""
        cleared = [p for p in paths if p in self.failed]
        self.collection.clear_failures(cleared)
        self.failed.difference_update(cleared)

    def fail(self, failures: Sequence[Failure], known: Mapping[str, Failure] | None = None) -> None:
        """Record failures now; those already recorded with the same reason (known) count, but are
        neither written again nor reported as new."""
        fresh = [f for f in failures if not (known and f.path in known and known[f.path].reason == f.reason)]
        self.report.failed += len(failures) - len(fresh)
        if fresh:
            self.collection.record_failures(fresh)
            self.failed.update(f.path for f in fresh)
            self.report.failed += len(fresh)
            self.report.new_failures.extend(fresh)


class Ingester:
    """Brings a collection in line with folders on disk."""

    def __init__(
        self,
        collection: Collection,
        encoder: Callable[[], Encoder],
        options: IngestOptions,
        engine: Engine,
        stop: threading.Event | None = None,
    ) -> None:
        self.collection = collection
        self.load_encoder = encoder  # called when the run first needs the model (nothing to embed: never)
        self.options = options
        self.stop = stop or threading.Event()  # set it (on Ctrl-C) to stop after the batch being written
        self.engine = engine

    def run(self, roots: Sequence[str], progress: ProgressFn | None = None) -> IngestReport:
        """Scan the roots and sync the collection with them."""
        started = time.monotonic()
        progress = progress or no_progress
        report = IngestReport()
        opts = self.options
        scanner = Scanner(opts.include, opts.exclude, skip=[self.collection.uri], follow_links=opts.follow_links)
        scan = scanner.scan(roots)
        report.live_photos = scan.live_photos
        if scan.special:
            report.notes.append(
                f"{len(scan.special)} files named like images are FIFOs, sockets or devices, not regular files: "
                f"skipped (first: {scan.special[0]})"
            )
        if scan.unfollowed:
            link, target = scan.unfollowed[0]
            report.notes.append(
                f"1 folder link points outside the folders given and was not followed ({link} -> {target}); "
                "pass --follow-links to follow it"
                if len(scan.unfollowed) == 1
                else f"{len(scan.unfollowed)} folder links point outside the folders given and were not followed "
                f"(first: {link} -> {target}); pass --follow-links to follow them"
            )
        progress(Progress("scan", len(scan.files), len(scan.files)))
        states = self.collection.file_states()
        failed_before = self.collection.failure_states()
        # A run killed between writing a batch and clearing its failures leaves both: the row wins.
        self.collection.clear_failures(p for p in failed_before if p in states)
        failed_before = {p: f for p, f in failed_before.items() if p not in states}
        scopes = [r if is_uri(r) else os.path.abspath(os.path.expanduser(r)) for r in roots]
        plan = make_plan(scan, states, failed_before, scopes, opts)
        report.notes += plan.notes
        report.unchanged = len(plan.unchanged)
        report.failed = plan.known_failed
        with DecodePool(opts.workers) as pool:
            sync = Sync(
                self.collection, self.load_encoder, opts, states, plan, report, pool, self.stop, progress, failed_before
            )
            now = datetime.now(UTC)
            sync.fail([Failure(p, reason, 0, 0, now) for p, reason in scan.errors], known=failed_before)
            if plan.decode and not self.stop.is_set():
                moves = find_moves(pool, plan, states, progress)
                self.collection.move(moves)
                report.moved = len(moves)
                touched = find_touched(pool, plan, states, opts.force, progress)
                self.collection.move(touched)  # the new mtime: the row and its vectors stay
                report.unchanged += len(touched)
            if plan.decode and not self.stop.is_set():
                self.engine.embed(plan.decode, sync)
        if self.stop.is_set():
            # What is written is complete and consistent; deletions and caption edits wait for the
            # next run, which also picks up the files not reached.
            report.interrupted = True
            report.seconds = time.monotonic() - started
            return report
        self._sync_captions(plan.recaption, report, sync)
        if sync.unreadable_sidecars:
            first = sync.unreadable_sidecars[0]
            report.notes.append(
                f"{len(sync.unreadable_sidecars)} sidecar files could not be read (first: {first}); "
                "their images keep the captions they had"
            )
        if opts.prune:
            report.removed += self.collection.delete(s.id for s in plan.missing)
        present = {f.path for f in scan.files} | {p for p, _ in scan.errors}
        stale = [p for p in failed_before if in_scope(p, scopes) and p not in present and not scan.exists(p)]
        sync.clear_failures(stale)
        report.seconds = time.monotonic() - started
        progress(Progress("done", 1, 1))
        return report

    def finish(self, index_threshold: int, report: IngestReport) -> None:
        """After a complete run: the index above index_threshold, compaction when anything changed."""
        report.index = self.engine.finish(self.collection, index_threshold, report.changed)

    def _sync_captions(self, files: Iterable[tuple[ScannedFile, FileState]], report: IngestReport, sync: Sync) -> None:
        """Pick up sidecar and manifest edits for images whose own bytes did not change."""
        changes: list[tuple[str, str | None, str | None, str | None]] = []
        edited = 0
        for f, stored in files:
            if stored.kind == "video":
                continue  # videos have no captions (a sidecar's text is not a moment's)
            stamp = sidecar_stamp(f.sidecar)
            planned = planned_caption(self.options.captions, f.path, f.sidecar, stored, sync.unreadable_sidecars, stamp)
            caption, source = choose_caption(planned, stored.description)
            stamp = stamp if source == "sidecar" else None
            if (caption, source, stamp) != (stored.caption, stored.caption_source, stored.caption_stamp):
                changes.append((stored.id, caption, source, stamp))
                edited += (caption, source) != (stored.caption, stored.caption_source)
        if changes:  # a sidecar touched but not edited only gets its new stamp
            vectors = embed_captions(sync.encoder, [c for _, c, _, _ in changes])
            self.collection.set_captions(
                [CaptionUpdate(i, c, s, v, st) for (i, c, s, st), v in zip(changes, vectors, strict=True)]
            )
            report.captions = edited


def finish_writes(
    collection: Collection,
    index_threshold: int,
    changed: bool,
    *,
    build: IndexBuilder | None = None,
    compact: Compactor | None = None,
) -> str:
    """The step every writing run ends with: the ANN index once there are index_threshold images
    (later refreshed), else compaction of what the run appended. Returns the index's state."""
    index = collection.ensure_index(index_threshold, build=build, compact=compact)
    if index in ("none", "current") and changed:
        collection.optimize(compact=compact)
    return index
