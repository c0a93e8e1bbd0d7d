"""Duplicates in tiers: exact (same bytes), near (re-encodes, resizes, small crops), similar shots
(bursts: close in time and in meaning). Each group suggests a keeper: the original.

Exact copies form their own groups, kept as the earliest capture time, then the earliest mtime,
then a name without a copy mark ("copy", "(1)", "- Copy", "_1"); near groups compare distinct
contents (each set of copies stands by its keeper) and keep the largest picture first, then the
same rules; similar shots are the images in neither that were taken within burst_seconds of each
other and look alike. A video takes part as one file, in the exact tier only (its moments are
frames of one file, not duplicates of each other).

What can go (deletable, summarise) is every member but the keeper of the exact and near groups;
similar shots are different pictures and go only when asked for. move_files moves them under a
folder, keeping their folder structure, never overwriting, and removes their rows.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import OutputError
from pipeline.ingest.sources import is_uri
from pipeline.shapes import size_text

if TYPE_CHECKING:
    from storage import Collection


NEAR = 0.95  # cosine at or above which two images are the same picture
SIMILAR = 0.85  # cosine at or above which two shots close in time are one moment
BURST_SECONDS = 60.0
BURST_NEIGHBOURS = 32  # later shots each image is compared with for bursts
BLOCK = 512  # rows per block of the similarity matrix: bounds memory to BLOCK x n floats
TIERS = ("exact", "near", "similar")
DELETABLE_TIERS = ("exact", "near")  # similar shots are different pictures: only when asked for
# A name that marks a copy, at the end of the name without its extension: "Dune copy", "Dune - Copy",
# "Dune copy 2", "Dune (1)", "Dune_1", "Dune-2", "Dune Kopie"; or "Copy of Dune" at its start. A number
# after a number is part of the name (2019-07-14, IMG_0412_1 is ambiguous and taken as a name).
_COPY_MARK = re.compile(
    r"(?:[\s_-]*\b(?:copy|kopie|copie|copia|kopia|kopio)\b(?:[\s_-]*\(?\d{1,3}\)?)?|\s*\(\d{1,3}\)|(?<!\d)[_-]\d{1,2}|(?<!\d)\s\d{1,2})$"
    r"|^(?:copy|kopie|copie|copia) (?:\(\d+\) )?of\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Member:
    """An image in a duplicate group; score is its cosine to the keeper."""

    id: str  # the file's id (a video's, not one of its moments')
    path: str
    width: int
    height: int
    size: int
    score: float
    mtime_ns: int = 0
    taken_at: datetime | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are the same picture (exact, near) or the same moment (similar)."""

    tier: str  # exact, near or similar
    keeper: Member
    members: tuple[Member, ...]  # the keeper first
    why: str = ""  # what made the keeper the keeper: "earliest capture time", "largest picture", ...


@dataclass(frozen=True)
class DuplicateSummary:
    """What the groups add up to: files that could go and the bytes they take."""

    groups: int
    by_tier: dict[str, int]  # tier -> groups
    files: int  # files in all groups, keepers included
    deletable: int  # members but the keepers, in the tiers counted
    deletable_bytes: int
    tiers: tuple[str, ...]  # the tiers whose members were counted as deletable


@dataclass(frozen=True)
class PlannedMove:
    """A file to move out of the way, and the keeper it duplicates."""

    id: str
    source: str
    target: str
    size: int
    mtime_ns: int
    keeper: str
    keeper_size: int


@dataclass(frozen=True)
class MoveReport:
    """What move_files did: the files moved (their rows removed) and those left, with why."""

    moved: tuple[PlannedMove, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)
    removed_rows: int


