"""Duplicates in tiers: exact (same bytes), near (re-encodes, resizes, small crops), similar shots
(bursts: close in time and in meaning). Each group suggests a keeper: the largest picture.

Exact copies form their own groups; near groups compare distinct contents (one file per content
hash stands for its copies); similar shots are the images in neither that were taken within
burst_seconds of each other and look alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from storage import Collection


NEAR = 0.95  # cosine at or above which two images are the same picture
SIMILAR = 0.85  # cosine at or above which two shots close in time are one moment
BURST_SECONDS = 60.0
BURST_NEIGHBOURS = 32  # later shots each image is compared with for bursts
BLOCK = 512  # rows per block of the similarity matrix: bounds memory to BLOCK x n floats


@dataclass(frozen=True)
class Member:
    """An image in a duplicate group; score is its cosine to the keeper."""

    id: str
    path: str
    width: int
    height: int
    size: int
    score: float


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are the same picture (exact, near) or the same moment (similar)."""

    tier: str  # exact, near or similar
    keeper: Member
    members: tuple[Member, ...]  # the keeper first


def find_duplicates(
    collection: Collection,
    *,
    near: float = NEAR,
    similar: float = SIMILAR,
    burst_seconds: float = BURST_SECONDS,
) -> list[DuplicateGroup]:
    """Every group of two or more images, exact first, then near, then similar; largest groups first."""
    ids, vectors = collection.vectors()
    columns = ["id", "path", "hash", "width", "height", "size", "taken_at", "mtime_ns"]
    rows = {r["id"]: r for r in collection.columns(columns)}
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, image_id in enumerate(ids):
        by_hash[rows[image_id]["hash"]].append(i)
    exact = [members for members in by_hash.values() if len(members) > 1]
    # Near duplicates among distinct contents: one representative per hash (exact copies are
    # their own tier), compared block by block: a matrix product, not pairs in Python.
    reps = np.array([members[0] for members in by_hash.values()], dtype=np.int64)
    same = _UnionFind(len(ids))
    rep_vectors = vectors[reps]
    for start in range(0, len(reps), BLOCK):
        block = rep_vectors[start : start + BLOCK] @ rep_vectors.T
        for r, c in zip(*np.nonzero(block >= near), strict=True):
            if c > start + r:
                same.union(int(reps[start + r]), int(reps[c]))
    near_groups = [star for g in same.groups() if len(g) > 1 for star in _stars(g, vectors, rows, ids, near)]
    grouped = {i for g in near_groups for i in g} | {i for g in exact for i in g[1:]}
    moments = _bursts(ids, vectors, rows, grouped, similar, burst_seconds)
    result = [_group("exact", g, ids, vectors, rows) for g in exact]
    result += [_group("near", g, ids, vectors, rows) for g in near_groups]
    result += [_group("similar", g, ids, vectors, rows) for g in moments]
    order = {"exact": 0, "near": 1, "similar": 2}
    return sorted(result, key=lambda g: (order[g.tier], -len(g.members), g.keeper.path))


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
    return [star for g in moments.groups() if len(g) > 1 for star in _stars(g, vectors, rows, ids, similar)]


def _stars(
    members: list[int], vectors: np.ndarray, rows: dict[str, dict[str, Any]], ids: list[str], threshold: float
) -> list[list[int]]:
    """Split a chain (a~b, b~c, ...) into groups whose every member is within threshold of its keeper,
    so that keeping the keeper and deleting the rest never deletes a different picture."""
    remaining = sorted(members, key=lambda i: _size(rows[ids[i]]), reverse=True)
    stars = []
    while len(remaining) > 1:
        close = vectors[remaining] @ vectors[remaining[0]] >= threshold
        star = [m for m, c in zip(remaining, close, strict=True) if c]
        if len(star) > 1:
            stars.append(star)
        remaining = [m for m, c in zip(remaining, close, strict=True) if not c]
    return stars


def _size(row: dict[str, Any]) -> tuple[int, int]:
    return int(row["width"]) * int(row["height"]), int(row["size"])


def _when(row: dict[str, Any]) -> float:
    taken = row.get("taken_at")
    if isinstance(taken, datetime):
        return taken.timestamp()
    return float(row["mtime_ns"]) / 1e9


def _group(
    tier: str, members: list[int], ids: list[str], vectors: np.ndarray, rows: dict[str, dict[str, Any]]
) -> DuplicateGroup:
    keeper = max(members, key=lambda i: _size(rows[ids[i]]))
    ordered = [keeper, *sorted((m for m in members if m != keeper), key=lambda m: rows[ids[m]]["path"])]
    found = tuple(
        Member(
            id=ids[m],
            path=rows[ids[m]]["path"],
            width=int(rows[ids[m]]["width"]),
            height=int(rows[ids[m]]["height"]),
            size=int(rows[ids[m]]["size"]),
            score=round(float(vectors[m] @ vectors[keeper]), 4),
        )
        for m in ordered
    )
    return DuplicateGroup(tier, found[0], found)


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
