"""clipdex verify: is every row still true to its file, and is every vector sound? Repair what is not.

A row is checked against its file (it exists, with the recorded size and content hash: the file is
read in pieces, in the decode processes) and its vectors (finite, unit length). A video's moments are
rows of one file: the file is read once for all of them. The collection is checked for paths stored
as two files (two file ids) and for failures recorded for paths that are stored. Repair removes the rows
of files that are gone (unless their whole folder is gone: an unmounted drive keeps its rows),
re-ingests the files whose rows are off, and clears the contradicting failures.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.ingest.decode import DecodeFailed, file_hash
from pipeline.ingest.pool import DecodePool
from pipeline.ingest.progress import Progress, ProgressFn
from pipeline.ingest.sources import is_uri, open_binary

if TYPE_CHECKING:
    from storage import Collection

UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed for a stored (float32, normalised) vector
BATCH_ROWS = 4096
GONE = -2  # the size _size_and_hash gives a file that is not there


@dataclass
class Problem:
    """One thing off in the collection: which path, what kind, and a one-line detail."""

    path: str
    kind: str  # damaged, missing, folder-missing, unreadable, size, content, vector, duplicate, stale-failure
    detail: str


@dataclass
class VerifyReport:
    """What verify found (and, with repair, what it did)."""

    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    removed: int = 0  # rows of files that are gone
    reingested: int = 0  # files whose rows were replaced by a fresh ingest
    cleared: int = 0  # failures cleared because the path is stored
    rolled_back: list[str] = field(default_factory=list)  # damaged tables taken back, one line each
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing is off."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind."""
        return dict(Counter(p.kind for p in self.problems))


def verify(collection: Collection, *, workers: int = 0, progress: ProgressFn | None = None) -> VerifyReport:
    """Check every row against its file and every vector; change nothing."""
    started = time.monotonic()
    report = VerifyReport()
    progress = progress or (lambda _: None)
    damage = collection.damage()
    if damage:  # nothing else can be checked until the tables read again
        report.problems += [Problem(collection.uri, "damaged", line) for line in damage]
        report.seconds = time.monotonic() - started
        return report
    rows: Files = {}
    photo_rows: Counter[str] = Counter()  # path -> rows of kind image
    columns = ["id", "file_id", "kind", "path", "size", "hash", "timestamp", "vector", "caption_vector"]
    total = collection.count()
    for batch in collection.iter_rows(columns, BATCH_ROWS):
        data = batch.to_pydict()
        for row_id, file_id, kind, path, size, digest in zip(
            data["id"], data["file_id"], data["kind"], data["path"], data["size"], data["hash"], strict=True
        ):
            rows.setdefault(path, {}).setdefault(file_id or row_id, (size, digest))
            photo_rows[path] += kind != "video"
        names = [_row_name(p, t) for p, t in zip(data["path"], data["timestamp"], strict=True)]
        _check_vectors(data["path"], names, batch.column("vector"), "image", report)
        _check_vectors(data["path"], names, batch.column("caption_vector"), "caption", report)
        report.checked += batch.num_rows
        progress(Progress("verify vectors", report.checked, total))
    for path, files in rows.items():
        # A video's moments share one file id: many rows, one file. Two file ids at one path, or
        # two rows of one photo, are a file stored twice.
        if len(files) > 1:
            ids = ", ".join(sorted(files))
            report.problems.append(Problem(path, "duplicate", f"stored as {len(files)} files (ids {ids})"))
        elif photo_rows[path] > 1:
            report.problems.append(Problem(path, "duplicate", f"{photo_rows[path]} rows for one photo"))
    stored_paths = set(rows)
    for failure in collection.failures():
        if failure.path in stored_paths:
            report.problems.append(Problem(failure.path, "stale-failure", "recorded as failed but stored"))
    _check_files(rows, workers, report, progress)
    report.seconds = time.monotonic() - started
    return report


Files = dict[str, dict[str, tuple[int, str]]]  # path -> file id -> (size, hash) recorded for it


def _row_name(path: str, timestamp: float | None) -> str:
    """'the image vector' of a photo's row; of a moment's: 'the image vector of the moment at 12.0 s'."""
    return "" if timestamp is None else f" of the moment at {timestamp:.1f} s"