def find_duplicates(
    collection: Collection,
    *,
    near: float = NEAR,
    similar: float = SIMILAR,
    burst_seconds: float = BURST_SECONDS,
) -> list[DuplicateGroup]:
    """Every group of two or more images, exact first, then near, then similar; largest groups first."""
    ids, vectors, rows, videos = _load(collection)
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, image_id in enumerate(ids):
        by_hash[rows[image_id]["hash"]].append(i)
    # Each set of copies stands by its keeper, so that a near group keeps the same file its exact group keeps.
    copies = [sorted(members, key=lambda i: _rank(rows[ids[i]], "exact")) for members in by_hash.values()]
    exact = [members for members in copies if len(members) > 1]
    # Near duplicates among distinct contents (exact copies are their own tier), compared block by
    # block: a matrix product, not pairs in Python.
    reps = np.array([members[0] for members in copies if members[0] not in videos], dtype=np.int64)
    same = _UnionFind(len(ids))
    rep_vectors = vectors[reps]
    for start in range(0, len(reps), BLOCK):
        block = rep_vectors[start : start + BLOCK] @ rep_vectors.T
        for r, c in zip(*np.nonzero(block >= near), strict=True):
            if c > start + r:
                same.union(int(reps[start + r]), int(reps[c]))
    near_groups = [star for g in same.groups() if len(g) > 1 for star in _stars(g, vectors, rows, ids, near, "near")]
    grouped = {i for g in near_groups for i in g} | {i for g in exact for i in g[1:]} | videos
    moments = _bursts(ids, vectors, rows, grouped, similar, burst_seconds)
    result = [_group("exact", g, ids, vectors, rows) for g in exact]
    result += [_group("near", g, ids, vectors, rows) for g in near_groups]
    result += [_group("similar", g, ids, vectors, rows) for g in moments]
    order = {"exact": 0, "near": 1, "similar": 2}
    return sorted(result, key=lambda g: (order[g.tier], -len(g.members), g.keeper.path))


def deletable(groups: Iterable[DuplicateGroup], tiers: Sequence[str] = DELETABLE_TIERS) -> list[Member]:
    """The members that could go, keepers kept, in these tiers; each path once, in group order."""
    seen: set[str] = set()
    out = []
    for group in groups:
        if group.tier in tiers:
            for member in group.members[1:]:
                if member.path not in seen:
                    seen.add(member.path)
                    out.append(member)
    return out


def summarise(groups: Sequence[DuplicateGroup], tiers: Sequence[str] = DELETABLE_TIERS) -> DuplicateSummary:
    """Groups per tier, files in them, and what deleting the deletable members would free."""
    going = deletable(groups, tiers)
    return DuplicateSummary(
        groups=len(groups),
        by_tier={tier: sum(g.tier == tier for g in groups) for tier in TIERS},
        files=len({m.path for g in groups for m in g.members}),
        deletable=len(going),
        deletable_bytes=sum(m.size for m in going),
        tiers=tuple(t for t in TIERS if t in tiers),
    )


def summary_text(summary: DuplicateSummary) -> str:
    """One line: '3 groups (2 exact, 1 near, 0 similar), 7 files; 4 could go (exact, near), freeing 8.1 MB'."""
    tiers = ", ".join(f"{summary.by_tier[t]} {t}" for t in TIERS)
    kept = "" if "similar" in summary.tiers else "; similar shots are kept (--with-similar counts them)"
    return (
        f"{summary.groups} groups ({tiers}), {summary.files} files; {summary.deletable} could go "
        f"({', '.join(summary.tiers)}), freeing {size_text(summary.deletable_bytes)}{kept}"
    )


def plan_moves(
    collection: Collection,
    groups: Sequence[DuplicateGroup],
    target: str,
    tiers: Sequence[str] = DELETABLE_TIERS,
) -> list[PlannedMove]:
    """Where each deletable member would go under target: its path below the folder that holds
    every stored file (so /photos/2023/a copy.jpg -> TARGET/2023/a copy.jpg)."""
    target = os.path.abspath(os.path.expanduser(target))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise OutputError(f"--move-to {target}: not a folder; give a folder (it is created when missing)")
    base = common_folder(collection)
    planned = []
    for group in groups:
        if group.tier not in tiers:
            continue
        for member in group.members[1:]:
            relative = os.path.relpath(member.path, base) if not is_uri(member.path) else member.path
            planned.append(
                PlannedMove(
                    id=member.id,
                    source=member.path,
                    target=os.path.join(target, relative),
                    size=member.size,
                    mtime_ns=member.mtime_ns,
                    keeper=group.keeper.path,
                    keeper_size=group.keeper.size,
                )
            )
    return planned


def common_folder(collection: Collection) -> str:
    """The deepest folder that holds every stored local file (/ when they share none)."""
    paths: set[str] = set()
    for batch in collection.iter_rows(["path"]):
        paths.update(p for p in batch.column("path").to_pylist() if not is_uri(p))
    if not paths:
        return os.sep
    base = os.path.commonpath(sorted(paths))
    return os.path.dirname(base) if len(paths) == 1 else base


