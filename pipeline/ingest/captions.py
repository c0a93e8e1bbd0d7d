"""Captions from sidecar files and CSV / JSON Lines manifests, and image descriptions in EXIF / XMP.

A camera's own boilerplate in those descriptions (OLYMPUS DIGITAL CAMERA, SONY DSC, a file or
folder name, the camera's make and model) is not a caption: is_boilerplate says which are.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
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
    """The planned caption, else the image's own EXIF/XMP description unless it is a camera's
    boilerplate, else none.

    Checked here as well as when decoding, so that rows stored before the rule lose their
    boilerplate caption at the next ingest without their files being decoded again.
    """
    if planned is not None:
        return planned
    return (description, "embedded") if description and not is_boilerplate(description) else (None, None)


EXIF_MAKE = 0x010F
EXIF_MODEL = 0x0110
EXIF_DESCRIPTION = 0x010E

# Whole descriptions that cameras, phones and tools write when nobody wrote one.
_BOILERPLATE_TEXTS = frozenset(
    {"UNTITLED", "DEFAULT", "IMAGE", "PICTURE", "PHOTO", "DESCRIPTION", "NONE", "NULL", "N/A", "NA", "JPEG", "JPG",
     "EXIF_JPEG_PICTURE", "EXIF JPEG PICTURE", "EXIF_JPEG_422", "CREATED WITH GIMP", "SCREENSHOT", "SCREEN SHOT",
     "LEAD TECHNOLOGIES INC. V1.01", "DIGITAL STILLCAMERA", "DIGITAL STILL CAMERA", "DIGITAL CAMERA", "DSC",
     "CAMERA", "MY CAMERA", "PHONE", "IPHONE", "ANDROID"}
)  # fmt: skip
# Camera makers whose name alone (or with a model code) is never a caption, even without the
# file's EXIF Make to compare with (a row stored before this rule). Names that are also common
# words (Apple, Sharp, Google) are left to the EXIF comparison.
CAMERA_BRANDS = frozenset(
    {"CANON", "NIKON", "SONY", "OLYMPUS", "PANASONIC", "FUJIFILM", "FUJI", "KODAK", "EASTMAN", "KONICA", "MINOLTA",
     "PENTAX", "RICOH", "LEICA", "CASIO", "SANYO", "SAMSUNG", "HUAWEI", "XIAOMI", "GOPRO", "DJI", "HASSELBLAD",
     "NOKIA", "MOTOROLA", "ONEPLUS", "KYOCERA", "PRAKTICA", "VIVITAR", "POLAROID", "AGFA", "AGFAPHOTO",
     "HEWLETT-PACKARD", "KENOX", "DIGIMAX", "SIGMA", "MAMIYA", "JENOPTIK", "BENQ", "TOSHIBA", "EPSON"}
)  # fmt: skip
# Words around a make and model: corporate suffixes, product lines, the camera's own label.
_CAMERA_WORDS = frozenset(
    {"CORPORATION", "CORP", "CO", "LTD", "INC", "IMAGING", "COMPANY", "ELECTRIC", "COMPUTER", "OPTICAL", "PHOTO",
     "TECHWIN", "DIGITAL", "STILL", "STILLCAMERA", "CAMERA", "DSC", "EOS", "POWERSHOT", "IXUS", "COOLPIX",
     "CYBER-SHOT", "CYBERSHOT", "ALPHA", "LUMIX", "FINEPIX", "EASYSHARE", "OPTIO", "STYLUS", "DIMAGE", "EXILIM",
     "GALAXY", "MARK", "II", "III", "IV", "ZOOM", "HERO", "MAVIC", "PHANTOM", "AG", "GMBH", "KK"}
)  # fmt: skip
# File and folder names: IMG_1234, DSC_0001, DSCN0042, P1010001, PXL_20230101_123456789,
# IMG-20230101-WA0001, 100-0012, DCIM\100MEDIA, 100CANON.
_FILE_NAME = re.compile(
    r"_?(?:[A-Z]{1,6}[_-]?)?\d{3,}(?:[_-][A-Z0-9]+)*(?:\.(?:JPE?G|TIFF?|PNG|HEIC|DNG|RAW|CR2|NEF|ARW))?"
    r"|_?(?:DSC|DSCF|DSCN|IMG|PICT|CIMG|SAM|DJI|GOPR|PXL|MVIMG)[_-]?[A-Z]?\d[A-Z0-9_-]*(?:\.[A-Z0-9]{3,4})?"
    r"|[\\/]?DCIM(?:[\\/][A-Z0-9_ -]*)*|\d{3}[A-Z_]{5}"
)
_DIGITAL_CAMERA = re.compile(r"(?:[A-Z0-9-]+ ){0,3}DIGITAL (?:STILL ?)?CAMERA")


def is_boilerplate(text: str, make: str | None = None, model: str | None = None) -> bool:
    """True when an embedded description says nothing about the picture: empty or punctuation,
    a camera's label (OLYMPUS DIGITAL CAMERA, SONY DSC, <Digimax S500>), a file or folder name
    (IMG_1234, DCIM\\100MEDIA), or only the words of the camera's make and model (those given,
    from the same file's EXIF, or a known maker's name with a model code)."""
    line = " ".join(text.split())
    upper = line.upper()
    if not re.search(r"\w", line) or upper in _BOILERPLATE_TEXTS:
        return True
    if re.fullmatch(r"<[^<>]*>", line):  # Samsung's <Digimax S500 / Kenox S500>
        return True
    if _FILE_NAME.fullmatch(upper):
        return True
    # "OLYMPUS DIGITAL CAMERA", "KODAK Digital Still Camera": a few words in capitals, or a maker.
    found = _DIGITAL_CAMERA.fullmatch(upper)
    if found and (line == upper or set(_words(upper)) - {"DIGITAL", "STILL", "CAMERA"} <= CAMERA_BRANDS):
        return True
    words = _words(upper)
    camera = set(_words(f"{make or ''} {model or ''}".upper()))
    if camera and set(words) <= camera | _CAMERA_WORDS and set(words) & camera:
        return True
    # A known maker alone or with model codes and product lines: "SONY DSC", "Canon PowerShot S95".
    return (
        bool(words)
        and words[0] in CAMERA_BRANDS
        and all(w in CAMERA_BRANDS or w in _CAMERA_WORDS or re.search(r"\d", w) for w in words[1:])
    )


def _words(upper: str) -> list[str]:
    """The words of an upper-case text, with the punctuation around them (and dots) dropped."""
    return [w for w in (raw.strip(".,;:()[]<>/\\\"'").replace(".", "") for raw in upper.split()) if w]


def image_description(exif: Mapping[int, object], xmp: bytes | str | None) -> str | None:
    """An image's own description: EXIF ImageDescription, else XMP dc:description, leaving out
    a camera's boilerplate (is_boilerplate, compared with the same file's EXIF Make and Model)."""
    make, model = _exif_text(exif.get(EXIF_MAKE)), _exif_text(exif.get(EXIF_MODEL))
    for text in (clean_caption(_exif_text(exif.get(EXIF_DESCRIPTION))), xmp_description(xmp)):
        if text and not is_boilerplate(text, make, model):
            return text
    return None


def _exif_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    return value.rstrip("\x00") if isinstance(value, str) else None


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
