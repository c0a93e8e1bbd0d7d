"""Turning results into text: an aligned table, JSON lines, or plain paths."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.shapes import hit_dict, size_text
from storage.records import Failure, Hit, Stats

if TYPE_CHECKING:
    from pipeline.ingest.progress import Progress
    from pipeline.ingest.sync import IngestReport
    from pipeline.library import Details
    from storage.collection import IndexState

CAPTION_WIDTH = 50
MIN_PATH_WIDTH = 24  # narrower than this for the path, and the caption column is left out
CAPTION_GLIMPSE = 16
MIN_CUT = 12  # a path is never cut shorter than this, even when the row then overflows
MAX_FAILURES_SHOWN = 20


def hits_jsonl(hits: Sequence[Hit]) -> str:
    """One JSON object per line, best first."""
    return "\n".join(json.dumps(hit_dict(h), ensure_ascii=False) for h in hits)


def hits_paths(hits: Sequence[Hit]) -> str:
    """One path per line, for xargs."""
    return "\n".join(h.path for h in hits)


def hits_table(hits: Sequence[Hit], width: int | None = None) -> str:
    """An aligned table: score, size, id, path, caption, one line per hit within width characters
    (None: as wide as it takes), long paths cut in the middle and captions at the end."""
    head = ("score", "size", "id", "path", "caption")
    cells = [(f"{h.score:.4f}", f"{h.width}x{h.height}", h.id, h.path, hit_note(h)) for h in hits]
    fixed = sum(max(len(row[i]) for row in [head, *cells]) for i in range(3)) + 2 * 3  # and their gaps
    path_w = max(len(row[3]) for row in [head, *cells])
    caption_w = min(CAPTION_WIDTH, max(len(row[4]) for row in [head, *cells]))
    if width is not None:
        room = width - fixed
        if room - 2 - len(head[4]) < min(path_w, MIN_PATH_WIDTH) or not any(row[4] for row in cells):
            # No captions, or too narrow for both: the path matters more (--json has both).
            return align_rows([(*row[:3], cut_middle(row[3], max(room, MIN_CUT))) for row in [head, *cells]])
        # The path first; the caption keeps a glimpse (CAPTION_GLIMPSE) while the path stays readable.
        glimpse = min(caption_w, CAPTION_GLIMPSE)
        least = glimpse if room - 2 - glimpse >= MIN_PATH_WIDTH else len(head[4])
        caption_w = min(caption_w, max(least, room - 2 - path_w))
        path_w = min(path_w, room - 2 - caption_w)
    rows = [head] + [(*row[:3], cut_middle(row[3], path_w), cut_end(row[4], caption_w)) for row in cells]
    return align_rows(rows)


def hit_note(hit: Hit) -> str:
    """The caption column: an image's caption; a video moment's time, mm:ss, and its other moments'."""
    if hit.kind != "video" or hit.timestamp is None:
        return hit.caption or ""
    note = f"at {clock(hit.timestamp)}"
    if hit.moments:
        note += " (also " + ", ".join(clock(m.timestamp) for m in hit.moments) + ")"
    return note


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on."""
    whole = int(seconds)
    minutes = f"{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 3600}:{minutes}" if whole >= 3600 else minutes


def cut_middle(text: str, width: int) -> str:
    """text within width characters, its middle replaced by '…' (a path keeps its file name)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 3
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def cut_end(text: str, width: int) -> str:
    """text within width characters, ending in '…' when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def terminal_width() -> int | None:
    """The width to fit tables to: $COLUMNS, else the terminal's; None when stdout is not a terminal
    (a file or a pipe gets whole paths)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


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
    if report.moments:
        lines.append(f"{plural(report.videos, 'video')}, {plural(report.moments, 'moment')} embedded")
    if report.live_photos:
        lines.append(f"{plural(report.live_photos, 'Live Photo video')} skipped (part of their photos)")
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