def move_files(
    collection: Collection,
    planned: Sequence[PlannedMove],
    *,
    on_move: Callable[[PlannedMove], None] | None = None,
) -> MoveReport:
    """Move the planned files, each only while its keeper is still there and it is still the file
    ingest saw (size and mtime), never over an existing file; then remove the moved files' rows
    so that nothing reports them missing. One file that cannot move never stops the others."""
    moved: list[PlannedMove] = []
    skipped: list[tuple[str, str]] = []
    with collection.writer("duplicates --move-to"):
        try:
            for move in planned:
                reason = _refusal(move)
                if reason is None:
                    try:
                        _move_no_overwrite(move.source, move.target)
                    except OSError as exc:
                        reason = f"cannot move it to {move.target} ({exc.strerror or exc})"
                if reason is not None:
                    skipped.append((move.source, reason))
                    continue
                moved.append(move)
                if on_move is not None:
                    on_move(move)
        finally:
            # Also after an interruption: a moved file must not stay in the collection.
            removed = collection.delete([m.id for m in moved]) if moved else 0
    return MoveReport(tuple(moved), tuple(skipped), removed)


def _refusal(move: PlannedMove) -> str | None:
    """Why this file must stay where it is, or None."""
    if is_uri(move.source):
        return "on object storage; --move-to moves local files only"
    if "\n" in move.source or "\n" in move.target:
        return "its name holds a line break; move it by hand"
    try:
        keeper = os.stat(move.keeper)
    except OSError:
        return f"its keeper {move.keeper} is gone; run clipdex ingest, then clipdex duplicates again"
    if not stat.S_ISREG(keeper.st_mode) or keeper.st_size != move.keeper_size:
        return f"its keeper {move.keeper} changed since ingest; run clipdex ingest, then clipdex duplicates again"
    try:
        info = os.lstat(move.source)
    except OSError:
        return "it is gone already"
    if not stat.S_ISREG(info.st_mode):
        return "no longer a regular file"
    if info.st_size != move.size or (move.mtime_ns and info.st_mtime_ns != move.mtime_ns):
        return "it changed since ingest; run clipdex ingest, then clipdex duplicates again"
    if os.path.samefile(move.source, move.keeper):
        return f"it is the same file as its keeper {move.keeper} (a hard link)"
    if os.path.lexists(move.target):
        return f"{move.target} exists; nothing is overwritten"
    return None


def _move_no_overwrite(source: str, target: str) -> None:
    """Move a file to a path that must not exist yet: a hard link then an unlink on one file
    system (os.rename would replace a file created meanwhile), an exclusive copy across them."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        _copy_exclusive(source, target)
    os.unlink(source)


def _copy_exclusive(source: str, target: str) -> None:
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        except BaseException:
            dst.close()
            os.unlink(target)
            raise
    shutil.copystat(source, target)


def _load(collection: Collection) -> tuple[list[str], np.ndarray, dict[str, dict[str, Any]], set[int]]:
    """(ids, vectors, id -> row, indices of video rows); a video keeps one row (its first moment),
    standing for the file, with the file's id."""
    ids, vectors = collection.vectors()
    have = set(collection.column_names())
    columns = ["id", "path", "hash", "width", "height", "size", "taken_at", "mtime_ns"]
    columns += [c for c in ("kind", "file_id") if c in have]
    rows = {r["id"]: r for r in collection.columns(columns)}
    keep: list[int] = []
    videos: set[int] = set()
    seen_files: set[Any] = set()
    for i, image_id in enumerate(ids):
        row = rows[image_id]
        if row.get("kind", "image") == "video":
            if row.get("file_id") in seen_files:
                continue
            seen_files.add(row.get("file_id"))
            videos.add(len(keep))
        keep.append(i)
    if len(keep) < len(ids):
        ids = [ids[i] for i in keep]
        vectors = vectors[np.array(keep, dtype=np.int64)]
    return ids, vectors, rows, videos


