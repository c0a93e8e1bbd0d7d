"""Captions: clean_caption, sidecar files, XMP descriptions and CSV / JSON Lines manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.errors import InputNotFound, ManifestError
from pipeline.ingest.captions import (
    MAX_CAPTION_CHARS,
    clean_caption,
    image_description,
    is_boilerplate,
    read_manifest,
    read_sidecar,
    xmp_description,
)
from tests import corpus

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- clean_caption


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a dog on the beach", "a dog on the beach"),
        ("  a   dog\ton the\u00a0beach  ", "a dog on the beach"),
        ("\n\n   \t\nfirst line\nsecond line", "first line"),
        ("first\r\nsecond", "first"),
        ("nul\x00 bytes\x00", "nul bytes"),
        ("x" * (MAX_CAPTION_CHARS + 500), "x" * MAX_CAPTION_CHARS),
        ("", None),
        (None, None),
        ("   \n\t\r\n  ", None),
        ("\x00\n\x00", None),
        ("\ufeffa dog", "a dog"),
        ("\ufeff", None),
    ],
)
def test_clean_caption(text: str | None, expected: str | None) -> None:
    assert clean_caption(text) == expected


@PROPERTY
@given(st.text())
@example("a" * MAX_CAPTION_CHARS + "\nb")
@example("\u2028x\u2029y\x85z\x0bw\x0c")
def test_clean_caption_is_one_bounded_line(text: str) -> None:
    cleaned = clean_caption(text)
    if cleaned is not None:
        assert cleaned
        assert "\n" not in cleaned
        assert "\r" not in cleaned
        assert len(cleaned) <= MAX_CAPTION_CHARS
        assert cleaned.lstrip() == cleaned


# ---------------------------------------------------------------- sidecars


def test_read_sidecar_takes_the_first_line(tmp_path: Path) -> None:
    sidecar = tmp_path / "IMG_1.txt"
    sidecar.write_text("\n  A dog   on the beach \nshot in 2019\n", encoding="utf-8")

    assert read_sidecar(str(sidecar)) == "A dog on the beach"


def test_read_sidecar_replaces_invalid_utf8(tmp_path: Path) -> None:
    sidecar = tmp_path / "IMG_1.txt"
    sidecar.write_bytes(b"caf\xe9 au lait")

    assert read_sidecar(str(sidecar)) == "caf\ufffd au lait"


def test_read_sidecar_of_empty_or_missing_file_is_none(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")

    assert read_sidecar(str(empty)) is None
    assert read_sidecar(str(tmp_path / "missing.txt")) is None
    assert read_sidecar(str(tmp_path)) is None  # a folder


def test_read_sidecar_drops_a_byte_order_mark(tmp_path: Path) -> None:
    sidecar = tmp_path / "IMG_1.txt"
    sidecar.write_bytes("\ufeffa dog".encode())

    assert read_sidecar(str(sidecar)) == "a dog"


# ---------------------------------------------------------------- XMP


@pytest.fixture(scope="module")
def xmp_packet(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The XMP packet of the corpus image that carries a dc:description, as Pillow reads it."""
    path = corpus.good_images(tmp_path_factory.mktemp("xmp"))["xmp_description"]
    with Image.open(path) as image:
        packet = image.info["xmp"]
    assert isinstance(packet, bytes)
    return packet


def test_xmp_description_from_corpus_packet(xmp_packet: bytes) -> None:
    assert xmp_description(xmp_packet) == corpus.XMP_DESCRIPTION
    assert xmp_description(xmp_packet.decode("utf-8")) == corpus.XMP_DESCRIPTION


def test_xmp_description_unescapes_entities_and_cleans(xmp_packet: bytes) -> None:
    packet = xmp_packet.replace(corpus.XMP_DESCRIPTION.encode(), b"\n  fish &amp; chips &lt;3 &#233;t&#xE9;\n more")

    assert xmp_description(packet) == "fish & chips <3 \u00e9t\u00e9"


