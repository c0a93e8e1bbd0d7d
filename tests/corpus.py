"""Deterministic on-disk image corpus (good, bad and non-image files) for clipdex tests."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import Image

RGB = tuple[int, int, int]
U8Array = npt.NDArray[np.uint8]

XMP_DESCRIPTION = "sunset over the sea"
EXIF_DESCRIPTION = "a rotated test photo"
EXIF_DATETIME_ORIGINAL = "2024:05:06 07:08:09"
UNICODE_NAME = "café photo ü 日本.jpg"
BOMB_SIZE = (20000, 20000)

_TAG_ORIENTATION = 274
_TAG_IMAGE_DESCRIPTION = 270
_TAG_DATETIME_ORIGINAL = 36867
_IFD_EXIF = 0x8769


def _rng(seed: int) -> np.random.Generator:
    """Return a seeded numpy random generator."""
    return np.random.default_rng(seed)


def _pattern_array(size: tuple[int, int], seed: int, base: RGB) -> U8Array:
    """Build an HxWx3 uint8 array: base colour gradient, seed-specific stripes, and noise."""
    width, height = size
    rng = _rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    gx = xs / max(width - 1, 1)
    gy = ys / max(height - 1, 1)
    period = 4.0 + float(seed % 7) * 2.0
    angle = float(seed % 12) * math.pi / 12.0
    stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2.0 * math.pi / period)
    out = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):
        ramp = gx if c % 2 == 0 else gy
        out[..., c] = base[c] * (0.55 + 0.45 * ramp) + 35.0 * stripes * (1.0 if c == seed % 3 else 0.3)
    out += rng.normal(0.0, 12.0, size=out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _pattern_rgb(size: tuple[int, int], seed: int, base: RGB) -> Image.Image:
    """Return an RGB Pillow image of the seeded pattern."""
    return Image.fromarray(_pattern_array(size, seed, base))


def _xmp_packet(description: str) -> bytes:
    """Return a standard XMP packet carrying a dc:description."""
    xml = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
        "   <dc:description>\n"
        "    <rdf:Alt>\n"
        f'     <rdf:li xml:lang="x-default">{description}</rdf:li>\n'
        "    </rdf:Alt>\n"
        "   </dc:description>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return xml.encode("utf-8")


def _save_jpeg_exif_rot(path: Path) -> None:
    """Save a 64x32 JPEG with Orientation=6, ImageDescription and DateTimeOriginal."""
    im = _pattern_rgb((64, 32), 2, (40, 200, 90))
    # Bright marker in the top-left corner so tests can check the rotation direction.
    im.paste((255, 255, 0), (0, 0, 12, 8))
    exif = Image.Exif()
    exif[_TAG_ORIENTATION] = 6
    exif[_TAG_IMAGE_DESCRIPTION] = EXIF_DESCRIPTION
    exif.get_ifd(_IFD_EXIF)[_TAG_DATETIME_ORIGINAL] = EXIF_DATETIME_ORIGINAL
    im.save(path, format="JPEG", quality=92, exif=exif.tobytes())


def _save_png_rgba(path: Path) -> None:
    """Save a 48x48 RGBA PNG whose left half is transparent red and right half opaque."""
    arr = np.zeros((48, 48, 4), dtype=np.uint8)
    arr[:, :24, 0] = 255  # red hidden under alpha 0
    arr[:, :24, 3] = 0
    arr[:, 24:, :3] = _pattern_array((24, 48), 3, (30, 60, 220))
    arr[:, 24:, 3] = 255
    Image.fromarray(arr).save(path, format="PNG")


def _palette_image(size: tuple[int, int], seed: int, colors: list[RGB]) -> Image.Image:
    """Return a P-mode image with concentric-ring indices over the given palette."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    rings = (np.hypot(xs - width / 2, ys - height / 2) // (3 + seed % 3)).astype(np.int64)
    idx = (rings % len(colors)).astype(np.uint8)
    im = Image.fromarray(idx).convert("P")
    flat: list[int] = [v for rgb in colors for v in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def _save_png_16bit_gray(path: Path) -> None:
    """Save a 40x40 I;16 PNG with a horizontal ramp spanning 0..65535."""
    ramp = np.linspace(0, 65535, 40).round().astype(np.uint16)
    arr = np.ascontiguousarray(np.tile(ramp, (40, 1)))
    im = Image.fromarray(arr)
    if im.mode != "I;16":
        raise RuntimeError(f"expected I;16 image, got {im.mode}")
    im.save(path, format="PNG")


def _save_gif_animated(path: Path) -> None:
    """Save a 3-frame animated GIF: red, green, blue (each with a small white square)."""
    frames: list[Image.Image] = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        frame = Image.new("RGB", (40, 40), color)
        frame.paste((255, 255, 255), (4 + 10 * i, 4, 12 + 10 * i, 12))
        frames.append(frame)
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
    )


