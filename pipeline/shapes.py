"""The JSON shapes of results, shared by the CLI's --json and the HTTP API, so both say the same."""

from __future__ import annotations

import json
from typing import Any

from storage.records import Hit, Stats


def hit_dict(hit: Hit) -> dict[str, Any]:
    """The JSON form of a hit: stable id, absolute path, cosine score, caption and size."""
    return {
        "id": hit.id,
        "path": hit.path,
        "score": round(hit.score, 4),
        "caption": hit.caption,
        "width": hit.width,
        "height": hit.height,
        "format": hit.format,
        "taken_at": hit.taken_at.isoformat() if hit.taken_at else None,
    }


def stats_dict(stats: Stats) -> dict[str, Any]:
    """The JSON form of collection stats."""
    return {
        "db": stats.uri,
        "images": stats.images,
        "failures": stats.failures,
        "captioned": stats.captioned,
        "dimension": stats.dimension,
        "model": json.loads(stats.model) if stats.model else None,
        "schema_version": stats.schema_version,
    }
