"""Records to Arrow rows and back: the one place that knows how a record sits in a table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from storage.records import Hit, ImageRecord
from storage.schema import images_schema

_RECORD_FIELDS = {f.name for f in dataclasses.fields(ImageRecord)}


def records_table(records: Sequence[ImageRecord], dimension: int) -> pa.Table:
    """Image rows as the images table stores them (ingested now unless a record says when)."""
    now = datetime.now(UTC)
    return pa.Table.from_pylist([_record_row(r, now) for r in records], schema=images_schema(dimension))


def conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """The batch in the table's schema: its columns in order and types, nulls for columns it lacks."""
    for f in schema:
        if f.name not in batch.column_names:
            batch = batch.append_column(f.name, pa.nulls(batch.num_rows, f.type))
    return batch.select(schema.names).cast(schema)


def vector_list(v: np.ndarray | None) -> list[float] | None:
    """A vector as Arrow takes it (None stays None)."""
    return None if v is None else np.asarray(v, np.float32).tolist()


def vectors_array(column: pa.ChunkedArray | pa.Array, dimension: int) -> np.ndarray:
    """A fixed-size-list column of vectors as an (n, dimension) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float32).reshape(len(column), dimension)


def record_from_row(row: dict[str, Any]) -> ImageRecord:
    """An images-table row as an ImageRecord (extra columns such as tags and clusters left out)."""
    row = {k: v for k, v in row.items() if k in _RECORD_FIELDS}
    row["vector"] = np.asarray(row.get("vector", ()), np.float32)  # empty when not read
    if row.get("caption_vector") is not None:
        row["caption_vector"] = np.asarray(row["caption_vector"], np.float32)
    return ImageRecord(**row)


def hit_from_row(row: dict[str, Any], matched: str) -> Hit:
    """A search result row (HIT_COLUMNS) as a Hit; matched names the vectors that scored it."""
    return Hit(
        id=row["id"],
        path=row["path"],
        score=round(1.0 - float(row["_distance"]), 6),
        caption=row["caption"],
        width=row["width"],
        height=row["height"],
        format=row["format"],
        taken_at=row["taken_at"],
        matched=matched,
        kind=row.get("kind") or "image",
        file_id=row.get("file_id") or row["id"],
        timestamp=row.get("timestamp"),
        duration=row.get("duration"),
    )


def _record_row(r: ImageRecord, now: datetime) -> dict[str, Any]:
    row = dict(r.__dict__)
    row["vector"] = vector_list(r.vector)
    row["caption_vector"] = vector_list(r.caption_vector)
    row["ingested_at"] = r.ingested_at or now
    row["file_id"] = r.file_id or r.id
    return row