def _try_save_heic(path: Path) -> bool:
    """Save a 64x64 HEIC via pillow_heif; return False if unsupported."""
    try:
        pillow_heif.register_heif_opener()
        _pattern_rgb((64, 64), 13, (150, 90, 200)).save(path, format="HEIF")
    except (ImportError, OSError, ValueError, RuntimeError, KeyError):
        path.unlink(missing_ok=True)
        return False
    return path.is_file() and path.stat().st_size > 0


def good_images(folder: Path) -> dict[str, Path]:
    """Write one valid image per supported variant into folder and return name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    p = folder / "photo.jpg"
    _pattern_rgb((64, 48), 1, (200, 30, 70)).save(p, format="JPEG", quality=90)
    out["jpeg"] = p

    p = folder / "rotated.jpg"
    _save_jpeg_exif_rot(p)
    out["jpeg_exif_rot"] = p

    p = folder / "transparent.png"
    _save_png_rgba(p)
    out["png_rgba"] = p

    p = folder / "palette.png"
    colors: list[RGB] = [(255, 0, 255), (0, 128, 128), (250, 250, 0), (20, 20, 20)]
    _palette_image((40, 40), 4, colors).save(p, format="PNG")
    out["png_palette"] = p

    p = folder / "palette_transparency.png"
    colors = [(0, 0, 0), (255, 128, 0), (0, 200, 255), (128, 0, 64)]
    _palette_image((40, 40), 5, colors).save(p, format="PNG", transparency=0)
    out["png_palette_transparency"] = p

    p = folder / "gray16.png"
    _save_png_16bit_gray(p)
    out["png_16bit_gray"] = p

    p = folder / "gray.png"
    _pattern_rgb((40, 40), 6, (200, 200, 200)).convert("L").save(p, format="PNG")
    out["png_gray"] = p

    p = folder / "cmyk.jpg"
    _pattern_rgb((40, 40), 7, (60, 180, 240)).convert("CMYK").save(p, format="JPEG", quality=90)
    out["jpeg_cmyk"] = p

    p = folder / "image.webp"
    _pattern_rgb((48, 48), 8, (120, 240, 120)).save(p, format="WEBP", quality=90)
    out["webp"] = p

    p = folder / "animated.gif"
    _save_gif_animated(p)
    out["gif_animated"] = p

    p = folder / "bitmap.bmp"
    _pattern_rgb((48, 40), 9, (90, 40, 160)).save(p, format="BMP")
    out["bmp"] = p

    p = folder / "scan.tiff"
    _pattern_rgb((48, 40), 10, (200, 60, 120)).save(p, format="TIFF")
    out["tiff"] = p

    p = folder / "phone.heic"
    if _try_save_heic(p):
        out["heic"] = p

    p = folder / "noext_image"
    _pattern_rgb((40, 32), 11, (10, 90, 40)).save(p, format="PNG")
    out["no_extension"] = p

    p = folder / "actually_png.jpg"
    _pattern_rgb((40, 32), 12, (240, 200, 160)).save(p, format="PNG")
    out["wrong_extension"] = p

    p = folder / UNICODE_NAME
    _pattern_rgb((56, 40), 14, (100, 60, 20)).save(p, format="JPEG", quality=90)
    out["unicode_name"] = p

    p = folder / "sunset.jpg"
    _pattern_rgb((64, 40), 15, (250, 110, 30)).save(p, format="JPEG", quality=90, xmp=_xmp_packet(XMP_DESCRIPTION))
    out["xmp_description"] = p

    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """Return one PNG chunk with length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_bomb_png(path: Path, size: tuple[int, int]) -> None:
    """Write a 1-bit all-black grayscale PNG of the given size, streaming the compression."""
    width, height = size
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    chunks: list[bytes] = []
    batch = row * 256
    full, rest = divmod(height, 256)
    for _ in range(full):
        chunks.append(comp.compress(batch))
    chunks.append(comp.compress(row * rest))
    chunks.append(comp.flush())
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(chunks))
        + _png_chunk(b"IEND", b"")
    )
    path.write_bytes(data)


