"""The JSON shapes of results, shared by the CLI's --json and the HTTP API, so both say the same."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from storage.records import Hit, Stats

if TYPE_CHECKING:
    from pipeline.library import Details


def hit_dict(hit: Hit) -> dict[str, Any]:
    """The JSON form of a hit: stable id, absolute path, cosine score, caption and size; for a video
    moment also its time, the video's id and length, and (when asked for) its other moments."""
    data: dict[str, Any] = {
        "id": hit.id,
        "path": hit.path,
        "score": round(hit.score, 4),
        "caption": hit.caption,
        "width": hit.width,
        "height": hit.height,
        "format": hit.format,
        "taken_at": hit.taken_at.isoformat() if hit.taken_at else None,
        "kind": hit.kind,
        "timestamp": hit.timestamp,  # seconds into the video; null for an image
    }
    if hit.kind == "video":
        data["file_id"] = hit.file_id  # the video's id: every moment of it shares it
        data["duration"] = hit.duration
        data["moments"] = [{"id": m.id, "timestamp": m.timestamp, "score": round(m.score, 4)} for m in hit.moments]
    return data


def stats_dict(stats: Stats, details: Details | None = None) -> dict[str, Any]:
    """The JSON form of collection stats, and of the details `clipdex info` adds when given."""
    data = {
        "db": stats.uri,
        "images": stats.images,
        "videos": stats.videos,
        "moments": stats.moments,
        "failures": stats.failures,
        "captioned": stats.captioned,
        "dimension": stats.dimension,
        "model": json.loads(stats.model) if stats.model else None,
        "schema_version": stats.schema_version,
    }
    if details is not None:
        data |= {
            "disk_bytes": details.disk_bytes,
            "roots": list(details.roots),
            "last_ingest": details.last_ingest.isoformat() if details.last_ingest else None,
            "indexes": [
                {
                    "name": i.name,
                    "columns": list(i.columns),
                    "type": i.kind,
                    "indexed_rows": i.indexed,
                    "unindexed_rows": i.unindexed,
                }
                for i in details.indexes
            ],
        }
    return data


def size_text(size: int) -> str:
    """A byte count as people read it: 812 B, 3.4 kB, 1.2 MB, 5.0 GB (powers of 1000, as disks are sold)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            break
    return f"{value:.1f} {unit}"