def _check_vectors(paths: list[str], names: list[str], column: pa.Array, what: str, report: VerifyReport) -> None:
    """Each non-null vector of the column must be finite and of unit length."""
    valid = np.asarray(column.is_valid())
    if not valid.any():
        return
    present = column.filter(pa.array(valid))
    vectors = present.flatten().to_numpy(zero_copy_only=False).reshape(len(present), -1)
    kept = [(p, n) for p, n, v in zip(paths, names, valid, strict=True) if v]
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=1)
    for (path, name), ok, norm in zip(kept, finite, norms, strict=True):
        if not ok:
            report.problems.append(Problem(path, "vector", f"{what} vector{name} holds NaN or infinity"))
        elif abs(norm - 1) > UNIT_TOLERANCE:
            report.problems.append(Problem(path, "vector", f"{what} vector{name} has length {norm:.4f}, not 1"))


def _check_files(rows: Files, workers: int, report: VerifyReport, progress: ProgressFn) -> None:
    present = []
    folders: dict[str, bool] = {}
    for path in rows:
        folder = os.path.dirname(path)
        if is_uri(path) or os.path.lexists(path):
            present.append(path)
        elif folders.setdefault(folder, _has_entries(folder)):
            report.problems.append(Problem(path, "missing", "the file is gone"))
        else:  # an empty or absent folder: more likely an unmounted drive than deleted photos
            report.problems.append(Problem(path, "folder-missing", "its folder is gone or empty (an unmounted drive?)"))
    with DecodePool(workers) as pool:
        for done, result in enumerate(pool.map(_size_and_hash, present), 1):
            progress(Progress("verify files", done, len(present)))
            path, size, digest = result if not isinstance(result, DecodeFailed) else (result.path, -1, result.reason)
            if size == GONE:
                report.problems.append(Problem(path, "missing", "the object is gone"))
                continue
            if size < 0:
                report.problems.append(Problem(path, "unreadable", digest))
                continue
            recorded_size, recorded_hash = next(iter(rows[path].values()))  # a video's moments share them
            if size != recorded_size:
                report.problems.append(Problem(path, "size", f"{size} bytes on disk, {recorded_size} recorded"))
            elif digest != recorded_hash:
                report.problems.append(Problem(path, "content", "the bytes changed since they were embedded"))


def _size_and_hash(path: str) -> tuple[str, int, str] | DecodeFailed:
    """Runs in a decode process: the file's size and content hash, as ingest computes them (read in
    pieces: a video is never held whole)."""
    try:
        open_binary(path).close()  # file_hash says why it cannot read, but not whether the file is gone
    except FileNotFoundError:
        return path, GONE, ""  # an object deleted from its bucket (files were checked before)
    except OSError:
        pass  # file_hash gives the reason
    result = file_hash(path)
    return result if isinstance(result, DecodeFailed) else (path, result[1], result[0])


def _has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


Reingest = Callable[[list[str]], int]


def repair(collection: Collection, report: VerifyReport, reingest: Reingest) -> VerifyReport:
    """Fix what verify found: drop the rows of files that are gone, read again the files whose rows
    are off, clear failures of stored paths. Rows under a folder that is gone or empty are kept:
    an unmounted drive is not a deletion."""
    gone = {p.path for p in report.problems if p.kind == "missing"}
    broken = {p.path for p in report.problems if p.kind in ("vector", "duplicate")} - gone
    changed = {p.path for p in report.problems if p.kind in ("size", "content")} - gone - broken
    stale = {p.path for p in report.problems if p.kind == "stale-failure"}
    collection.clear_failures(stale)
    report.cleared = len(stale)
    # Changed files are read again in place (their rows keep ids, captions and tags); rows with a
    # bad vector, and every row of a path stored twice, go and come back as new.
    doomed = gone | broken
    ids = []
    for batch in collection.iter_rows(["id", "path"]):
        data = batch.to_pydict()
        ids += [i for i, p in zip(data["id"], data["path"], strict=True) if p in doomed]
    collection.delete(ids)
    report.removed = len(gone)
    if broken | changed:
        report.reingested = reingest(sorted(broken | changed))
    return report
