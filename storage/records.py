"""The rows a collection holds and returns: small frozen dataclasses, no LanceDB types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One image row, as written by ingest."""

    id: str
    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    format: str
    vector: np.ndarray = field(repr=False)
    taken_at: datetime | None = None
    description: str | None = None  # EXIF ImageDescription or XMP dc:description
    caption: str | None = None
    caption_source: str | None = None  # sidecar, manifest or embedded
    caption_vector: np.ndarray | None = field(default=None, repr=False)
    ingested_at: datetime | None = None
    caption_stamp: str | None = None  # "size:mtime_ns" of the sidecar the caption came from
    kind: str = "image"  # image, or video: a moment of a video
    file_id: str | None = None  # the file's id (None: id itself); a video's moments share it
    timestamp: float | None = None  # a moment's time in its video, seconds
    duration: float | None = None  # the video's, seconds
    fps: float | None = None
    codec: str | None = None


@dataclass(frozen=True, slots=True)  # one per stored image, held during ingest planning
class FileState:
    """What incremental sync compares: where a stored file was and what it looked like."""

    id: str
    path: str
    size: int
    mtime_ns: int
    hash: str
    description: str | None
    caption: str | None
    caption_source: str | None
    caption_stamp: str | None = None
    kind: str = "image"


@dataclass(frozen=True)
class Moved:
    """A stored file that now lives elsewhere (or whose mtime changed but not its content): every
    row of the file (a video has one per moment) follows."""

    id: str  # the file's id (file_id)
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class CaptionUpdate:
    """A new caption (or none) for a stored row, with its text vector."""

    id: str
    caption: str | None
    caption_source: str | None
    caption_vector: np.ndarray | None = field(repr=False)
    caption_stamp: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result; score is cosine similarity, higher is closer."""

    id: str
    path: str
    score: float
    caption: str | None
    width: int
    height: int
    format: str
    taken_at: datetime | None
    matched: str = "image"  # the vectors that gave the score: "image" or "caption"
    kind: str = "image"  # image, or video: the hit is a moment of a video
    file_id: str = ""  # the file's id: a video's moments share it ("" for hits made elsewhere)
    timestamp: float | None = None  # a video moment's time, seconds
    duration: float | None = None  # the video's length, seconds
    moments: tuple[Moment, ...] = ()  # the video's other matching moments, by time (when asked for)


@dataclass(frozen=True)
class Moment:
    """Another matching moment of a video hit."""

    id: str
    timestamp: float
    score: float


@dataclass(frozen=True)
class Failure:
    """A file that could not be ingested, and why."""

    path: str
    reason: str
    size: int
    mtime_ns: int
    failed_at: datetime


@dataclass(frozen=True)
class Stats:
    """Counts and facts about a collection."""

    uri: str
    images: int  # photos (rows of kind image)
    videos: int  # video files
    moments: int  # rows of the videos' moments
    failures: int
    captioned: int
    dimension: int
    model: str  # the fingerprint JSON the collection was created with
    schema_version: int