def test_xmp_description_does_not_expand_entities_declared_in_the_packet() -> None:
    # "Billion laughs": with an XML parser this would expand to gigabytes.
    laughs = b'<!DOCTYPE x [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    packet = laughs + b"<dc:description><rdf:Alt><rdf:li>&lol2;</rdf:li></rdf:Alt></dc:description>"

    assert xmp_description(packet) == "&lol2;"


@pytest.mark.parametrize(
    "packet",
    [
        None,
        b"",
        "",
        b"\x00" * 64,
        b"\xff\xfe\xfd garbage \x80\x81",
        b"<x:xmpmeta><rdf:RDF></rdf:RDF></x:xmpmeta>",
        b"<dc:description>",
        b"<dc:description><rdf:Alt><rdf:li>never closed",
        b"<rdf:li>no description</rdf:li>",
        b"<dc:title><rdf:Alt><rdf:li>a title</rdf:li></rdf:Alt></dc:title>",
        b"<dc:description><rdf:Alt><rdf:li>   </rdf:li></rdf:Alt></dc:description>",
        b"<dc:description><rdf:Alt><rdf:li></rdf:li></rdf:Alt></dc:description>",
    ],
)
def test_xmp_description_of_garbage_is_none(packet: bytes | str | None) -> None:
    assert xmp_description(packet) is None


def test_xmp_description_with_invalid_utf8_is_replaced() -> None:
    packet = b"<dc:description><rdf:Alt><rdf:li>caf\xe9</rdf:li></rdf:Alt></dc:description>"

    assert xmp_description(packet) == "caf\ufffd"


@PROPERTY
@given(st.binary(max_size=2000) | st.text(max_size=500))
def test_xmp_description_never_raises(packet: bytes | str) -> None:
    result = xmp_description(packet)
    assert result is None or (isinstance(result, str) and 0 < len(result) <= MAX_CAPTION_CHARS)


def test_xmp_description_is_fast_on_hostile_packet() -> None:
    # Run apart so that a regression (a backtracking regex took ~20 s on 19 KB) cannot hang the suite.
    code = (
        "from pipeline.ingest.captions import xmp_description\n"
        "assert xmp_description(b'<dc:description><rdf:li>' * 2700) is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=2, check=False)

    assert done.returncode == 0


# ---------------------------------------------------------------- manifests


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_header(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", 'path,caption\na.jpg,a dog\nsub/b.jpg,"a cat, asleep"\n')

    assert read_manifest(manifest) == {
        str(tmp_path / "a.jpg"): "a dog",
        str(tmp_path / "sub" / "b.jpg"): "a cat, asleep",
    }


def test_csv_header_is_case_insensitive_and_in_any_order(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "id,Caption, PATH \n1,a dog,a.jpg\n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "a dog"}


def test_csv_header_accepts_text_for_caption(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "path,text\na.jpg,a dog\n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "a dog"}


def test_csv_without_header(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "a.jpg,a dog\n\n  b.jpg  ,  a   cat  \n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "a dog", str(tmp_path / "b.jpg"): "a cat"}


def test_csv_with_windows_line_endings_and_bom(tmp_path: Path) -> None:
    manifest = tmp_path / "captions.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,caption\r\na.jpg,a dog\r\n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "a dog"}


def test_csv_rows_with_blank_caption_are_dropped(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "path,caption\na.jpg,\nb.jpg,   \nc.jpg,ok\n,\n")

    assert read_manifest(manifest) == {str(tmp_path / "c.jpg"): "ok"}


def test_json_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"path": "a.jpg", "caption": "a dog"}),
        "",
        json.dumps({"path": "sub/b.jpg", "text": "a cat", "extra": 1}),
        json.dumps({"path": "c.jpg", "caption": None}),
        json.dumps({"path": "d.jpg"}),
        json.dumps({"path": "e.jpg", "caption": "caf\u00e9 \u65e5\u672c"}, ensure_ascii=False),
    ]
    manifest = _write(tmp_path / "captions.jsonl", "\n".join(lines) + "\n")

    assert read_manifest(manifest) == {
        str(tmp_path / "a.jpg"): "a dog",
        str(tmp_path / "sub" / "b.jpg"): "a cat",
        str(tmp_path / "e.jpg"): "caf\u00e9 \u65e5\u672c",
    }


@pytest.mark.parametrize("name", ["captions.ndjson", "captions.json", "captions.JSONL", "captions.txt"])
def test_json_lines_by_suffix_or_content(tmp_path: Path, name: str) -> None:
    manifest = _write(tmp_path / name, '  {"path": "a.jpg", "caption": "a dog"}\n')

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "a dog"}


def test_json_lines_with_bom(tmp_path: Path) -> None:
    manifest = tmp_path / "captions.jsonl"
    manifest.write_bytes(b'\xef\xbb\xbf{"path": "a.jpg", "caption": "a dog"}\n')

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "a dog"}