def stats_text(stats: Stats, model_label: str, details: Details | None = None) -> str:
    """Collection stats (and details, when given) as aligned key/value lines."""
    rows = [
        ("collection", stats.uri),
        ("model", model_label),
        ("images", str(stats.images)),
        ("videos", f"{stats.videos} ({plural(stats.moments, 'moment')})" if stats.videos else "0"),
        ("captioned", str(stats.captioned)),
        ("failures", str(stats.failures)),
        ("schema", str(stats.schema_version)),
    ]
    if details is not None:
        rows.append(("disk size", "(object storage)" if details.disk_bytes is None else size_text(details.disk_bytes)))
        roots = details.roots or ("(none recorded)",)
        rows += [("roots" if n == 0 else "", root) for n, root in enumerate(roots)]
        last = details.last_ingest
        rows.append(("last ingest", last.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if last else "never"))
        rows += [("indexes" if n == 0 else "", index_text(i)) for n, i in enumerate(details.indexes)]
        if not details.indexes:
            rows.append(("indexes", "none (exact search, until the collection is large enough for one)"))
    return align_rows(rows)


def index_text(index: IndexState) -> str:
    """'vector_idx IVF_HNSW_SQ on vector: 12000 rows indexed, 40 not yet'."""
    state = f"{index.indexed} rows indexed"
    if index.unindexed:
        state += f", {index.unindexed} not yet (searched exactly; the next ingest adds them)"
    return f"{index.name} {index.kind} on {', '.join(index.columns)}: {state}"


def plural(count: int, noun: str) -> str:
    """'1 video file', '2 video files'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def align_rows(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, each cell padded to its column's width."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


class ProgressView:
    """Progress on a terminal (rich, on the given console): a line while the model loads and while
    the folders are scanned, then a bar per phase with N/M, the rate and the time left."""

    LABELS: ClassVar[dict[str, str]] = {
        "hash": "checking moved files",
        "embed": "embedding",
        "verify files": "reading files",
    }
    UNITS: ClassVar[dict[str, str]] = {"embed": "img/s"}  # others: files/s

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, TextColumn  # noqa: PLC0415 - rich loads only on terminals
        from rich.progress import Progress as RichProgress  # noqa: PLC0415

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, float] = {}
        self._since = time.monotonic()  # when the last phase ended: the next one's work began then

    def __enter__(self) -> ProgressView:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def __call__(self, event: Progress) -> None:
        if event.phase == "model":
            if event.done == 0:
                self._begin("model", f"loading model {event.label} ...", None)
            else:
                self._end("model")
                self._begin("scan", "scanning ...", None)
            return
        if event.phase == "scan":
            self._end("scan")
            return
        if event.phase not in self.LABELS:
            return
        if event.phase not in self._tasks:
            since = self._since  # the phase's first item was worked on before it was told
            self._end("scan")  # a run without a scan (reembed) goes from the model to counting
            self._begin(event.phase, self.LABELS[event.phase], event.total)
            self._started[event.phase] = since
        now = time.monotonic()
        info = counts_text(event.done, event.total, now - self._started[event.phase], self.UNITS.get(event.phase))
        self._bar.update(self._tasks[event.phase], completed=event.done, total=event.total, info=info)
        if event.done >= event.total:
            self._since = now
            self._bar.refresh()  # the last count is shown, however fast the phase ran

    def _begin(self, phase: str, description: str, total: int | None) -> None:
        self._end(phase)
        self._tasks[phase] = self._bar.add_task(description, total=total, info="")
        self._started[phase] = time.monotonic()
        self._bar.refresh()

    def _end(self, phase: str) -> None:
        task = self._tasks.pop(phase, None)
        if task is not None:
            self._bar.remove_task(task)
            self._since = time.monotonic()


def counts_text(done: int, total: int, seconds: float, unit: str | None = None) -> str:
    """'120/500  34.2 img/s  0:11 left': the count, the rate so far and the time left at that rate."""
    text = f"{done}/{total}"
    if done <= 0 or seconds <= 0:
        return text
    rate = done / seconds
    text += f"  {rate:.1f} {unit or 'files/s'}"
    if done < total:
        left = round((total - done) / rate)
        text += f"  {left // 60}:{left % 60:02d} left"
    return text
