"""The plan of an ingest run: what to decode, what moved, what is gone, whose captions to re-read.

Made from a scan and the collection's file states before anything is decoded; both engines (local,
Ray) carry out the same plan. A file is decoded only when it is new or its size or mtime changed;
a new path whose content hash equals that of a vanished file is a move, and keeps its vector.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.ingest.decode import DecodeFailed, hash_file
from pipeline.ingest.pool import DecodePool
from pipeline.ingest.progress import Progress, ProgressFn
from pipeline.ingest.scan import ScannedFile, ScanResult
from pipeline.ingest.sources import is_uri
from pipeline.ingest.video import Sampling
from storage import Failure, FileState, Moved


@dataclass(frozen=True)
class IngestOptions:
    """How to walk and decode; see pipeline.config.Settings for the defaults."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_pixels: int = 200_000_000
    workers: int = 0  # decode processes; 0 decodes in-process
    captions: Mapping[str, str] | None = None  # a manifest: absolute path -> caption; None: none given
    retry_failed: bool = False
    prune: bool = True  # remove rows of files that disappeared under the roots
    prune_empty: bool = False  # also when a root yields no images at all (else: an unmounted drive?)
    commit_rows: int = 2048  # rows per commit (or every COMMIT_SECONDS): what a crash can lose
    force: frozenset[str] = frozenset()  # paths to read again even if their size and mtime match
    follow_links: bool = False  # also walk folder symlinks pointing outside the roots given
    video: Sampling = field(default_factory=Sampling)  # --video-interval, --video-max-frames


@dataclass
class Plan:
    """What a run will do; engines add to missing and recaption as decoding reveals more."""

    decode: list[ScannedFile] = field(default_factory=list)  # new or changed
    unchanged: list[ScannedFile] = field(default_factory=list)
    missing: list[FileState] = field(default_factory=list)  # stored, in scope, gone from disk (or broken now)
    known_failed: int = 0  # failed before with the same size and mtime: not decoded again
    # Stored files to re-read captions for: unchanged, touched (mtime only) and moved ones.
    recaption: list[tuple[ScannedFile, FileState]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know, one line each


def make_plan(
    scan: ScanResult,
    states: Mapping[str, FileState],
    failed_before: Mapping[str, Failure],
    scopes: Sequence[str],
    options: IngestOptions,
) -> Plan:
    """Compare what the scan found with what is stored (by path, size and mtime)."""
    plan = Plan()
    seen = set()
    for f in scan.files:
        seen.add(f.path)
        stored = states.get(f.path)
        failure = failed_before.get(f.path)
        same = stored is not None and stored.size == f.size and stored.mtime_ns == f.mtime_ns
        if stored is not None and same and f.path not in options.force:
            plan.unchanged.append(f)
            plan.recaption.append((f, stored))
        elif (
            failure is not None
            and not options.retry_failed
            and (failure.size, failure.mtime_ns) == (f.size, f.mtime_ns)
        ):
            plan.known_failed += 1  # same bytes failed before: don't decode again
        else:
            plan.decode.append(f)
    if not options.prune:
        return plan  # nothing is removed: no need to look for what is gone
    # A stored file counts as gone only if it is really gone: not merely left out by
    # --include/--exclude, and not inside a folder we could not list this time, nor under a
    # folder link that was not followed (rows stored by a run with --follow-links).
    links = [link for link, _ in scan.unfollowed]
    hidden = [folder for folder, _ in scan.errors if os.path.isdir(folder)] + links
    kept = sum(p not in seen and in_scope(p, links) for p in states) if links else 0
    if kept:
        plan.notes.append(
            f"{kept} stored {'image lies' if kept == 1 else 'images lie'} under folder links that were not followed: "
            "kept as they are; pass --follow-links to update them, or delete the links to remove them"
        )
    candidates = [
        s
        for p, s in states.items()
        if p not in seen and in_scope(p, scopes) and not in_scope(p, hidden) and not scan.exists(p)
    ]
    # A root that yields nothing while rows are stored under it is more likely an unmounted
    # drive than an emptied library: keep its rows.
    for root in scopes:
        under = [s for s in candidates if in_scope(s.path, [root])]
        empty = (is_uri(root) or os.path.isdir(root)) and not any(in_scope(p, [root]) for p in seen)
        if under and empty and not options.prune_empty:
            plan.notes.append(
                f"{root}: no images found but {len(under)} stored; kept them (is the drive mounted?); "
                "if they were deleted, run again with --prune-empty"
            )
            candidates = [s for s in candidates if not in_scope(s.path, [root])]
    plan.missing = candidates
    return plan


def find_moves(pool: DecodePool, plan: Plan, states: Mapping[str, FileState], progress: ProgressFn) -> list[Moved]:
    """Match new paths to vanished rows by content hash; the plan's decode and missing lose them."""
    if not plan.missing:
        return []
    by_hash: dict[str, list[FileState]] = defaultdict(list)
    for state in plan.missing:
        by_hash[state.hash].append(state)
    sizes = {s.size for s in plan.missing}
    # Only a new path (a stored one is its own row) of a vanished file's size can be a move.
    candidates = {f.path: f for f in plan.decode if f.path not in states and f.size in sizes}
    moves: list[Moved] = []
    for done, result in enumerate(pool.map(hash_file, list(candidates)), 1):
        progress(Progress("hash", done, len(candidates)))
        if isinstance(result, DecodeFailed) or not by_hash.get(result.hash):
            continue  # decoding will record a failure, or embed a new image
        state = by_hash[result.hash].pop()
        f = candidates[result.path]
        moves.append(Moved(state.id, f.path, f.size, f.mtime_ns))
        plan.recaption.append((f, state))
    claimed = {m.id for m in moves}
    moved_paths = {m.path for m in moves}
    plan.missing = [s for s in plan.missing if s.id not in claimed]
    plan.decode = [f for f in plan.decode if f.path not in moved_paths]
    return moves


def find_touched(
    pool: DecodePool, plan: Plan, states: Mapping[str, FileState], force: frozenset[str], progress: ProgressFn
) -> list[Moved]:
    """Stored files whose mtime changed but not their bytes (touched, restored from a backup,
    copied without their times), told by hashing them first: the plan's decode loses them, so
    a touched video is not decoded and embedded again. Only a file of its stored size can be one."""
    candidates = {
        f.path: states[f.path]
        for f in plan.decode
        if f.path in states and states[f.path].size == f.size and f.path not in force
    }
    if not candidates:
        return []
    by_path = {f.path: f for f in plan.decode}
    touched: list[Moved] = []
    for done, result in enumerate(pool.map(hash_file, list(candidates)), 1):
        progress(Progress("hash", done, len(candidates)))
        if isinstance(result, DecodeFailed) or result.hash != candidates[result.path].hash:
            continue  # decoding will record the failure, or embed the new content
        f, stored = by_path[result.path], candidates[result.path]
        touched.append(Moved(stored.id, f.path, f.size, f.mtime_ns))
        plan.recaption.append((f, stored))
    same = {m.path for m in touched}
    plan.decode = [f for f in plan.decode if f.path not in same]
    return touched


def in_scope(path: str, scopes: Sequence[str]) -> bool:
    """True when path is one of scopes or lies below one."""
    return any(path == s or path.startswith(s.rstrip(os.sep) + os.sep) for s in scopes)
