"""What the page shows without a query (the newest pictures, the filter choices, the map, the
duplicate groups), computed once per version of the collection: a request reads the cache, and a
write to the collection (ingest, cluster, classify) makes the next request compute it afresh."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.analyse.clusters import MapPoint, map_points
from pipeline.analyse.duplicates import DuplicateGroup, find_duplicates
from pipeline.server.expression import ImageFinder
from pipeline.server.filters import CLUSTER, CLUSTER_NAME, Filters

if TYPE_CHECKING:
    from storage import Collection

T = TypeVar("T")
ROW_COLUMNS = ["id", "path", "size", "mtime_ns", "width", "height", "format", "taken_at", "caption"]
VIDEO_COLUMNS = ["kind", "file_id", "timestamp", "duration"]
MAX_FOLDERS = 40  # folder choices offered, the fullest first
MAX_TAG_VALUES = 40  # values offered per tag column
MAP_POINTS = 2000  # points on /map, a sample of larger collections


@dataclass(frozen=True)
class Facets:
    """The choices the page's filters offer, with how many images each holds."""

    images: int  # files: a video counts once
    kinds: dict[str, int]  # image, video -> files
    formats: dict[str, int]
    folders: dict[str, int]
    tags: dict[str, dict[str, int]]  # tag column -> value -> images
    clusters: list[dict[str, Any]]  # {"cluster", "label", "images"}
    first: datetime | None  # the earliest and latest capture time (else mtime)
    last: datetime | None


class Overview:
    """Per-version caches of one collection; safe to use from several request threads."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self._lock = threading.RLock()  # facets() computes rows() under it
        self._version = -1
        self._cached: dict[str, Any] = {}

    def rows(self) -> list[dict[str, Any]]:
        """Every image's light columns (and tag and cluster columns), the newest first."""
        return self._get("rows", self._rows)

    def files(self) -> list[dict[str, Any]]:
        """rows() with a video once, as its first moment (what browsing lists), the newest first."""
        return self._get("files", self._files)

    def first_moment(self, file_id: str) -> str | None:
        """The id of a video's first moment, by the video's id (None for anything else)."""
        by_file: dict[str, str] = self._get(
            "by_file", lambda: {r["file_id"]: r["id"] for r in self.files() if r.get("kind") == "video"}
        )
        return by_file.get(file_id)

    def row(self, image_id: str) -> dict[str, Any] | None:
        """One image's row from rows(), by id."""
        by_id: dict[str, dict[str, Any]] = self._get("by_id", lambda: {r["id"]: r for r in self.rows()})
        return by_id.get(image_id)

    def finder(self) -> ImageFinder:
        """Stored images by id, path and file name, for the search box's image terms."""
        return self._get("finder", lambda: ImageFinder(self.rows()))

    def tag_columns(self) -> set[str]:
        """The collection's string columns that hold labels (classify --store), not clusters."""
        return self._get("tag_columns", self._tag_columns)

    def has_clusters(self) -> bool:
        """Whether `clipdex cluster` has stored clusters."""
        return CLUSTER in self.collection.column_names()

    def facets(self) -> Facets:
        """The filter choices and counts."""
        return self._get("facets", self._facets)

    def points(self) -> list[MapPoint]:
        """The map's points (pipeline.analyse.clusters.map_points)."""
        return self._get("points", lambda: map_points(self.collection, max_points=MAP_POINTS))

    def duplicates(self) -> list[DuplicateGroup]:
        """Every duplicate group (pipeline.analyse.duplicates.find_duplicates)."""
        return self._get("duplicates", lambda: find_duplicates(self.collection))

    def browse(self, filters: Filters, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many images pass the filters, the page of them from offset), the newest first."""
        passing = [r for r in self.files() if filters.matches(r)]
        return len(passing), passing[offset : offset + limit]

    def _get(self, key: str, compute: Callable[[], T]) -> T:
        version = self.collection.versions()["images"]
        with self._lock:  # one computation per version, however many requests arrive at once
            if version != self._version:
                self._cached, self._version = {}, version
            if key not in self._cached:
                self._cached[key] = compute()
            value: T = self._cached[key]
            return value

    def _tag_columns(self) -> set[str]:
        schema = self.collection.table_schema()
        return {
            name
            for name in self.collection.extra_columns()
            if name != CLUSTER_NAME and str(schema.field(name).type) == "string"
        }

    def _rows(self) -> list[dict[str, Any]]:
        extra = sorted(self._tag_columns() | ({CLUSTER, CLUSTER_NAME} if self.has_clusters() else set()))
        names = set(self.collection.column_names())
        rows = self.collection.columns([*ROW_COLUMNS, *(c for c in VIDEO_COLUMNS if c in names), *extra])
        return sorted(rows, key=lambda r: (-_when(r), r["path"], r.get("timestamp") or 0.0))

    def _files(self) -> list[dict[str, Any]]:
        seen: set[str] = set()
        files = []
        for row in self.rows():  # a video's moments are in time order, the first one first
            key = row.get("file_id") or row["id"]
            if key not in seen:
                seen.add(key)
                files.append(row)
        return files

    def _facets(self) -> Facets:
        rows = self.files()
        folders = Counter(os.path.dirname(r["path"]) for r in rows)
        tags = {
            column: dict(Counter(r[column] for r in rows if r.get(column)).most_common(MAX_TAG_VALUES))
            for column in sorted(self._tag_columns())
        }
        clusters: dict[int, list[Any]] = {}
        for r in rows:
            if r.get(CLUSTER) is not None:
                clusters.setdefault(int(r[CLUSTER]), [r.get(CLUSTER_NAME), 0])[1] += 1
        times = [_when(r) for r in rows]
        return Facets(
            images=len(rows),
            kinds=dict(Counter(r.get("kind") or "image" for r in rows).most_common()),
            formats=dict(Counter(r["format"] for r in rows).most_common()),
            folders=dict(folders.most_common(MAX_FOLDERS)),
            tags=tags,
            clusters=[{"cluster": c, "label": v[0], "images": v[1]} for c, v in sorted(clusters.items())],
            first=datetime.fromtimestamp(min(times)) if times else None,
            last=datetime.fromtimestamp(max(times)) if times else None,
        )


def _when(row: dict[str, Any]) -> float:
    """Capture time, else mtime, as local seconds (what the date filter compares)."""
    taken = row.get("taken_at")
    if isinstance(taken, datetime):
        return taken.timestamp()
    return int(row["mtime_ns"]) / 1e9