def bad_files(folder: Path) -> dict[str, Path]:
    """Write files that look like images but must fail to decode; return name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(1234)
    out: dict[str, Path] = {}

    full = folder / "_full_for_truncation.jpg"
    _pattern_rgb((96, 96), 21, (180, 180, 60)).save(full, format="JPEG", quality=95)
    data = full.read_bytes()
    full.unlink()
    p = folder / "truncated.jpg"
    p.write_bytes(data[: int(len(data) * 0.4)])
    out["truncated_jpeg"] = p

    p = folder / "empty.jpg"
    p.write_bytes(b"")
    out["empty"] = p

    p = folder / "notes.jpg"
    p.write_text("These are my notes, not a picture.\nÜnïcödé line too.\n", encoding="utf-8")
    out["text_as_jpg"] = p

    p = folder / "noise.png"
    p.write_bytes(rng.integers(0, 256, size=2000, dtype=np.uint8).tobytes())
    out["random_bytes"] = p

    p = folder / "bomb.png"
    _write_bomb_png(p, BOMB_SIZE)
    out["bomb"] = p

    p = folder / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, size=500, dtype=np.uint8).tobytes())
    out["bad_header_png"] = p

    return out


def non_images(folder: Path) -> dict[str, Path]:
    """Write non-image files without image extensions; return file name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(99)
    out: dict[str, Path] = {}

    p = folder / "readme.txt"
    p.write_text("This folder holds test photos.\n", encoding="utf-8")
    out["readme.txt"] = p

    p = folder / "data.json"
    p.write_text('{"name": "clipdex", "images": [1, 2, 3]}\n', encoding="utf-8")
    out["data.json"] = p

    p = folder / "clip.mp4"
    header = b"\x00\x00\x00\x18ftypmp42" + b"\x00\x00\x00\x00" + b"isommp42"
    p.write_bytes(header + rng.integers(0, 256, size=256, dtype=np.uint8).tobytes())
    out["clip.mp4"] = p

    return out


def solid_jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Path:
    """Write a single-colour RGB JPEG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG", quality=95)
    return path


def pattern_image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """Write a seeded random-noise RGB image in the format implied by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def large_jpeg(path: Path, megapixels: float = 12.0, seed: int = 0) -> Path:
    """Write a smooth-gradient plus blurred-noise 4:3 JPEG of about the given megapixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height = max(3, round(math.sqrt(megapixels * 1e6 * 3.0 / 4.0)))
    width = max(4, round(height * 4 / 3))
    rng = _rng(seed)
    # Low-res gradient + noise, upscaled bicubically => smooth gradients and blurred blobs.
    sw, sh = max(4, width // 24), max(3, height // 24)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    small = np.empty((sh, sw, 3), dtype=np.float32)
    small[..., 0] = 40 + 180 * xs / (sw - 1)
    small[..., 1] = 60 + 150 * ys / (sh - 1)
    small[..., 2] = 200 - 120 * (xs + ys) / (sw + sh - 2)
    small += rng.normal(0.0, 25.0, size=small.shape).astype(np.float32)
    im = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    # Mild per-pixel grain so the JPEG is not unrealistically compressible.
    grain = rng.integers(-4, 5, size=(height, width, 1), dtype=np.int16)
    arr = np.asarray(im, dtype=np.int16) + grain
    del im
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path