def _bursts(
    ids: list[str],
    vectors: np.ndarray,
    rows: dict[str, dict[str, Any]],
    grouped: set[int],
    similar: float,
    burst_seconds: float,
) -> list[list[int]]:
    """Shots taken within burst_seconds of each other that look alike (capture time, else mtime).

    Each image is compared with the BURST_NEIGHBOURS next ones in time order, one vectorised
    pass per offset, which keeps it linear; among many files sharing one time, shots more than
    BURST_NEIGHBOURS apart in that order are not compared.
    """
    order = np.array(sorted((i for i in range(len(ids)) if i not in grouped), key=lambda i: _when(rows[ids[i]])))
    times = np.array([_when(rows[ids[i]]) for i in order])
    moments = _UnionFind(len(ids))
    ordered = vectors[order] if len(order) else vectors[:0]
    for offset in range(1, min(BURST_NEIGHBOURS, len(order) - 1) + 1):
        close = times[offset:] - times[:-offset] <= burst_seconds
        alike = np.einsum("ij,ij->i", ordered[offset:], ordered[:-offset]) >= similar
        for k in np.nonzero(close & alike)[0]:
            moments.union(int(order[k]), int(order[k + offset]))
    return [star for g in moments.groups() if len(g) > 1 for star in _stars(g, vectors, rows, ids, similar, "similar")]


def _stars(
    members: list[int],
    vectors: np.ndarray,
    rows: dict[str, dict[str, Any]],
    ids: list[str],
    threshold: float,
    tier: str,
) -> list[list[int]]:
    """Split a chain (a~b, b~c, ...) into groups whose every member is within threshold of its keeper,
    so that keeping the keeper and deleting the rest never deletes a different picture."""
    remaining = sorted(members, key=lambda i: _rank(rows[ids[i]], tier))
    stars = []
    while len(remaining) > 1:
        close = vectors[remaining] @ vectors[remaining[0]] >= threshold
        star = [m for m, c in zip(remaining, close, strict=True) if c]
        if len(star) > 1:
            stars.append(star)
        remaining = [m for m, c in zip(remaining, close, strict=True) if not c]
    return stars


def copy_marked(path: str) -> bool:
    """True when a file's name marks it as a copy: "Dune copy.jpg", "Dune (1).jpg", "Dune - Copy.jpg",
    "Dune_1.jpg", "Copy of Dune.jpg"."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return bool(_COPY_MARK.search(stem.strip()))


# The keeper's criteria in order, named for DuplicateGroup.why; the exact tier has no "largest
# picture" (copies share their pixels), near and similar shots put it first.
_CRITERIA = {
    "exact": ("earliest capture time", "earliest modified", "name without a copy mark", "shortest path", "first name"),
    "near": (
        "largest picture",
        "earliest capture time",
        "earliest modified",
        "name without a copy mark",
        "largest file",
        "shortest path",
        "first name",
    ),
}


def _rank(row: dict[str, Any], tier: str) -> tuple[Any, ...]:
    """Sort key of a keeper candidate: the best first."""
    taken = row.get("taken_at")
    when = taken.timestamp() if isinstance(taken, datetime) else float("inf")
    path = str(row["path"])
    common = (when, int(row["mtime_ns"]), copy_marked(path))
    tail = (len(path), path)
    if tier == "exact":
        return (*common, *tail)
    return (-int(row["width"]) * int(row["height"]), *common, -int(row["size"]), *tail)


def _why(keeper: dict[str, Any], runner_up: dict[str, Any], tier: str) -> str:
    names = _CRITERIA["exact" if tier == "exact" else "near"]
    for name, a, b in zip(names, _rank(keeper, tier), _rank(runner_up, tier), strict=True):
        if a != b:
            return name
    return names[-1]


def _when(row: dict[str, Any]) -> float:
    taken = row.get("taken_at")
    if isinstance(taken, datetime):
        return taken.timestamp()
    return float(row["mtime_ns"]) / 1e9


def _group(
    tier: str, members: list[int], ids: list[str], vectors: np.ndarray, rows: dict[str, dict[str, Any]]
) -> DuplicateGroup:
    ranked = sorted(members, key=lambda i: _rank(rows[ids[i]], tier))
    keeper = ranked[0]
    ordered = [keeper, *sorted((m for m in members if m != keeper), key=lambda m: rows[ids[m]]["path"])]
    found = tuple(_member(rows[ids[m]], float(vectors[m] @ vectors[keeper])) for m in ordered)
    return DuplicateGroup(tier, found[0], found, _why(rows[ids[keeper]], rows[ids[ranked[1]]], tier))


def _member(row: dict[str, Any], score: float) -> Member:
    return Member(
        id=row.get("file_id") or row["id"],
        path=row["path"],
        width=int(row["width"]),
        height=int(row["height"]),
        size=int(row["size"]),
        score=round(score, 4),
        mtime_ns=int(row["mtime_ns"]),
        taken_at=row.get("taken_at"),
    )


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return list(out.values())
