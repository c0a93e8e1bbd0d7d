"""Captions from sidecar files and CSV / JSON Lines manifests, and image descriptions in XMP."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import InputNotFound, ManifestError
from pipeline.ingest.sources import is_uri, read_bytes
from storage import FileState

MAX_CAPTION_CHARS = 1000
SIDECAR_BYTES = 64 * 1024  # a caption is its first line: no need to read more of a sidecar

# (caption, source): source is manifest, sidecar or embedded; (None, None) when there is none.
Caption = tuple[str | None, str | None]


def planned_caption(
    manifest: Mapping[str, str] | None,
    path: str,
    sidecar: str | None,
    stored: FileState | None,
    unreadable: list[str] | None = None,
    stamp: str | None = None,
) -> Caption | None:
    """The caption known before the image is decoded, or None: use the image's own description
    (choose_caption), which only decoding reveals.

    A manifest beats a sidecar file, also across runs: a run given no manifest keeps the captions
    an earlier manifest gave (a run given one replaces them). A sidecar that exists but cannot be
    read keeps the stored caption; its path and the reason go to `unreadable`. A sidecar whose
    stamp (sidecar_stamp) is the one stored with its caption is not read again.
    """
    if manifest is not None and path in manifest:
        return manifest[path], "manifest"
    if manifest is None and stored is not None and stored.caption_source == "manifest":
        return stored.caption, "manifest"
    if (
        stamp is not None
        and stored is not None
        and stored.caption_source == "sidecar"
        and stored.caption_stamp == stamp
    ):
        return stored.caption, "sidecar"
    try:
        text = sidecar_text(sidecar) if sidecar else None
    except OSError as exc:
        if unreadable is not None:
            unreadable.append(f"{sidecar}: {exc.strerror or exc}")
        return (stored.caption, stored.caption_source) if stored is not None else None
    if text:
        return text, "sidecar"
    return None


def sidecar_stamp(path: str | None) -> str | None:
    """'size:mtime_ns' of a local sidecar file (None for none, an object, or one that is gone)."""
    if path is None or is_uri(path):
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return f"{info.st_size}:{info.st_mtime_ns}"


def choose_caption(planned: Caption | None, description: str | None) -> Caption:
    """The planned caption, else the image's own EXIF/XMP description, else none."""
    if planned is not None:
        return planned
    return (description, "embedded") if description else (None, None)


def clean_caption(text: str | None) -> str | None:
    """The first non-empty line, trimmed to MAX_CAPTION_CHARS; None when there is none."""
    if not text:
        return None
    # Lone surrogates (a JSON "\\ud800" escape) cannot be stored as UTF-8: replace them.
    text = text.encode("utf-8", errors="replace").decode("utf-8").replace("\ufeff", "")
    for raw in text.replace("\x00", "").splitlines():
        line = " ".join(raw.split())
        if line:
            return line[:MAX_CAPTION_CHARS].rstrip()
    return None


def read_sidecar(path: str) -> str | None:
    """The caption in a sidecar text file; None when it is empty or unreadable."""
    try:
        return sidecar_text(path)
    except OSError:
        return None


def sidecar_text(path: str) -> str | None:
    """The caption in a sidecar text file (None when it is empty or gone); OSError when it exists
    but cannot be read (permissions, a FIFO or device, a broken link is gone: None)."""
    try:
        data = read_bytes(path, limit=SIDECAR_BYTES)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None
    return clean_caption(data.decode("utf-8-sig", errors="replace"))


def xmp_description(xmp: bytes | str | None) -> str | None:
    """dc:description from an XMP packet, without an XML parser (packets can be hostile)."""
    if not xmp:
        return None
    data = xmp.encode("utf-8", errors="replace") if isinstance(xmp, str) else xmp
    # Plain finds, each scanning forward once: linear time however hostile the packet.
    start = data.find(b"<dc:description")
    item = data.find(b"<rdf:li", start) if start >= 0 else -1
    opened = data.find(b">", item) if item >= 0 else -1
    end = data.find(b"</rdf:li>", opened) if opened >= 0 else -1
    if end < 0:
        return None
    return clean_caption(html.unescape(data[opened + 1 : end].decode("utf-8", errors="replace")))


def read_manifest(path: str | Path) -> dict[str, str]:
    """absolute image path -> caption, from a CSV (path,caption) or JSON Lines file.

    Relative paths are taken relative to the manifest's folder.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ManifestError(f"--captions {path}: not a regular file (a FIFO, socket or device); give a CSV file")
    if not path.is_file():
        raise InputNotFound(f"--captions {path}: no such file; give a CSV or JSON Lines file of path,caption")
    base = path.parent.absolute()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"--captions {path}: cannot read it ({exc}); save it as UTF-8") from exc
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith("{")
    try:
        pairs = _parse_jsonl(path, text) if is_jsonl else _parse_csv(path, text)
    except (csv.Error, ValueError, RecursionError) as exc:  # over-long fields, absurd numbers, deep nesting
        raise ManifestError(f"--captions {path}: cannot parse it ({exc}); expected path,caption rows") from exc
    captions: dict[str, str] = {}
    for image, caption in pairs:
        cleaned = clean_caption(caption)
        if cleaned and is_uri(image):
            captions[image] = cleaned
        elif cleaned:
            captions[os.path.normpath(os.path.join(base, os.path.expanduser(image)))] = cleaned
    return captions


def _parse_jsonl(path: Path, text: str) -> list[tuple[str, str]]:
    pairs = []
    # Only \n ends a JSON Lines record: U+2028 and friends may appear inside strings.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"--captions {path} line {number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise ManifestError(f'--captions {path} line {number}: expected {{"path": ..., "caption": ...}}')
        caption = row.get("caption", row.get("text"))
        if caption is not None and not isinstance(caption, str):
            raise ManifestError(f"--captions {path} line {number}: caption must be a string")
        pairs.append((row["path"], caption or ""))
    return pairs


def _parse_csv(path: Path, text: str) -> list[tuple[str, str]]:
    # A quoted caption may hold line breaks: the csv module, not splitlines, decides where rows end.
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = [(reader.line_num, row) for row in reader]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "path" in header:
        p_col = header.index("path")
        c_col = header.index("caption") if "caption" in header else (header.index("text") if "text" in header else -1)
        if c_col < 0:
            raise ManifestError(f"--captions {path}: the header has 'path' but no 'caption' column")
        rows = rows[1:]
    else:
        p_col, c_col = 0, 1
    pairs = []
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(p_col, c_col):
            raise ManifestError(f"--captions {path} line {number}: expected two columns, path and caption")
        pairs.append((row[p_col].strip(), row[c_col]))
    return pairs