def test_relative_paths_are_resolved_against_the_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "meta").mkdir()
    _write(tmp_path / "meta" / "captions.csv", "a.jpg,one\n../photos/b.jpg,two\n./c/../d.jpg,three\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert read_manifest("../meta/captions.csv") == {
        str(tmp_path / "meta" / "a.jpg"): "one",
        str(tmp_path / "photos" / "b.jpg"): "two",
        str(tmp_path / "meta" / "d.jpg"): "three",
    }


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    manifest = _write(tmp_path / "captions.csv", "/srv/photos/a.jpg,one\n~/b.jpg,two\n")

    assert read_manifest(manifest) == {"/srv/photos/a.jpg": "one", str(home / "b.jpg"): "two"}


def test_manifest_path_may_use_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / "captions.csv", "a.jpg,one\n")

    assert read_manifest("~/captions.csv") == {str(tmp_path / "a.jpg"): "one"}


def test_later_rows_win(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "a.jpg,first\n./a.jpg,second\n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "second"}


def test_empty_manifest_is_empty(tmp_path: Path) -> None:
    assert read_manifest(_write(tmp_path / "captions.csv", "")) == {}
    assert read_manifest(_write(tmp_path / "captions.jsonl", "\n\n")) == {}


def test_long_caption_is_cut(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "a.jpg," + "y" * 5000 + "\n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "y" * MAX_CAPTION_CHARS}


def test_missing_manifest_is_input_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"

    with pytest.raises(InputNotFound) as info:
        read_manifest(missing)

    assert str(info.value) == (f"--captions {missing}: no such file; give a CSV or JSON Lines file of path,caption")


def test_folder_as_manifest_is_input_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="no such file"):
        read_manifest(tmp_path)


def test_bad_json_line_names_the_line(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.jsonl", '{"path": "a.jpg", "caption": "ok"}\n\n{"path": "b.jpg",\n')

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    assert str(info.value).startswith(f"--captions {manifest} line 3: not JSON (")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["a.jpg", "a dog"]', 'expected {"path": ..., "caption": ...}'),
        ('{"caption": "a dog"}', 'expected {"path": ..., "caption": ...}'),
        ('{"path": 7, "caption": "a dog"}', 'expected {"path": ..., "caption": ...}'),
        ('{"path": "a.jpg", "caption": 7}', "caption must be a string"),
        ('{"path": "a.jpg", "caption": ["a", "dog"]}', "caption must be a string"),
    ],
)
def test_json_line_of_wrong_shape(tmp_path: Path, line: str, message: str) -> None:
    manifest = _write(tmp_path / "captions.jsonl", '{"path": "ok.jpg", "caption": "fine"}\n' + line + "\n")

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    assert str(info.value) == f"--captions {manifest} line 2: {message}"


def test_csv_header_without_caption_column(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "captions.csv", "path,description\na.jpg,a dog\n")

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    assert str(info.value) == f"--captions {manifest}: the header has 'path' but no 'caption' column"


