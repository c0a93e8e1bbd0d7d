"""Reading one image file: hash, decode safely, orient, convert to RGB, resize for the model.

Runs in worker processes: it imports Pillow, numpy and models.transform, never torch.
Every function here returns a result or a failure; none raises for a bad file.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from models.transform import ImageTransform
from pipeline.config import DEFAULT_MAX_PIXELS
from pipeline.errors import first_line
from pipeline.ingest.captions import image_description
from pipeline.ingest.sources import open_binary, read_bytes
from storage.records import ImageRecord

pillow_heif.register_heif_opener()
# Our own pixel cap (max_pixels) replaces Pillow's, so the message can name the flag.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")  # MPO opens as JPEG
FORMATS_HELP = "JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC"
# Camera RAW files: clipdex embeds the JPEG preview most of them carry (no RAW development).
RAW_EXTENSIONS = frozenset(
    {".dng", ".nef", ".nrw", ".cr2", ".cr3", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef", ".srw", ".erf",
     ".3fr", ".iiq"}
)  # fmt: skip
JPEG_START = b"\xff\xd8\xff"
MAX_RAW_PREVIEWS = 16  # JPEG previews kept per RAW file (thumbnails, previews)
MAX_RAW_STARTS = 64  # JPEG start markers tried per RAW file, false starts included
EXIF_ORIENTATION = 0x0112
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003  # when the picture was taken
EXIF_DATETIME_DIGITIZED = 0x9004  # when it was stored (a scan's date)
EXIF_DATETIME = 0x0132  # IFD0: when the file was last written; what editors and some cameras leave alone
_SRGB = ImageCms.createProfile("sRGB")
_ROTATED = (5, 6, 7, 8)  # orientations that swap width and height


@dataclass(frozen=True)
class Decoded:
    """A decoded image: its facts, and pixels ready for the model (None when only hashed)."""

    path: str
    hash: str
    size: int
    width: int  # as displayed, after EXIF orientation
    height: int
    format: str
    taken_at: datetime | None
    description: str | None  # EXIF ImageDescription or XMP dc:description, not a camera's boilerplate
    pixels: np.ndarray | None

    def record(
        self,
        image_id: str,
        *,
        size: int,
        mtime_ns: int,
        vector: np.ndarray,
        caption: tuple[str | None, str | None, np.ndarray | None],
        caption_stamp: str | None = None,
    ) -> ImageRecord:
        """The row to store for this image: its facts, its vector, (caption, source, caption vector)
        and the stamp of the sidecar the caption came from."""
        text, source, caption_vector = caption
        return ImageRecord(
            id=image_id,
            path=self.path,
            size=size,
            mtime_ns=mtime_ns,
            hash=self.hash,
            width=self.width,
            height=self.height,
            format=self.format,
            vector=vector,
            taken_at=self.taken_at,
            description=self.description,
            caption=text,
            caption_source=source,
            caption_vector=caption_vector,
            caption_stamp=caption_stamp if source == "sidecar" else None,
        )


@dataclass(frozen=True)
class DecodeFailed:
    """A file that could not be used, with a one-line reason."""

    path: str
    reason: str


def content_hash(data: bytes) -> str:
    """The content hash stored per image (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Hashed:
    """A file's content hash, computed without decoding it."""

    path: str
    hash: str


HASH_CHUNK = 4 * 2**20  # bytes read at a time when hashing a file: a video is never read whole


def file_hash(path: str) -> tuple[str, int] | DecodeFailed:
    """(content_hash of the file's bytes, its size), read in pieces; never raises."""
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    try:
        with open_binary(path) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return DecodeFailed(path, f"cannot read: {exc.strerror or exc}")
    return digest.hexdigest(), size


def hash_file(path: str) -> Hashed | DecodeFailed:
    """Only the content hash: to recognise a moved file without decoding it."""
    result = file_hash(path)
    return result if isinstance(result, DecodeFailed) else Hashed(path, result[0])


def decode_file(path: str, transform: ImageTransform, max_pixels: int) -> Decoded | DecodeFailed:
    """Read, hash and decode one file; never raises for a bad file."""
    try:
        data = read_bytes(path)
    except OSError as exc:
        return DecodeFailed(path, f"cannot read: {exc.strerror or exc}; check that the file exists and is readable")
    return decode_bytes(path, data, transform, max_pixels)


def decode_bytes(name: str, data: bytes, transform: ImageTransform, max_pixels: int) -> Decoded | DecodeFailed:
    """Decode an image held in memory (a file's bytes, an upload); never raises for bad bytes."""
    if not data:
        return DecodeFailed(name, "empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd palettes and EXIF; we judge by results
        try:
            return _decode(name, data, transform, max_pixels)
        except UnidentifiedImageError:
            return DecodeFailed(name, f"not an image clipdex can read ({FORMATS_HELP})")
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            return DecodeFailed(name, f"corrupt or truncated image: {first_line(exc)}")
        except MemoryError:
            return DecodeFailed(name, "out of memory while decoding; lower --max-pixels or --workers")
        except Exception as exc:  # a decoder bug must not stop the batch
            return DecodeFailed(name, f"decoder error {type(exc).__name__}: {first_line(exc)}")


def raw_preview(data: bytes) -> bytes | None:
    """The largest JPEG embedded in a camera RAW file (most carry a full-size preview), or None."""
    candidates: list[tuple[int, int]] = []  # (pixels, offset)
    start = data.find(JPEG_START)
    tries = 0  # every start tried counts: a file of false starts must not cost n^2
    while start >= 0 and len(candidates) < MAX_RAW_PREVIEWS and tries < MAX_RAW_STARTS:
        tries += 1
        try:
            with Image.open(io.BytesIO(data[start:]), formats=("JPEG",)) as preview:
                candidates.append((preview.width * preview.height, start))
        except (OSError, ValueError, SyntaxError):
            pass
        start = data.find(JPEG_START, start + 3)
    # Largest first; a header that parses may still hide a broken stream, so check by decoding
    # at the smallest DCT scale (cheap) before choosing it.
    for _, offset in sorted(candidates, key=lambda c: (-c[0], -c[1])):
        try:
            with Image.open(io.BytesIO(data[offset:]), formats=("JPEG",)) as preview:
                preview.draft("RGB", (64, 64))
                preview.load()
            return data[offset:]
        except (OSError, ValueError, SyntaxError):
            continue
    return None


def thumbnail_image(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB picture of the file at most size pixels wide and high (a RAW file's preview); raises OSError."""
    return thumbnail_of(path, read_bytes(path), size, max_pixels)


def thumbnail_of(name: str, data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """thumbnail_image of bytes already read (name tells a RAW file by its extension); raises OSError,
    also for a picture over max_pixels (checked before any pixel is decoded)."""
    if os.path.splitext(name)[1].lower() in RAW_EXTENSIONS:
        data = raw_preview(data) or b""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        if image.width * image.height > max_pixels:
            raise OSError(f"{image.width}x{image.height} is over the {max_pixels:,}-pixel cap")
        image.draft("RGB", (size, size))
        small = to_rgb(ImageOps.exif_transpose(image))
    small.thumbnail((size, size))
    return small


def _decode(path: str, data: bytes, transform: ImageTransform, max_pixels: int) -> Decoded | DecodeFailed:
    raw = os.path.splitext(path)[1].lower() in RAW_EXTENSIONS
    if raw:
        preview = raw_preview(data)
        if preview is None:
            return DecodeFailed(path, "a RAW file without an embedded JPEG preview; export it to JPEG or TIFF")
        image = Image.open(io.BytesIO(preview), formats=("JPEG",))
    else:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    image_format = "RAW " + os.path.splitext(path)[1][1:].upper() if raw else str(image.format)
    width, height = image.size
    if width * height > max_pixels:
        return DecodeFailed(
            path,
            f"{width}x{height} is {width * height / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP cap "
            "(a decompression bomb?); raise it with --max-pixels",
        )
    exif = image.getexif()
    orientation = exif.get(EXIF_ORIENTATION, 1)
    description = image_description(exif, image.info.get("xmp"))  # camera boilerplate left out
    taken_at = _taken_at(exif)
    if image.format in ("JPEG", "MPO"):
        # Decode at the smallest DCT scale that still covers the model input: 4-8x less work.
        shown_w, shown_h = (height, width) if orientation in _ROTATED else (width, height)
        draft_w, draft_h = transform.draft_size(shown_w, shown_h)
        image.draft(None, (draft_h, draft_w) if orientation in _ROTATED else (draft_w, draft_h))
    image.load()
    oriented: Image.Image = ImageOps.exif_transpose(image) if orientation != 1 else image
    shown = (height, width) if orientation in _ROTATED else (width, height)
    pixels = transform.to_pixels(to_rgb(oriented))
    return Decoded(
        path=path,
        hash=content_hash(data),
        size=len(data),
        width=shown[0],
        height=shown[1],
        format=image_format,
        taken_at=taken_at,
        description=description,
        pixels=pixels,
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with alpha flattened onto white, 16-bit scaled (not clipped), CMYK through its ICC profile."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image).astype(np.float64)
        # I;16 is 16-bit by definition; for I and F, guess from the values.
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        gray = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "CMYK" and image.info.get("icc_profile"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion
    return image.convert("RGB")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _taken_at(exif: Image.Exif) -> datetime | None:
    """When the picture was taken: EXIF DateTimeOriginal, else DateTimeDigitized, else IFD0 DateTime
    (all that many scanners, editors and older cameras write)."""
    ifd = exif.get_ifd(EXIF_IFD)
    for value in (ifd.get(EXIF_DATETIME_ORIGINAL), ifd.get(EXIF_DATETIME_DIGITIZED), exif.get(EXIF_DATETIME)):
        taken = _exif_datetime(value)
        if taken is not None:
            return taken
    return None


def _exif_datetime(value: object) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        return datetime.strptime(text.strip().rstrip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
