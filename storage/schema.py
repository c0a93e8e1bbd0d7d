"""Table layouts and their versions; upgrades are numbered functions applied in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 3
IMAGES = "images"
FAILURES = "failures"
META = "meta"

KINDS = ("image", "video")
# A video's moments: one row each, null for images.
VIDEO_FIELDS = (
    ("timestamp", pa.float64()),  # seconds from the start of the video
    ("duration", pa.float64()),  # seconds, as decoded (or as the header says)
    ("fps", pa.float64()),
    ("codec", pa.string()),  # h264, hevc, vp9, ...
)


def _add_caption_stamp(db: Any) -> None:
    """1 -> 2: caption_stamp, the size and mtime of the sidecar a caption was read from."""
    for name in db.list_tables().tables:
        if name.startswith(IMAGES):  # images, and a re-embedding's images_next
            table = db.open_table(name)
            if "caption_stamp" not in table.schema.names:
                table.add_columns([pa.field("caption_stamp", pa.string())])


def _add_video_columns(db: Any) -> None:
    """2 -> 3: kind, file_id and the video columns; every stored row is an image of its own file."""
    for name in db.list_tables().tables:
        if name.startswith(IMAGES):
            table = db.open_table(name)
            have = set(table.schema.names)
            # SQL expressions fill the stored rows in the same commit: kind 'image', file_id = id.
            filled = {"kind": "'image'", "file_id": "id"}
            if set(filled) - have:
                table.add_columns({k: v for k, v in filled.items() if k not in have})
            empty = [pa.field(n, t) for n, t in VIDEO_FIELDS if n not in have]
            if empty:
                table.add_columns(empty)


# version N -> function upgrading a collection's tables from N to N + 1
UPGRADES: dict[int, Callable[[Any], None]] = {1: _add_caption_stamp, 2: _add_video_columns}


def images_schema(dimension: int) -> pa.Schema:
    """The images table for vectors of this dimension."""
    vector = pa.list_(pa.float32(), dimension)
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("mtime_ns", pa.int64(), nullable=False),
            pa.field("hash", pa.string(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("format", pa.string(), nullable=False),
            pa.field("taken_at", pa.timestamp("us")),
            pa.field("description", pa.string()),  # the image's own EXIF/XMP description
            pa.field("caption", pa.string()),
            pa.field("caption_source", pa.string()),
            # "size:mtime_ns" of the sidecar file a caption came from: an unchanged one is not read again
            pa.field("caption_stamp", pa.string()),
            pa.field("vector", vector, nullable=False),
            pa.field("caption_vector", vector),
            pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # image, or video (a moment of one)
            # The file a row belongs to: an image's own id; for a video's moments, the video's id
            # (a moment's id is file_id@milliseconds). Sync, moves and deletions go by file_id.
            pa.field("file_id", pa.string()),
            *(pa.field(n, t) for n, t in VIDEO_FIELDS),
        ]
    )


FAILURES_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("failed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

META_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string(), nullable=False)])

# Columns a search returns (never the vectors: they are large and the caller has the query).
HIT_COLUMNS = ["id", "path", "caption", "width", "height", "format", "taken_at", "kind", "file_id", "timestamp",
               "duration", "_distance"]  # fmt: skip
STATE_COLUMNS = ["id", "path", "size", "mtime_ns", "hash", "description", "caption", "caption_source", "caption_stamp",
                 "kind", "file_id"]  # fmt: skip