@pytest.mark.parametrize(
    ("text", "line"),
    [("a.jpg,one\nb.jpg\n", 2), ("path,caption\na.jpg,one\n\nb.jpg\n", 4), ("caption,path\nonly\n", 2)],
)
def test_csv_row_with_one_column_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    manifest = _write(tmp_path / "captions.csv", text)

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    assert str(info.value) == f"--captions {manifest} line {line}: expected two columns, path and caption"


def test_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    manifest = tmp_path / "captions.csv"
    manifest.write_bytes(b"a.jpg,caf\xe9\n")

    with pytest.raises(ManifestError, match=r"cannot read it \(.*\); save it as UTF-8$"):
        read_manifest(manifest)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_json_lines_with_unicode_line_separator_in_caption(tmp_path: Path, separator: str) -> None:
    row = json.dumps({"path": "a.jpg", "caption": f"first{separator}second"}, ensure_ascii=False)
    manifest = _write(tmp_path / "captions.jsonl", row + "\n")

    assert read_manifest(manifest) == {str(tmp_path / "a.jpg"): "first"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("captions.csv", "a.jpg," + "x" * 140_000 + "\n"),
        ("captions.jsonl", "1" * 5000 + "\n"),
        ("captions.jsonl", "[" * 100_000 + "\n"),
    ],
    ids=["csv-long-field", "json-huge-int", "json-deep-nesting"],
)
def test_hostile_manifest_raises_manifest_error(tmp_path: Path, name: str, text: str) -> None:
    # csv.Error (field over csv.field_size_limit()), ValueError (over 4300 digits), RecursionError.
    manifest = _write(tmp_path / name, text)

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    message = str(info.value)
    assert message.startswith(f"--captions {manifest}: cannot parse it (")
    assert message.endswith("); expected path,caption rows")


@PROPERTY
@given(suffix=st.sampled_from([".csv", ".jsonl", ".txt"]), text=st.text())
@example(suffix=".csv", text='"unterminated,quote\nnext')
@example(suffix=".csv", text="path,caption\nonly")
@example(suffix=".csv", text="\ufeffpath\n")
@example(suffix=".jsonl", text='{"path": "a"}\n[1]')
@example(suffix=".txt", text="{not json")
@example(suffix=".csv", text="a.jpg,x\x00y\n")
@example(suffix=".csv", text="a.jpg," + "x" * 140_000)
@example(suffix=".jsonl", text="1" * 5000)
@example(suffix=".jsonl", text="[" * 100_000)
@example(suffix=".jsonl", text='{"path": "a", "caption": "b\u2028c"}')
def test_read_manifest_returns_captions_or_raises_manifest_error(tmp_path: Path, suffix: str, text: str) -> None:
    manifest = tmp_path / f"m{suffix}"
    manifest.write_text(text, encoding="utf-8")

    try:
        captions = read_manifest(manifest)
    except ManifestError:
        return
    assert isinstance(captions, dict)
    for image, caption in captions.items():
        assert isinstance(image, str)
        assert os.path.isabs(image)
        assert isinstance(caption, str)
        assert caption == clean_caption(caption)


@PROPERTY
@given(suffix=st.sampled_from([".csv", ".jsonl"]), data=st.binary())
def test_read_manifest_on_arbitrary_bytes(tmp_path: Path, suffix: str, data: bytes) -> None:
    manifest = tmp_path / f"m{suffix}"
    manifest.write_bytes(data)

    try:
        captions = read_manifest(manifest)
    except ManifestError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in captions.items())


# ---------------------------------------------------------------- camera boilerplate is not a caption

EXIF_DESCRIPTION_TAG, EXIF_MAKE_TAG, EXIF_MODEL_TAG = 0x010E, 0x010F, 0x0110
BOILERPLATE = [
    "OLYMPUS DIGITAL CAMERA",
    "KONICA MINOLTA DIGITAL CAMERA",
    "SONY DSC",
    "DCIM\\100MEDIA",
    "DCIM/100CANON",
    "DSC_0001",
    "IMG_1234",
    "IMG_20230704_181512.jpg",
    "P1010001",
    "<Digimax S500 / Kenox S500>",
    "KODAK Digital Still Camera",
    "Canon",
    "NIKON CORPORATION",
    "Canon PowerShot S95",
    "EXIF_JPEG_PICTURE",
    "   ",
    "???",
]
REAL_CAPTIONS = [
    "a dog on the beach",
    "Sample image of a valley",
    "picturesque harbour at dusk",
    "Apple",  # a picture of one: Apple is a maker only when the file's EXIF says so
    "Canon beach trip 2019",
    "my new digital camera on the table",
    "Kodak moment",
]


