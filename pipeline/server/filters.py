"""The page's filters (dates, folder, format, tag and cluster chips) as structured values, turned into
an SQL filter here and only here: every value the client sent is quoted (storage.filters.sql_str) or
is a number or a column name checked against the collection, so no user string reaches SQL bare.

The same filter also tests a row in Python (matches), for browsing, which lists rows without a
query vector; tests check that both say the same.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pipeline.errors import BadOption
from pipeline.library import KINDS
from storage.filters import sql_in, sql_str

CLUSTER = "cluster"
CLUSTER_NAME = "cluster_name"
MAX_CHOICES = 50  # values of one filter in one request
_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,62}")  # an extra column's name, as storage allows them
_DAY = re.compile(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")


@dataclass(frozen=True)
class Filters:
    """What the page narrows results to; empty fields do not filter."""

    after: date | None = None  # from this day on (capture time, else mtime)
    before: date | None = None  # up to and including this day
    folder: str | None = None  # an absolute folder: images in it and below
    formats: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()  # (column, value): ANDed across columns, ORed within one
    clusters: tuple[int, ...] = ()
    kind: str | None = None  # image or video (a video's moments)

    def where(self) -> str | None:
        """The SQL filter, or None when nothing is filtered."""
        parts = []
        if self.after is not None:
            parts.append(_when(">=", _start(self.after)))
        if self.before is not None:
            parts.append(_when("<", _start(self.before + timedelta(days=1))))
        if self.folder is not None:
            parts.append(f"starts_with(path, {sql_str(_prefix(self.folder))})")
        if self.formats:
            parts.append(sql_in("format", list(self.formats)))
        for column, values in _grouped(self.tags).items():
            parts.append(sql_in(column, values))
        if self.clusters:
            parts.append(f"{CLUSTER} IN ({', '.join(str(int(c)) for c in self.clusters)})")
        if self.kind is not None:
            parts.append(f"kind = {sql_str(self.kind)}")
        return " AND ".join(f"({p})" for p in parts) or None

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether a row (with the columns this filter names) passes; the same test as where()."""
        when = row.get("taken_at")
        moment = when if isinstance(when, datetime) else datetime.fromtimestamp(int(row["mtime_ns"]) / 1e9)
        if self.after is not None and moment < _start(self.after):
            return False
        if self.before is not None and moment >= _start(self.before + timedelta(days=1)):
            return False
        if self.folder is not None and not str(row["path"]).startswith(_prefix(self.folder)):
            return False
        if self.formats and row["format"] not in self.formats:
            return False
        if any(row.get(column) not in values for column, values in _grouped(self.tags).items()):
            return False
        if self.kind is not None and row.get("kind", "image") != self.kind:
            return False
        return not self.clusters or row.get(CLUSTER) in self.clusters

    def columns(self) -> set[str]:
        """The extra columns this filter reads."""
        return {c for c, _ in self.tags} | ({CLUSTER} if self.clusters else set())


def parse_filters(
    *,
    after: str | None,
    before: str | None,
    folder: str | None,
    formats: list[str],
    tags: list[str],
    clusters: list[int],
    tag_columns: set[str],
    has_clusters: bool,
    kind: str | None = None,
) -> Filters:
    """Filters from query parameters; raises BadOption with a sentence for a bad one.

    tags are "column:value"; tag_columns are the collection's string columns that hold tags.
    """
    for name, values in (("format", formats), ("tag", tags), ("cluster", clusters)):
        if len(values) > MAX_CHOICES:
            raise BadOption(f"{len(values)} {name} choices; choose at most {MAX_CHOICES}")
    pairs = []
    for tag in tags:
        column, sep, value = tag.partition(":")
        if not sep or not value:
            raise BadOption(f"tag {tag!r}: write it as column:value, e.g. tag:beach")
        if column not in tag_columns or not _COLUMN.fullmatch(column):
            known = ", ".join(sorted(tag_columns)) or "none yet (run clipdex classify --store tag)"
            raise BadOption(f"tag {tag!r}: {column!r} is not a tag column; tag columns: {known}")
        pairs.append((column, value))
    if clusters and not has_clusters:
        raise BadOption("this collection has no clusters yet; run clipdex cluster --auto first")
    kind = (kind or "").strip().lower() or None
    if kind is not None and kind not in KINDS:
        raise BadOption(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    first, last = _day(after, "from", end=False), _day(before, "to", end=True)
    if first and last and first > last:
        raise BadOption(f"the date range {first} to {last} is empty; put the earlier date first")
    if folder is not None and folder.strip():
        folder = folder.strip()
        if not os.path.isabs(folder) and "://" not in folder:
            raise BadOption(f"folder {folder!r}: give the folder as an absolute path, as the results show it")
    else:
        folder = None
    return Filters(
        first,
        last,
        folder,
        tuple(f.strip().upper() for f in formats if f.strip()),
        tuple(pairs),
        tuple(clusters),
        kind,
    )


def _day(text: str | None, name: str, *, end: bool) -> date | None:
    """A day from '2024', '2024-06' or '2024-06-01' (a year or month: its first day, or its last for end)."""
    if text is None or not text.strip():
        return None
    match = _DAY.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError(text)
        year, month, day = int(match.group(1)), match.group(2), match.group(3)
        if month is None:
            return date(year, 12, 31) if end else date(year, 1, 1)
        if day is None:
            first = date(year, int(month), 1)
            return (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1) if end else first
        return date(year, int(month), int(day))
    except ValueError:
        raise BadOption(f"{name} date {text!r}: write it as 2024-06-01 (or 2024-06, or 2024)") from None


def _start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


def _when(op: str, moment: datetime) -> str:
    """Capture time compared with a moment, else (no capture time) the file's mtime, in local time
    as the camera's clock is."""
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"(taken_at IS NOT NULL AND taken_at {op} TIMESTAMP '{stamp}') OR "
        f"(taken_at IS NULL AND mtime_ns {op} {int(moment.timestamp() * 1_000_000_000)})"
    )


def _prefix(folder: str) -> str:
    return folder.rstrip("/") + "/"


def _grouped(tags: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for column, value in tags:
        out.setdefault(column, []).append(value)
    return out
