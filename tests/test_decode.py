"""Decoding one file: formats, orientation, metadata, colour conversion, failures, hashing, JPEG drafts."""

from __future__ import annotations

import hashlib
import io
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.transform import ImageTransform
from pipeline.ingest.decode import Decoded, DecodeFailed, Hashed, decode_file, hash_file, to_rgb
from tests import corpus

SMALL = ImageTransform(size=(32, 32))
CAP = 200_000_000
NOT_AN_IMAGE = "not an image clipdex can read (JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC)"

# corpus.good_images name -> (format, width, height) as displayed
GOOD = {
    "jpeg": ("JPEG", 64, 48),
    "jpeg_exif_rot": ("JPEG", 32, 64),
    "png_rgba": ("PNG", 48, 48),
    "png_palette": ("PNG", 40, 40),
    "png_palette_transparency": ("PNG", 40, 40),
    "png_16bit_gray": ("PNG", 40, 40),
    "png_gray": ("PNG", 40, 40),
    "jpeg_cmyk": ("JPEG", 40, 40),
    "webp": ("WEBP", 48, 48),
    "gif_animated": ("GIF", 40, 40),
    "bmp": ("BMP", 48, 40),
    "tiff": ("TIFF", 48, 40),
    "heic": ("HEIF", 64, 64),
    "no_extension": ("PNG", 40, 32),
    "wrong_extension": ("PNG", 40, 32),
    "unicode_name": ("JPEG", 56, 40),
    "xmp_description": ("JPEG", 64, 40),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return corpus.good_images(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return corpus.bad_files(tmp_path_factory.mktemp("bad"))


def _decoded(path: Path, transform: ImageTransform = SMALL, max_pixels: int = CAP) -> Decoded:
    result = decode_file(str(path), transform, max_pixels)
    assert isinstance(result, Decoded), result
    return result


def _failed(path: Path, max_pixels: int = CAP) -> DecodeFailed:
    result = decode_file(str(path), SMALL, max_pixels)
    assert isinstance(result, DecodeFailed), result
    return result


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        converted = to_rgb(image)
    assert converted.mode == "RGB"
    return np.asarray(converted)


# ---------------------------------------------------------------- good images


def test_corpus_covers_every_variant(good: dict[str, Path]) -> None:
    assert set(good) <= set(GOOD)
    assert set(GOOD) - set(good) <= {"heic"}  # HEIC only where pillow_heif can encode


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_image_decodes(good: dict[str, Path], name: str) -> None:
    if name not in good:
        pytest.skip(f"{name} could not be written here")
    path = good[name]
    data = path.read_bytes()

    decoded = _decoded(path)

    assert (decoded.format, decoded.width, decoded.height) == GOOD[name]
    assert decoded.path == str(path)
    assert decoded.size == len(data)
    assert decoded.hash == hashlib.blake2b(data, digest_size=16).hexdigest()
    assert decoded.pixels is not None
    assert decoded.pixels.shape == (32, 32, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags.c_contiguous


def test_plain_jpeg_has_no_metadata(good: dict[str, Path]) -> None:
    decoded = _decoded(good["jpeg"])

    assert (decoded.taken_at, decoded.description) == (None, None)


def test_exif_rotated_jpeg(good: dict[str, Path]) -> None:
    decoded = _decoded(good["jpeg_exif_rot"])

    assert (decoded.width, decoded.height) == (32, 64)
    assert decoded.taken_at == datetime(2024, 5, 6, 7, 8, 9)
    assert decoded.description == corpus.EXIF_DESCRIPTION == "a rotated test photo"


def test_exif_rotation_turns_the_pixels(good: dict[str, Path]) -> None:
    # Stored 64x32 with a yellow block at the top left; orientation 6 shows it at the top right.
    decoded = _decoded(good["jpeg_exif_rot"], ImageTransform(size=(64, 32), resize_mode="squash"))

    assert decoded.pixels is not None
    pixels = decoded.pixels.astype(int)
    top_right = pixels[0:8, 24:32].mean(axis=(0, 1))
    top_left = pixels[0:8, 0:8].mean(axis=(0, 1))
    assert top_right[0] > 200
    assert top_right[1] > 200
    assert top_right[2] < 60
    assert not (top_left[0] > 200 and top_left[2] < 60)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({0x0132: "2020:01:10 12:34:56"}, datetime(2020, 1, 10, 12, 34, 56)),  # IFD0 DateTime only (a scanner)
        ({0x0132: "2020:01:10 12:34:56", 0x9004: "2019:02:03 04:05:06"}, datetime(2019, 2, 3, 4, 5, 6)),
        ({0x0132: "2020:01:10 12:34:56", 0x9003: "2018:01:01 00:00:01"}, datetime(2018, 1, 1, 0, 0, 1)),
        ({0x0132: "    :  :     :  :  "}, None),  # a camera's blank
    ],
)
def test_the_capture_date_falls_back_to_the_digitized_and_file_dates(
    tmp_path: Path, tags: dict[int, str], expected: datetime | None
) -> None:
    exif = Image.Exif()
    for tag, value in tags.items():
        if tag == 0x0132:
            exif[tag] = value
        else:
            exif.get_ifd(0x8769)[tag] = value
    path = tmp_path / "dated.jpg"
    Image.new("RGB", (40, 30), (90, 120, 200)).save(path, exif=exif)
    assert _decoded(path).taken_at == expected


def test_xmp_description_is_read(good: dict[str, Path]) -> None:
    decoded = _decoded(good["xmp_description"])

    assert decoded.description == corpus.XMP_DESCRIPTION == "sunset over the sea"
    assert decoded.taken_at is None


def test_rgba_transparent_area_becomes_white(good: dict[str, Path]) -> None:
    rgb = _rgb(good["png_rgba"])
    with Image.open(good["png_rgba"]) as image:
        original = np.asarray(image)

    assert rgb.shape == (48, 48, 3)
    assert (rgb[:, :24] == 255).all()  # transparent red becomes white, not red
    assert (rgb[:, 24:] == original[:, 24:, :3]).all()  # opaque pixels unchanged


def test_rgba_becomes_white_in_decoded_pixels(good: dict[str, Path]) -> None:
    decoded = _decoded(good["png_rgba"], ImageTransform(size=(48, 48)))

    assert decoded.pixels is not None
    assert (decoded.pixels[:, :20] == 255).all()


def test_16bit_grayscale_is_scaled_not_clipped(good: dict[str, Path]) -> None:
    with Image.open(good["png_16bit_gray"]) as image:
        assert image.mode.startswith("I")
    rgb = _rgb(good["png_16bit_gray"]).astype(int)

    assert rgb.shape == (40, 40, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all()
    assert (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb.min() <= 2
    assert rgb.max() >= 253
    assert 110 < rgb.mean() < 145  # a clipped ramp would be almost all 255
    row = rgb[0, :, 0]
    assert (np.diff(row) >= 0).all()  # still a ramp


def test_16bit_grayscale_decoded_pixels_are_not_clipped(good: dict[str, Path]) -> None:
    decoded = _decoded(good["png_16bit_gray"], ImageTransform(size=(40, 40)))

    assert decoded.pixels is not None
    assert decoded.pixels.mean() < 200
    assert decoded.pixels.min() <= 5


def test_palette_with_transparency_is_flattened_onto_white(good: dict[str, Path]) -> None:
    with Image.open(good["png_palette_transparency"]) as image:
        assert image.mode == "P"
        assert image.info["transparency"] == 0
        indices = np.asarray(image)
        palette = np.array(image.getpalette()[:12], dtype=np.uint8).reshape(4, 3)
    rgb = _rgb(good["png_palette_transparency"])

    expected = palette[indices]
    expected[indices == 0] = 255
    assert (indices == 0).any()
    assert (rgb == expected).all()


def test_palette_without_transparency_keeps_its_colours(good: dict[str, Path]) -> None:
    with Image.open(good["png_palette"]) as image:
        indices = np.asarray(image)
        palette = np.array(image.getpalette()[:12], dtype=np.uint8).reshape(4, 3)

    assert (_rgb(good["png_palette"]) == palette[indices]).all()


def test_cmyk_converts_to_rgb(good: dict[str, Path]) -> None:
    with Image.open(good["jpeg_cmyk"]) as image:
        assert image.mode == "CMYK"
    rgb = _rgb(good["jpeg_cmyk"]).astype(float)

    red, green, blue = rgb.mean(axis=(0, 1))
    assert blue > green > red  # the pattern's base colour is (60, 180, 240)
    assert 20 < red < 90
    assert 110 < green < 170
    assert 150 < blue < 220


def test_cmyk_with_broken_icc_profile_falls_back(tmp_path: Path, good: dict[str, Path]) -> None:
    with Image.open(good["jpeg_cmyk"]) as image:
        image.load()
        path = tmp_path / "broken_profile.jpg"
        image.save(path, format="JPEG", quality=90, icc_profile=b"not an icc profile")
    with Image.open(path) as image:
        assert image.info["icc_profile"] == b"not an icc profile"

    assert np.abs(_rgb(path).astype(int) - _rgb(good["jpeg_cmyk"]).astype(int)).mean() < 3
    assert _decoded(path).pixels is not None


def test_to_rgb_returns_rgb_unchanged(good: dict[str, Path]) -> None:
    with Image.open(good["bmp"]) as image:
        image.load()
        assert to_rgb(image) is image


def test_gray_becomes_three_equal_channels(good: dict[str, Path]) -> None:
    rgb = _rgb(good["png_gray"])

    assert (rgb[..., 0] == rgb[..., 1]).all()
    assert (rgb[..., 0] == rgb[..., 2]).all()


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("empty", "empty file (0 bytes)"),
        ("text_as_jpg", NOT_AN_IMAGE),
        ("random_bytes", NOT_AN_IMAGE),
        ("bad_header_png", NOT_AN_IMAGE),
        (
            "bomb",
            "20000x20000 is 400.0 MP, over the 200 MP cap (a decompression bomb?); raise it with --max-pixels",
        ),
    ],
)
def test_bad_file_reason(bad: dict[str, Path], name: str, expected: str) -> None:
    failed = _failed(bad[name])

    assert failed == DecodeFailed(str(bad[name]), expected)


def test_truncated_jpeg_reason(bad: dict[str, Path]) -> None:
    reason = _failed(bad["truncated_jpeg"]).reason

    assert reason.startswith("corrupt or truncated image: ")
    assert "\n" not in reason


def test_every_bad_file_fails_with_one_line(bad: dict[str, Path]) -> None:
    for name, path in bad.items():
        failed = _failed(path)
        assert failed.path == str(path), name
        assert failed.reason, name
        assert "\n" not in failed.reason, name


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jpg"

    assert _failed(missing) == DecodeFailed(
        str(missing), "cannot read: No such file or directory; check that the file exists and is readable"
    )


def test_folder_instead_of_file(tmp_path: Path) -> None:
    assert _failed(tmp_path).reason.startswith("cannot read: Is a directory")


def test_small_pixel_cap_refuses_a_normal_image(good: dict[str, Path]) -> None:
    failed = _failed(good["jpeg"], max_pixels=64 * 48 - 1)

    assert failed.reason.startswith("64x48 is ")
    assert failed.reason.endswith("(a decompression bomb?); raise it with --max-pixels")


def test_pixel_cap_is_inclusive(good: dict[str, Path]) -> None:
    assert _decoded(good["jpeg"], max_pixels=64 * 48).width == 64


def test_bomb_refusal_names_the_cap_in_use(bad: dict[str, Path]) -> None:
    failed = _failed(bad["bomb"], max_pixels=300_000_000)

    assert "over the 300 MP cap" in failed.reason


# ---------------------------------------------------------------- hashing


def test_hash_file_matches_decode(good: dict[str, Path]) -> None:
    for name, path in good.items():
        hashed = hash_file(str(path))
        assert hashed == Hashed(str(path), _decoded(path).hash), name


def test_hash_file_does_not_decode(bad: dict[str, Path]) -> None:
    path = bad["truncated_jpeg"]

    assert hash_file(str(path)) == Hashed(str(path), hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest())


def test_hash_of_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jpg"

    assert hash_file(str(missing)) == DecodeFailed(str(missing), "cannot read: No such file or directory")


def test_same_bytes_same_hash(tmp_path: Path, good: dict[str, Path]) -> None:
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(good["jpeg"].read_bytes())

    assert _decoded(copy).hash == _decoded(good["jpeg"]).hash
    assert _decoded(copy).hash != _decoded(good["unicode_name"]).hash


# ---------------------------------------------------------------- JPEG draft decoding


def test_jpeg_draft_decode_is_close_to_full_decode(tmp_path: Path) -> None:
    path = corpus.large_jpeg(tmp_path / "large.jpg", megapixels=2.0)
    transform = ImageTransform()  # 224 x 224

    drafted = _decoded(path, transform)
    with Image.open(path) as image:
        image.load()
        full_size = image.size
        full = transform.to_pixels(to_rgb(image))

    assert drafted.pixels is not None
    assert drafted.pixels.shape == full.shape == (224, 224, 3)
    assert (drafted.width, drafted.height) == full_size
    assert np.abs(drafted.pixels.astype(float) - full.astype(float)).mean() < 3


MODES = st.sampled_from(["shortest", "longest", "squash"])
SIZES = st.sampled_from([(32, 32), (224, 224), (24, 40), (40, 24)])


def _resized(transform: ImageTransform, width: int, height: int) -> tuple[int, int]:
    """The (width, height) that to_pixels resizes a full image to, before cropping or padding."""
    th, tw = transform.size
    if transform.resize_mode == "squash":
        return tw, th
    ratios = (th / height, tw / width)
    scale = min(ratios) if transform.resize_mode == "longest" else max(ratios)
    return math.floor(width * scale), math.floor(height * scale)


@settings(max_examples=300, deadline=None, database=None)
@given(width=st.integers(1, 10_000), height=st.integers(1, 10_000), mode=MODES, size=SIZES)
def test_draft_size_never_below_what_the_transform_needs(
    width: int, height: int, mode: str, size: tuple[int, int]
) -> None:
    transform = ImageTransform(size=size, resize_mode=mode)
    th, tw = size

    dw, dh = transform.draft_size(width, height)

    assert 1 <= dw <= width
    assert 1 <= dh <= height
    need_w, need_h = _resized(transform, width, height)
    assert dw >= min(width, need_w)
    assert dh >= min(height, need_h)
    if mode == "shortest" and width >= tw and height >= th:
        assert max(th / dh, tw / dw) <= 1


@settings(max_examples=60, deadline=None, database=None)
@given(width=st.integers(1, 10_000), height=st.integers(1, 10_000), mode=MODES, size=SIZES)
def test_pixels_from_draft_size_have_the_model_shape(width: int, height: int, mode: str, size: tuple[int, int]) -> None:
    assume(max(width, height) <= 20 * min(width, height))  # strips resize to huge images, as in open_clip
    transform = ImageTransform(size=size, resize_mode=mode)
    dw, dh = transform.draft_size(width, height)

    pixels = transform.to_pixels(Image.new("RGB", (dw, dh), (10, 20, 30)))

    assert pixels.shape == (size[0], size[1], 3)
    assert pixels.dtype == np.uint8


def _fake_raw(path: Path, previews: list[tuple[int, int]]) -> Path:
    """A TIFF-like RAW container: a header, sensor-like bytes, then embedded JPEG previews."""
    parts = [b"II*\x00\x08\x00\x00\x00", bytes(range(256)) * 40, b"\xff\xd8\xff\x00 not a real jpeg"]
    for i, size in enumerate(previews):
        buffer = io.BytesIO()
        Image.new("RGB", size, (40 * i, 120, 200)).save(buffer, "JPEG")
        parts += [buffer.getvalue(), bytes(100)]
    path.write_bytes(b"".join(parts))
    return path


def test_raw_files_are_read_through_their_largest_embedded_preview(tmp_path: Path) -> None:
    raw = _fake_raw(tmp_path / "DSC_0001.NEF", [(32, 24), (160, 120), (64, 48)])
    result = decode_file(str(raw), ImageTransform(size=(32, 32)), 10**9)
    assert isinstance(result, Decoded), result
    assert (result.width, result.height, result.format) == (160, 120, "RAW NEF")
    bare = tmp_path / "empty.dng"
    bare.write_bytes(b"II*\x00" + bytes(5000))
    failed = decode_file(str(bare), ImageTransform(size=(32, 32)), 10**9)
    assert isinstance(failed, DecodeFailed)
    assert failed.reason == "a RAW file without an embedded JPEG preview; export it to JPEG or TIFF"