@pytest.mark.parametrize("text", BOILERPLATE)
def test_camera_boilerplate_is_recognised(text: str) -> None:
    assert is_boilerplate(text)


@pytest.mark.parametrize("text", REAL_CAPTIONS)
def test_real_captions_are_not_boilerplate(text: str) -> None:
    assert not is_boilerplate(text)


@pytest.mark.parametrize(
    ("text", "make", "model"),
    [
        ("Minolta", "Minolta Co., Ltd.", "DiMAGE Z3"),
        ("DiMAGE Z3", "Minolta Co., Ltd.", "DiMAGE Z3"),
        ("Apple iPhone 12", "Apple", "iPhone 12"),
        ("Apple", "Apple", "iPhone 12"),
        ("OLYMPUS IMAGING CORP. E-M10", "OLYMPUS IMAGING CORP.", "E-M10"),
    ],
)
def test_the_files_own_make_and_model_are_boilerplate(text: str, make: str, model: str) -> None:
    assert is_boilerplate(text, make, model)
    assert not is_boilerplate(f"{text} at the lake", make, model)


def exif_jpeg(
    path: Path, seed: int, description: str | None, make: str | None = None, model: str | None = None
) -> Path:
    """A real JPEG whose EXIF carries ImageDescription, Make and Model, as a camera writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    exif = Image.Exif()
    for tag, value in ((EXIF_DESCRIPTION_TAG, description), (EXIF_MAKE_TAG, make), (EXIF_MODEL_TAG, model)):
        if value is not None:
            exif[tag] = value
    Image.fromarray(pixels).save(path, format="JPEG", exif=exif, quality=90)
    return path


def test_image_description_reads_a_real_jpeg_and_compares_with_its_camera(tmp_path: Path) -> None:
    cases = {
        "konica.jpg": ("KONICA MINOLTA DIGITAL CAMERA", "KONICA MINOLTA", "DiMAGE A2", None),
        "canon.jpg": ("Canon PowerShot S95", "Canon", "Canon PowerShot S95", None),
        "minolta.jpg": ("DiMAGE Z3", "Minolta Co., Ltd.", "DiMAGE Z3", None),
        "blank.jpg": ("        ", "SONY", "DSC-W55", None),
        "real.jpg": ("Grandma's 80th birthday", "Canon", "Canon EOS 5D", "Grandma's 80th birthday"),
    }
    for name, (description, make, model, expected) in cases.items():
        path = exif_jpeg(tmp_path / name, len(name), description, make, model)
        with Image.open(path) as image:
            assert image.getexif()[EXIF_DESCRIPTION_TAG] == description  # really written to the file
            assert image_description(image.getexif(), image.info.get("xmp")) == expected, name


@pytest.fixture(scope="module")
def boilerplate_album(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEGs with camera boilerplate in EXIF or XMP, one with a real EXIF caption, three with sidecars."""
    root = tmp_path_factory.mktemp("boilerplate") / "album"
    exif_jpeg(root / "olympus.jpg", 1, "OLYMPUS DIGITAL CAMERA", "OLYMPUS IMAGING CORP.", "E-M10")
    exif_jpeg(root / "konica.jpg", 2, "KONICA MINOLTA DIGITAL CAMERA", "KONICA MINOLTA", "DiMAGE A2")
    exif_jpeg(root / "sony.jpg", 3, "SONY DSC", "SONY", "DSC-W55")
    exif_jpeg(root / "dcim.jpg", 4, "DCIM\\100MEDIA")
    exif_jpeg(root / "digimax.jpg", 5, "<Digimax S500 / Kenox S500>", "Samsung Techwin", "S500")
    exif_jpeg(root / "make.jpg", 6, "NIKON", "NIKON", "E4500")
    exif_jpeg(root / "real.jpg", 7, "Grandma's 80th birthday", "Canon", "Canon EOS 5D")
    path = exif_jpeg(root / "xmp.jpg", 8, None)
    with Image.open(path) as image:
        image.load()
        image.save(path, format="JPEG", xmp=corpus._xmp_packet("IMG_0412.JPG"))
    for seed in (9, 10, 11):
        exif_jpeg(root / f"side{seed}.jpg", seed, "SONY DSC", "SONY", "DSC-W55")
        (root / f"side{seed}.txt").write_text(f"a sidecar caption number {seed}")
    return root


