"""Turning results into text: an aligned table, JSON lines, or plain paths."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.shapes import hit_dict
from storage.records import Failure, Hit, Stats

if TYPE_CHECKING:
    from pipeline.ingest.sync import IngestReport

CAPTION_WIDTH = 50
MAX_FAILURES_SHOWN = 20


def hits_jsonl(hits: Sequence[Hit]) -> str:
    """One JSON object per line, best first."""
    return "\n".join(json.dumps(hit_dict(h), ensure_ascii=False) for h in hits)


def hits_paths(hits: Sequence[Hit]) -> str:
    """One path per line, for xargs."""
    return "\n".join(h.path for h in hits)


def hits_table(hits: Sequence[Hit]) -> str:
    """An aligned table: score, size, id, path, caption."""
    rows = [("score", "size", "id", "path", "caption")]
    for h in hits:
        caption = h.caption or ""
        if len(caption) > CAPTION_WIDTH:
            caption = caption[: CAPTION_WIDTH - 1] + "…"
        rows.append((f"{h.score:.4f}", f"{h.width}x{h.height}", h.id, h.path, caption))
    return align_rows(rows)


def report_text(report: IngestReport, db: str) -> str:
    """A summary of an ingest run, with the first failures."""
    c = report.counts()
    lines = [
        f"{c['added']} added, {c['updated']} updated, {c['moved']} moved, {c['removed']} removed, "
        f"{c['unchanged']} unchanged, {c['failed']} failed ({report.seconds:.1f} s) in {db}"
    ]
    if report.index in ("built", "refreshed"):
        lines.append(f"vector index {report.index}")
    if report.captions:
        lines.append(f"{report.captions} captions updated")
    if report.vanished:
        lines.append(f"{report.vanished} files vanished during the run (deleted or moved since the scan)")
    if report.videos_skipped:
        lines.append(f"{report.videos_skipped} video files skipped (clipdex indexes still images)")
    lines += failure_lines(report.new_failures, limit=MAX_FAILURES_SHOWN)
    return "\n".join(lines)


def report_json(report: IngestReport, db: str) -> str:
    """The ingest summary as one JSON object."""
    data: dict[str, Any] = report.counts()
    data["index"] = report.index
    data["interrupted"] = report.interrupted
    data["seconds"] = round(report.seconds, 3)
    data["db"] = db
    data["failures"] = [{"path": f.path, "reason": f.reason} for f in report.new_failures]
    return json.dumps(data, ensure_ascii=False)


def failure_lines(failures: Sequence[Failure], limit: int | None = None) -> list[str]:
    """'failed: PATH: REASON' lines, cut at limit with a pointer to `clipdex failures`."""
    failures = sorted(failures, key=lambda f: f.path)
    shown = failures if limit is None else failures[:limit]
    lines = [f"failed: {f.path}: {f.reason}" for f in shown]
    if limit is not None and len(failures) > limit:
        lines.append(f"... and {len(failures) - limit} more; list them all with `clipdex failures`")
    return lines


def stats_text(stats: Stats, model_label: str) -> str:
    """Collection stats as aligned key/value lines."""
    rows = [
        ("collection", stats.uri),
        ("model", model_label),
        ("images", str(stats.images)),
        ("captioned", str(stats.captioned)),
        ("failures", str(stats.failures)),
        ("schema", str(stats.schema_version)),
    ]
    return align_rows(rows)


def align_rows(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, each cell padded to its column's width."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