def test_ingest_keeps_real_captions_and_drops_camera_boilerplate(
    boilerplate_album: Path, tmp_path: Path, tiny_model: str
) -> None:
    from tests.conftest import open_library  # noqa: PLC0415

    lib = open_library(str(tmp_path / "db"), tiny_model)
    lib.ingest([boilerplate_album])
    rows = lib.collection.columns(["path", "caption", "caption_source", "description"])
    captions = {Path(r["path"]).name: (r["caption"], r["caption_source"]) for r in rows}
    descriptions = {Path(r["path"]).name: r["description"] for r in rows}
    assert captions["real.jpg"] == ("Grandma's 80th birthday", "embedded")
    assert descriptions["real.jpg"] == "Grandma's 80th birthday"
    assert {descriptions[f"side{seed}.jpg"] for seed in (9, 10, 11)} == {None}  # "SONY DSC" is no description
    for seed in (9, 10, 11):
        assert captions[f"side{seed}.jpg"] == (f"a sidecar caption number {seed}", "sidecar")
    boiler = ("olympus.jpg", "konica.jpg", "sony.jpg", "dcim.jpg", "digimax.jpg", "make.jpg", "xmp.jpg")
    assert {name: captions[name] for name in boiler} == dict.fromkeys(boiler, (None, None))
    assert lib.stats().captioned == 4
    assert lib.search("anything", k=20, target="caption")  # the real captions were embedded

    # A row stored before the rule, with the boilerplate as its caption, loses it at the next ingest.
    from storage import CaptionUpdate  # noqa: PLC0415

    olympus = lib.collection.get_by_path(str(boilerplate_album / "olympus.jpg"))
    assert olympus is not None
    vector = lib.embed_text("OLYMPUS DIGITAL CAMERA")
    lib.collection.set_captions([CaptionUpdate(olympus.id, "OLYMPUS DIGITAL CAMERA", "embedded", vector, None)])
    assert lib.stats().captioned == 5
    lib.ingest([boilerplate_album])
    after = lib.collection.get_by_path(str(boilerplate_album / "olympus.jpg"))
    assert after is not None and (after.caption, after.caption_vector) == (None, None)
    assert lib.stats().captioned == 4


def test_eval_counts_only_real_captions_and_warns_that_few_mean_nothing(
    boilerplate_album: Path, tiny_model: str
) -> None:
    from tests.conftest import run  # noqa: PLC0415

    result = run("eval", str(boilerplate_album), "--model", tiny_model)
    lines = result.stdout.splitlines()
    assert "4 captioned images" in lines[0]
    assert lines[-1] == (
        "warning: only 4 captioned images: the figures are not meaningful (a random ranking scores "
        "R@1 0.250, R@5 1.000, R@10 1.000); caption at least 20 images to compare models"
    )
    assert lines[-2].split() == ["by", "chance", "0.250", "1.000", "1.000"]
    data = json.loads(run("eval", str(boilerplate_album), "--model", tiny_model, "--json").stdout)
    assert data["images"] == 4
    assert data["warning"].startswith("only 4 captioned images: the figures are not meaningful")
    assert data["chance_R@1"] == 0.25
