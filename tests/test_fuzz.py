"""Property tests and bounded fuzzing: caption and manifest parsers, --where filters, image decoding.

The bugs these found in library code (CSV captions with line breaks, lone surrogates, comments
and placeholders in --where, run-time filter errors, check_filter disagreeing with search, thin
images, RAW files of false JPEG starts) are fixed; each keeps a minimal reproducer here, named
``test_regression_*``.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from models import ImageTransform
from pipeline.errors import InputNotFound, ManifestError
from pipeline.ingest.captions import MAX_CAPTION_CHARS, clean_caption, read_manifest, read_sidecar, xmp_description
from pipeline.ingest.decode import FORMATS, Decoded, DecodeFailed, content_hash, decode_bytes, decode_file
from storage import BadFilter, Hit, Stats
from tests import corpus

if TYPE_CHECKING:
    from pipeline import Clipdex

ROOT = Path(__file__).resolve().parent.parent
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The characters str.splitlines() breaks on; every one of them also counts as whitespace.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
HOSTILE_CHARS = LINE_BREAKS + " \t\u00a0\u3000\x00\ufeff\x01\x7fab\u00e9\u65e5\U0001f4f7"


def _assert_clean_caption(caption: object) -> None:
    """A caption as clean_caption documents it: None, or one trimmed, bounded, non-empty line."""
    if caption is None:
        return
    assert isinstance(caption, str)
    assert caption, "an empty caption must be None"
    assert len(caption) <= MAX_CAPTION_CHARS
    assert caption.splitlines() == [caption], f"not one line: {caption!r}"
    assert caption == " ".join(caption.split()), f"whitespace not collapsed or trimmed: {caption!r}"
    assert "\x00" not in caption and "\ufeff" not in caption
    caption.encode("utf-8")  # it is stored in Arrow (UTF-8): no lone surrogates
    assert clean_caption(caption) == caption  # idempotent


def _assert_one_line_naming(message: str, prefix: str, name: str) -> None:
    assert len(message.splitlines()) == 1, f"not one line: {message!r}"
    assert message.startswith(prefix), message
    assert name in message, message


# ================================================================ captions


@PROPERTY
@given(st.none() | st.text() | st.text(alphabet=HOSTILE_CHARS, max_size=60) | st.text(min_size=990, max_size=1100))
@example("\ufeff\x00  \u2028 a\x00b \t c\u00a0\nsecond")
@example("x" * (MAX_CAPTION_CHARS - 1) + " y")
def test_clean_caption_is_a_prefix_of_the_first_line(text: str | None) -> None:
    caption = clean_caption(text)

    _assert_clean_caption(caption)
    source = (text or "").replace("\ufeff", "").replace("\x00", "")
    assert (caption is None) == (not source.split())
    if caption is not None:
        first = next(" ".join(line.split()) for line in source.splitlines() if line.split())
        assert first.startswith(caption)
        assert len(first) > MAX_CAPTION_CHARS or caption == first


XMP_JUNK = st.text(alphabet=st.characters(exclude_characters="<", exclude_categories=["Cs"]), max_size=40)
XMP_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            "<dc:description",
            "<rdf:li",
            ">",
            "</rdf:li>",
            "<rdf:Alt>",
            "&amp;",
            "&#0;",
            "&#xD800;",
            "&#x110000;",
            "&lt;",
            "&",
            "\n",
            "\x00",
            "\u2028",
            "\xff",
            "x",
        ]
    )
    | XMP_JUNK,
    max_size=12,
).map("".join)


@PROPERTY
@given(st.none() | st.binary(max_size=3000) | st.text(max_size=500) | XMP_FRAGMENTS | XMP_FRAGMENTS.map(str.encode))
@example(b"<dc:description><rdf:li>&#xD800;&#0;</rdf:li>")
@example("<dc:description><rdf:li>\udc80</rdf:li>")
def test_xmp_description_of_anything_is_a_clean_caption(packet: bytes | str | None) -> None:
    _assert_clean_caption(xmp_description(packet))


@PROPERTY
@given(caption=st.text(max_size=1200), before=XMP_JUNK, as_text=st.booleans())
@example(caption="fish & chips </rdf:li> <3 &amp;", before="", as_text=False)
def test_xmp_description_round_trips_an_escaped_caption(caption: str, before: str, as_text: bool) -> None:
    packet = (
        f'{before}<x:xmpmeta><dc:description><rdf:Alt><rdf:li xml:lang="x-default">{html.escape(caption)}'
        "</rdf:li></rdf:Alt></dc:description></x:xmpmeta>"
    )

    assert xmp_description(packet if as_text else packet.encode("utf-8")) == clean_caption(caption)


@PROPERTY
@given(
    data=st.binary(max_size=2000),
    pad=st.sampled_from([b"", b" ", b"\n", b"a", "\u00e9".encode()]),
    text=st.text(),
    bom=st.booleans(),
)
def test_read_sidecar_is_a_clean_caption(data: bytes, pad: bytes, text: str, bom: bool) -> None:
    if pad:  # about the 64 KiB read limit, maybe inside a UTF-8 sequence
        data = pad * (65_535 // len(pad)) + data
    with tempfile.TemporaryDirectory() as tmp:
        raw, utf8 = Path(tmp, "raw.txt"), Path(tmp, "utf8 ü.txt")
        raw.write_bytes(data)
        utf8.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))

        _assert_clean_caption(read_sidecar(str(raw)))
        assert read_sidecar(str(utf8)) == clean_caption(text)
        assert read_sidecar(str(Path(tmp, "missing.txt"))) is None
        assert read_sidecar(tmp) is None  # a folder


MANIFEST_SUFFIXES = [".csv", ".CSV", ".jsonl", ".json", ".ndjson", ".txt", ""]
JSONISH = st.lists(
    st.sampled_from(
        [
            '{"path": ',
            '"a.jpg"',
            '"caption": ',
            '"text": ',
            "null",
            "1e999",
            "[",
            "]",
            "{",
            "}",
            ",",
            '"\\u2028"',
            '"\\n"',
            "\n",
            "\u2028",
            " ",
            "true",
            "-0",
            '"s3://b/k"',
        ]
    ),
    max_size=20,
).map("".join)
CSVISH = st.lists(
    st.sampled_from(
        [
            "path",
            "caption",
            "text",
            "Path",
            ",",
            '"',
            '""',
            "\n",
            "\r\n",
            "\r",
            "\u2028",
            "\x00",
            "a.jpg",
            "~/x.jpg",
            "s3://b/k.jpg",
            " ",
            "\ufeff",
            "x" * 50,
        ]
    ),
    max_size=20,
).map("".join)


@PROPERTY
@given(
    suffix=st.sampled_from(MANIFEST_SUFFIXES),
    data=st.binary(max_size=2000)
    | st.text().map(str.encode)
    | JSONISH.map(str.encode)
    | CSVISH.map(str.encode)
    | st.builds(lambda a, b: a.encode() + b, CSVISH, st.binary(max_size=8)),
)
@example(suffix=".csv", data=b'path,caption\n"a.jpg","x\n\ny"')
@example(suffix=".jsonl", data=b'{"path": "a.jpg", "caption": "1"}\n{"path": 1}')
@example(suffix=".csv", data=b"path,text\n\xff")
def test_read_manifest_returns_clean_captions_or_one_line_manifest_error(suffix: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp, f"captions ü{suffix}")
        manifest.write_bytes(data)
        try:
            captions = read_manifest(manifest)
        except ManifestError as exc:
            _assert_one_line_naming(str(exc), f"--captions {manifest}", str(manifest))
            return
    assert isinstance(captions, dict)
    for image, caption in captions.items():
        assert isinstance(image, str)
        assert os.path.isabs(image) or "://" in image, image
        assert caption is not None
        _assert_clean_caption(caption)


def test_missing_or_folder_manifest_is_one_line_input_not_found() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for manifest in (Path(tmp, "missing captions.csv"), Path(tmp)):
            with pytest.raises(InputNotFound) as info:
                read_manifest(manifest)
            _assert_one_line_naming(str(info.value), f"--captions {manifest}", str(manifest))


SEGMENT = st.sampled_from([".", "..", "sub dir", "日本"]) | st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\\"), min_size=1, max_size=10
)
# "~" at the start means the home folder, "{" at the start of a file means JSON Lines: both documented.
RELATIVE_NAME = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join).filter(lambda n: n[0] not in "~{")
URI_NAME = SEGMENT.map(lambda s: f"s3://bucket/{s}")
ANY_NAME = RELATIVE_NAME | URI_NAME
CSV_CAPTION = st.text(alphabet=st.characters(exclude_categories=["Cs"]))


def _expected_captions(folder: str, pairs: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """The documented semantics: paths relative to the manifest folder, URIs as given, later rows win."""
    expected: dict[str, str] = {}
    for name, caption in pairs:
        cleaned = clean_caption(caption)
        if cleaned:
            expected[name if "://" in name else os.path.normpath(os.path.join(folder, name))] = cleaned
    return expected


@PROPERTY
@given(
    pairs=st.lists(st.tuples(ANY_NAME.filter(lambda n: n == n.strip()), CSV_CAPTION), max_size=8),
    header=st.sampled_from([("path", "caption"), ("caption", "path"), ("Path", "Text"), (" PATH ", "caption"), None]),
    bom=st.booleans(),
    suffix=st.sampled_from([".csv", ".txt", ".tsv"]),
)
@example(
    pairs=[("a.jpg", "path"), ("a.jpg", "  "), ("b/../c.jpg", '"quoted", comma')], header=None, bom=True, suffix=".csv"
)
def test_csv_manifest_round_trip(
    pairs: list[tuple[str, str]], header: tuple[str, str] | None, bom: bool, suffix: str
) -> None:
    while header is None and pairs and any(cell.strip().lower() == "path" for cell in pairs[0]):
        pairs = pairs[1:]  # without a header, a first row with a cell "path" is one: that is the format
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp, "sub", f"captions{suffix}")
        manifest.parent.mkdir()
        with manifest.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
            writer = csv.writer(f)
            caption_first = header is not None and header[0] == "caption"
            if header is not None:
                writer.writerow(header)
            for name, caption in pairs:
                writer.writerow([caption, name] if caption_first else [name, caption])

        assert read_manifest(manifest) == _expected_captions(str(manifest.parent), pairs)


@PROPERTY
@given(
    pairs=st.lists(st.tuples(ANY_NAME, st.none() | st.text(max_size=1200)), max_size=8),
    key=st.sampled_from(["caption", "text"]),
    ascii_only=st.booleans(),
    blank_lines=st.booleans(),
    suffix=st.sampled_from([".jsonl", ".json", ".ndjson", ".txt"]),
)
@example(
    pairs=[("a.jpg", "a\u2028b"), ("x/./y.jpg", "\n\nsecond line"), ("s3://b/k", "uri")],
    key="caption",
    ascii_only=False,
    blank_lines=True,
    suffix=".jsonl",
)
def test_json_lines_manifest_round_trip(
    pairs: list[tuple[str, str | None]], key: str, ascii_only: bool, blank_lines: bool, suffix: str
) -> None:
    lines = [json.dumps({"path": name, key: caption}, ensure_ascii=ascii_only) for name, caption in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp, f"captions ü{suffix}")
        manifest.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n", encoding="utf-8")

        assert read_manifest(manifest) == _expected_captions(tmp, pairs)


@pytest.mark.parametrize(
    "caption",
    ["a dog\non the beach", "a dog\r\non the beach", "a dog\u2028on the beach", "a\x1cb", "a\x85b", "a\x0bb"],
    ids=["LF-quoted", "CRLF-quoted", "U+2028", "x1c", "x85", "x0b"],
)
def test_regression_csv_caption_with_a_line_break(caption: str) -> None:
    """What csv.writer wrote must read back: pipeline/captions.py _parse_csv feeds csv.reader text.splitlines().

    A quoted "a dog\\non the beach" comes back glued, "a dogon the beach" (not its first line); U+2028,
    \\x1c-\\x1e, \\x85, \\x0b and \\x0c, which csv.writer leaves unquoted, split the row: ManifestError.
    """
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp, "captions.csv")
        with manifest.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["path", "caption"], ["a.jpg", caption]])

        assert read_manifest(manifest) == {os.path.join(tmp, "a.jpg"): clean_caption(caption)}


def test_regression_json_caption_with_a_lone_surrogate() -> None:
    """A JSON escape "\\ud800" yields a caption that cannot be stored: Clipdex.ingest then dies in pyarrow.

    read_manifest should refuse it (ManifestError) or replace it; it returns it as is.
    """
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp, "captions.jsonl")
        manifest.write_text('{"path": "a.jpg", "caption": "\\ud800 a dog"}\n', encoding="utf-8")
        try:
            captions = read_manifest(manifest)
        except ManifestError:
            return
    for caption in captions.values():
        caption.encode("utf-8")


# ================================================================ --where filters

COLUMNS = [
    "id",
    "path",
    "size",
    "width",
    "height",
    "format",
    "caption",
    "taken_at",
    "mtime_ns",
    "description",
    "caption_source",
    "ingested_at",
    "hash",
    "vector",
    "caption_vector",
    "nope",
    '"width"',
    "`path`",
]
COMPARISONS = ["=", "!=", "<>", "<", "<=", ">", ">=", "LIKE", "NOT LIKE", "ILIKE", "IS", "IS NOT", "IN", "NOT IN"]
OPERATORS = [*COMPARISONS, "+", "-", "*", "/", "%", "||", "~", "AND", "OR", "NOT", ",", "BETWEEN"]
PUNCTUATION = ["(", ")", "'", '"', "`", ";", "--", "/*", "*/", "\n", "\\", "?", "$1", ":x", "[", "]", "{", "}", "@"]
KEYWORDS = [
    "SELECT",
    "FROM",
    "images",
    "DROP TABLE images",
    "DELETE FROM images",
    "UPDATE images SET size = 0",
    "INSERT",
    "UNION SELECT 1",
    "CASE WHEN",
    "THEN",
    "ELSE",
    "END",
    "lower(",
    "length(",
    "CAST(",
    "AS INT",
    "regexp_match(",
    "array_has(",
    "count(*)",
    "TRUE",
    "FALSE",
    "NULL",
]
LITERALS = (
    st.integers(-(2**70), 2**70).map(str)
    | st.floats().map(repr)
    | st.sampled_from(
        [
            "0",
            "-0.0",
            "1e400",
            "'JPEG'",
            "'%.jpg'",
            "''",
            "'it''s'",
            "TIMESTAMP '2024-01-01 00:00:00'",
            "DATE '2024-13-45'",
            "('PNG', 'JPEG')",
            "(1, 2)",
            "NULL",
            "TRUE",
        ]
    )
    | st.text(max_size=8).map(lambda s: "'" + s.replace("'", "''") + "'")
)
FRAGMENT = st.sampled_from(COLUMNS + OPERATORS + PUNCTUATION + KEYWORDS) | LITERALS | st.text(max_size=4)
SQL_SOUP = st.tuples(st.lists(FRAGMENT, min_size=1, max_size=10), st.sampled_from([" ", ""])).map(
    lambda t: t[1].join(t[0])
)
SQL_STRING = st.text(max_size=8).map(lambda s: "'" + s.replace("'", "''") + "'")
TYPED_CLAUSE = (
    st.tuples(
        st.sampled_from(["size", "width", "height", "mtime_ns"]),
        st.sampled_from(["=", "!=", "<", "<=", ">", ">="]),
        st.integers(-(2**40), 2**40).map(str),
    ).map(" ".join)
    | st.tuples(
        st.sampled_from(["id", "path", "format", "caption", "description", "caption_source", "hash"]),
        st.sampled_from(["=", "!=", "<", "LIKE", "NOT LIKE"]),
        SQL_STRING | st.sampled_from(["'%.jpg'", "'%a%'", "'PNG'", "'it''s a dog'"]),
    ).map(" ".join)
    | st.tuples(st.sampled_from(COLUMNS[:12]), st.sampled_from(["IS NULL", "IS NOT NULL"])).map(" ".join)
)
CLAUSE = TYPED_CLAUSE | st.tuples(st.sampled_from(COLUMNS), st.sampled_from(COMPARISONS), LITERALS).map(" ".join)
CONDITION = st.recursive(
    CLAUSE,
    lambda inner: (
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})")
        | inner.map(lambda c: f"NOT ({c})")
    ),
    max_leaves=4,
)
WHERE = st.text(max_size=40) | SQL_SOUP | CONDITION
ESCAPES = [") OR (", ") OR TRUE OR (", ")) OR ((", ") OR 1=1 OR (", ") OR NOT (FALSE", "') OR ('", ") --", ")) OR (("]
ESCAPING = st.tuples(CONDITION | SQL_SOUP, st.sampled_from(ESCAPES), CONDITION | SQL_SOUP).map("".join) | WHERE


@pytest.fixture(scope="module")
def where_lib(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Clipdex:
    """One small real collection of six images, two of them captioned, shared by the whole module."""
    from tests.conftest import open_library  # noqa: PLC0415 - conftest imports the server and the CLI

    root = tmp_path_factory.mktemp("where")
    photos = root / "photos"
    for seed, name in enumerate(["a.jpg", "b.png", "c d.webp", "café ü.jpg", "e.bmp", "f.gif"]):
        corpus.pattern_image(photos / name, seed, size=(32 + 8 * seed, 24 + 4 * seed))
    manifest = root / "captions.csv"
    manifest.write_text("path,caption\nphotos/a.jpg,a red bicycle\nphotos/b.png,it's a dog\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("CLIPDEX_")]:
            mp.delenv(name)
        lib = open_library(str(root / "db"), tiny_model)
        report = lib.ingest([photos], captions=manifest)
    assert (report.added, report.failed, lib.collection.stats().captioned) == (6, 0, 2)
    return lib


def _state(lib: Clipdex) -> tuple[Stats, int, list[str]]:
    """What a filter must never change: counts, the table version, the ids."""
    ids = sorted(h.id for h in lib.collection.search(lib.embed_text("a photo"), k=100))
    return lib.collection.stats(), int(lib.collection._images.version), ids


def _outcome(where: str, call: Callable[[], list[Hit] | None]) -> list[Hit] | BadFilter | None:
    """The hits (None from check_filter), or the BadFilter raised; any other exception fails the test."""
    try:
        return call()
    except BadFilter as exc:
        _assert_one_line_naming(str(exc), "--where ", repr(where))
        return exc


@PROPERTY
@given(where=WHERE)
@example(where="1=1) OR (1=1")
@example(where="width > 40; DROP TABLE images")
@example(where="UPDATE images SET size = 0")
@example(where="caption = 'it''s a dog'")
@example(where="\x00")
@example(where="path LIKE '%\u2028%' OR caption IS NULL")
def test_where_returns_hits_or_bad_filter_and_never_writes(where_lib: Clipdex, where: str) -> None:
    lib = where_lib
    before = _state(lib)
    ids = set(before[2])

    found = _outcome(where, lambda: lib.search("a photo", where=where, k=50))
    checked = _outcome(where, lambda: lib.collection.check_filter(where)) if where.strip() else None
    event(f"search: {type(found).__name__}, check_filter: {type(checked).__name__}")

    if isinstance(found, list):
        assert all(isinstance(h, Hit) and h.id in ids for h in found)
        assert len({h.id for h in found}) == len(found)
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        # A filter search runs is a filter check_filter accepts.
        assert not isinstance(checked, BadFilter), f"search ran it, check_filter refused it: {checked}"
    assert _state(lib) == before


@PROPERTY
@given(where=ESCAPING)
@example(where="1=1) OR (1=1")
@example(where="TRUE) OR (TRUE")
@example(where="width > 0)) OR ((width > 0")
@example(where="caption = 'x'') OR (''1'' = ''1'")
@example(where="caption = 'a' ) OR ( 'b' = 'b'")
def test_where_cannot_escape_its_parentheses(where_lib: Clipdex, where: str) -> None:
    """The filters ANDed after the clause (left-out ids: similar_to's own image) hold whatever it says."""
    lib = where_lib
    everything = _state(lib)[2]
    vector = lib.embed_text("a photo")

    hits = _outcome(where, lambda: lib.collection.search(vector, k=100, where=where, exclude_ids=everything))
    similar = _outcome(where, lambda: lib.similar_to(everything[0], k=100, where=where))
    event(f"search: {type(hits).__name__}")

    assert not isinstance(hits, list) or hits == [], f"{where!r} escaped: {[h.id for h in hits]}"
    assert not isinstance(similar, list) or everything[0] not in [h.id for h in similar], f"{where!r} escaped"


@pytest.mark.parametrize("where", ["1=1) OR (1=1", ") OR (", "TRUE)", "(TRUE", "width > 1)) OR ((TRUE", "'('", "')'"])
def test_unbalanced_parentheses_are_bad_filter(where_lib: Clipdex, where: str) -> None:
    if where in ("'('", "')'"):  # inside a string: balanced, and not a boolean
        with pytest.raises(BadFilter, match="does not return a boolean"):
            where_lib.search("a photo", where=where)
        return
    with pytest.raises(BadFilter, match=r"^--where .*: unbalanced parentheses; close each one you open$"):
        where_lib.search("a photo", where=where)


@pytest.mark.parametrize("where", ["/*'*/1=1)OR(1=1/*'*/", "TRUE -- '\n) OR (TRUE -- '\n"], ids=["block", "line"])
def test_regression_sql_comment_escapes_the_filter_parentheses(where_lib: Clipdex, where: str) -> None:
    """storage/collection.py _check_parentheses counts parentheses outside quotes, but a quote inside an SQL
    comment flips its idea of "inside quotes" while LanceDB skips the comment: the filter closes the
    parentheses it is wrapped in, and the filters ANDed after it (exclude_ids, the caption target) stop
    applying. Clipdex.similar_to(id, where=...) then returns the image itself.
    """
    lib = where_lib
    everything = _state(lib)[2]
    try:
        hits = lib.collection.search(lib.embed_text("a photo"), k=100, where=where, exclude_ids=everything)
    except BadFilter:
        return
    assert hits == [], f"every image was left out, yet {len(hits)} came back"


@pytest.mark.parametrize("where", ["width / 0 = 1", "CAST(path AS INT) = 1", "regexp_match(path, '(')"])
def test_regression_filter_that_fails_while_running_is_not_bad_filter(where_lib: Clipdex, where: str) -> None:
    """Collection.search (and check_filter) turn only ValueError into BadFilter; LanceDB raises RuntimeError
    ("lance error: Query Execution error: ... Divide by zero error", multi-line for a bad regex) when the
    filter parses but fails on the rows, so `clipdex search x --where "width / 0 = 1"` ends in a traceback.
    """
    with pytest.raises(BadFilter, match=r"^--where "):
        where_lib.search("a photo", where=where)


@pytest.mark.parametrize("where", ["1=1) OR (1=1", "1=1; DROP TABLE images", "width > 1 --"])
def test_regression_check_filter_accepts_what_search_refuses(where_lib: Clipdex, where: str) -> None:
    """Collection.check_filter skips the parentheses check and runs the clause unwrapped, so it accepts
    filters that search refuses (and LanceDB ignores a second statement after ";" only when unwrapped).
    """
    with pytest.raises(BadFilter):
        where_lib.search("a photo", where=where)
    try:
        where_lib.collection.check_filter(where)
    except BadFilter:
        return
    raise AssertionError(f"check_filter accepted {where!r}, which search refuses")


@pytest.mark.parametrize("where", ["?", "width = $1", ":x"])
def test_regression_sql_placeholder_makes_lancedb_panic(where_lib: Clipdex, where: str) -> None:
    """A query placeholder in --where panics inside LanceDB (lance-datafusion planner.rs: "not yet
    implemented"): pyo3_async_runtimes.RustPanic, not BadFilter, from search and check_filter alike,
    and a Rust backtrace on stderr. Collection.search could refuse placeholders, or catch the panic.
    """
    with pytest.raises(BadFilter, match=r"^--where "):
        where_lib.search("a photo", where=where)


# ================================================================ decoding: a bounded fuzz harness

FUZZ_SEED = 20240601
FUZZ_SECONDS = 7.0  # wall-clock budget of the bytes run; the files run gets a quarter of it
FUZZ_ITERATIONS = 20_000  # cap, whatever the machine's speed
MIN_ITERATIONS = 200  # fewer means the harness hardly ran: a failure too
MAX_PIXELS = 4_000_000  # mutated headers claiming more are refused before decoding
SLOW_SECONDS = 5.0  # one decode slower than this fails the test, naming the input
HANG_SECONDS = 30  # one decode slower than this is killed (SIGALRM) and reported as a hang
CHILD_MEMORY = 1 << 30  # address-space limit of the fuzzing process: a runaway allocation fails there, not here
ODD_NAMES = [
    "café photo ü 日本 ",
    "with  spaces ",
    " leading",
    "tab\there ",
    "new\nline ",
    "quote'\" ",
    "📷 ",
    "-x ",
    ".hidden ",
    "\udcff\udcfe not utf-8 ",
]
MAGICS = [
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"GIF87a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x00\x18ftypheic",
]
BIG = [0, 1, 0x7F, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 65_500, 100_000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def seed_images() -> dict[str, bytes]:
    """Small valid files of every kind decode reads, in memory; the name's extension picks the decoder path."""
    rng = np.random.default_rng(FUZZ_SEED)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    jpeg = _encode(rgb, "JPEG", quality=80)
    thumbnail = _encode(rgb.resize((8, 6)), "JPEG")
    tiff_head = b"II*\x00\x08\x00\x00\x00" + rng.bytes(120)
    return {
        "baseline.jpg": jpeg,
        "progressive.jpeg": _encode(rgb, "JPEG", progressive=True, quality=60),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "rgb.png": _encode(rgb, "PNG"),
        "palette.png": _encode(rgb.convert("P"), "PNG", transparency=3),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "gray16.png": _encode(Image.fromarray(rng.integers(0, 65536, (20, 20)).astype(np.uint16)), "PNG"),
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "lossy.webp": _encode(rgb, "WEBP", quality=50),
        "lossless.webp": _encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        "plain.bmp": _encode(rgb, "BMP"),
        "deflate.tif": _encode(rgb, "TIFF", compression="tiff_deflate"),
        "photo.heic": _encode(rgb, "HEIF"),
        "camera.nef": tiff_head + thumbnail + rng.bytes(64) + jpeg + rng.bytes(32),  # RAW: its largest JPEG
    }


def _png_chunks(data: bytes) -> list[tuple[int, int]] | None:
    """(start, end) of each chunk after the signature, or None when data is not a well-formed PNG."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    chunks, at = [], 8
    while at + 12 <= len(data):
        end = at + 12 + struct.unpack(">I", data[at : at + 4])[0]
        if end > len(data):
            return None
        chunks.append((at, end))
        at = end
    return chunks


def _claim_size(rng: np.random.Generator, data: bytes) -> bytes:
    """Overwrite the header's width and height with extreme numbers (and a valid PNG CRC after them)."""
    b = bytearray(data)
    w, h = (int(rng.choice(BIG)) for _ in range(2))
    if b.startswith(b"\x89PNG") and len(b) >= 33:
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif b.startswith(b"GIF") and len(b) >= 10:
        b[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    elif b.startswith(b"BM") and len(b) >= 26:
        b[18:26] = struct.pack("<II", w, h)
    elif (sof := max(b.find(b"\xff\xc0"), b.find(b"\xff\xc2"))) > 0 and len(b) >= sof + 9:
        b[sof + 5 : sof + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
    elif len(b) >= 8:
        at = int(rng.integers(0, min(len(b), 64) - 3))
        b[at : at + 4] = struct.pack("<I", w)
    return bytes(b)


def mutate(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    """One to three random mutations of data, and what they were."""
    done = []
    for _ in range(int(rng.integers(1, 4))):
        kind, n = int(rng.integers(0, 7)), len(data)
        if kind == 0 and n:
            b = bytearray(data)
            for at in rng.integers(0, n, int(rng.integers(1, 9))):
                b[at] ^= int(rng.integers(1, 256))
            data, what = bytes(b), "flip"
        elif kind == 1:
            data, what = data[: int(rng.integers(0, n + 1))], "truncate"
        elif kind == 2 and n:
            start = int(rng.integers(0, n))
            piece, at = data[start : start + int(rng.integers(1, 256))], int(rng.integers(0, n + 1))
            data, what = data[:at] + piece + data[at:], "duplicate"
        elif kind == 3 and n:
            start = int(rng.integers(0, n))
            data, what = data[:start] + data[start + int(rng.integers(1, 256)) :], "remove"
        elif kind == 4 and (chunks := _png_chunks(data)):
            start, end = chunks[int(rng.integers(0, len(chunks)))]
            if rng.random() < 0.5:
                data, what = data[:start] + data[end:], "remove-chunk"
            else:
                data, what = data[:end] + data[start:end] + data[end:], "duplicate-chunk"
        elif kind == 5:
            data, what = _claim_size(rng, data), "claim-size"
        else:
            data, what = MAGICS[int(rng.integers(0, len(MAGICS)))] + rng.bytes(int(rng.integers(0, 2048))), "magic"
        done.append(what)
    return "+".join(done), data


def fuzz_cases(seed: int) -> Iterator[tuple[int, str, str, bytes]]:
    """(iteration, seed name, mutations, bytes): the seeds as they are (iteration -1), then mutants."""
    seeds = seed_images()
    names = sorted(seeds)
    for name in names:
        yield -1, name, "none", seeds[name]
    for iteration in range(FUZZ_ITERATIONS):
        rng = np.random.default_rng([seed, iteration])  # each case reproducible on its own
        name = names[int(rng.integers(0, len(names)))]
        what, data = mutate(rng, seeds[name])
        yield iteration, name, what, data


def decode_problem(name: str, data: bytes, result: object, transform: ImageTransform) -> str | None:
    """What is wrong with a decode result, or None: the contract of decode_bytes and decode_file."""
    if isinstance(result, DecodeFailed):
        if result.path != name:
            return f"DecodeFailed.path {result.path!r}"
        if not isinstance(result.reason, str) or not result.reason.strip():
            return f"empty reason {result.reason!r}"
        if len(result.reason.splitlines()) != 1:
            return f"reason is not one line: {result.reason!r}"
        return None
    if not isinstance(result, Decoded):
        return f"returned {type(result).__name__}, not Decoded or DecodeFailed"
    problems = {
        "path": result.path == name,
        "hash": result.hash == content_hash(data),
        "size": result.size == len(data),
        "dimensions": result.width > 0 and result.height > 0 and result.width * result.height <= MAX_PIXELS,
        "format": result.format in (*FORMATS, "MPO") or result.format.startswith("RAW "),
        "pixels": result.pixels is not None
        and result.pixels.shape == (*transform.size, 3)
        and result.pixels.dtype == np.uint8,
        "taken_at": result.taken_at is None or isinstance(result.taken_at, datetime),
        "description": result.description is None
        or (result.description == clean_caption(result.description) and len(result.description) <= MAX_CAPTION_CHARS),
    }
    wrong = [field for field, ok in problems.items() if not ok]
    return f"Decoded with a wrong {', '.join(wrong)}: {dataclasses.replace(result, pixels=None)!r}" if wrong else None


def run_fuzz(mode: str, seconds: float, progress: Path, workdir: Path) -> dict[str, Any]:
    """Decode mutants until the budget or the cap; runs in a child process (see _child_main)."""
    transform = ImageTransform()
    deadline = time.monotonic() + seconds
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    slowest: tuple[float, str] = (0.0, "")
    iterations = 0
    seed = FUZZ_SEED + (mode == "files")  # the files run tries other mutants
    for iteration, name, what, data in fuzz_cases(seed):
        if iteration >= 0 and time.monotonic() > deadline:
            break
        case = f"decoding seed {seed} iteration {iteration}: {name} mutated by {what} ({len(data)} bytes)"
        progress.write_text(case, encoding="utf-8", errors="backslashreplace")
        if mode == "files":
            stem, ext = os.path.splitext(name)
            target = str(workdir / f"{ODD_NAMES[max(iteration, 0) % len(ODD_NAMES)]}{stem}{ext.upper()}")
            Path(target).write_bytes(data)
        else:
            target = name
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)  # the default action ends the process: a hang
        start = time.perf_counter()
        try:
            if mode == "files":
                result: object = decode_file(target, transform, MAX_PIXELS)
            else:
                result = decode_bytes(target, data, transform, MAX_PIXELS)
        except Exception as exc:
            result = exc
        finally:
            elapsed = time.perf_counter() - start
            signal.setitimer(signal.ITIMER_REAL, 0)
        if mode == "files":
            os.unlink(target)
        iterations += iteration >= 0
        slowest = max(slowest, (elapsed, case))
        if isinstance(result, Exception):
            problems.append(f"{case}: raised {type(result).__name__}: {result}")
        elif problem := decode_problem(target, data, result, transform):
            problems.append(f"{case}: {problem}")
        elif iteration < 0 and not isinstance(result, Decoded):
            problems.append(f"{case}: a valid seed did not decode: {result!r}")
        if isinstance(result, DecodeFailed):
            outcomes["failed: " + re.sub(r"[\d.]+", "N", result.reason.split(":")[0].split(" (")[0])[:40]] += 1
        else:
            outcomes[type(result).__name__] += 1
    return {"iterations": iterations, "outcomes": dict(outcomes), "slowest": slowest, "problems": problems[:20]}


def _child_main() -> None:
    """The fuzzing process: python -c CHILD_CODE MODE SECONDS PROGRESS TARGET, a JSON summary on stdout.

    MODE "bytes" and "files" run run_fuzz for SECONDS in the folder TARGET; "one" decodes the file TARGET
    within SECONDS. Its address space is limited, so a runaway allocation fails there, not in pytest.
    """
    mode, seconds, progress, target = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    if mode == "one":
        progress.write_text(f"decoding {target.name} ({target.stat().st_size} bytes)", encoding="utf-8")
        signal.setitimer(signal.ITIMER_REAL, seconds)
        start = time.perf_counter()
        result = decode_file(str(target), ImageTransform(), MAX_PIXELS)
        reason = result.reason if isinstance(result, DecodeFailed) else None
        summary = {"decoded": isinstance(result, Decoded), "reason": reason, "seconds": time.perf_counter() - start}
    else:
        summary = run_fuzz(mode, seconds, progress, target)
    print(json.dumps(summary))


CHILD_CODE = "from tests.test_fuzz import _child_main; _child_main()"


def _in_child(mode: str, seconds: float, target: Path) -> tuple[int, dict[str, Any], str]:
    """Run _child_main; (exit status, its summary, the case it was on when it ended)."""
    progress = target.parent / f"{target.name}.progress"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-c", CHILD_CODE, mode, str(seconds), str(progress), str(target)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + HANG_SECONDS + 60,
        check=False,
    )
    case = progress.read_text(encoding="utf-8") if progress.exists() else "(before the first case)"
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    if done.returncode == -signal.SIGALRM:
        case = f"killed by its timer while {case}"
    elif done.returncode != 0:
        case = f"exit status {done.returncode} while {case}; stderr: {done.stderr[-2000:]}"
    return done.returncode, summary, case


def _assert_fuzz_run(returncode: int, summary: dict[str, Any], case: str, minimum: int) -> None:
    assert returncode == 0, f"the fuzzing process died: {case}"
    slowest, slowest_case = summary["slowest"]
    print(f"\n{summary['iterations']} mutants; {summary['outcomes']}; slowest {slowest:.2f} s: {slowest_case}")
    assert summary["problems"] == [], "\n".join(summary["problems"])
    assert slowest < SLOW_SECONDS, f"a decode took {slowest:.1f} s: {slowest_case}"
    assert summary["iterations"] >= minimum, f"only {summary['iterations']} iterations ran"
    assert summary["outcomes"].get("Decoded", 0) > len(seed_images()), "no mutant decoded: the mutations are too rough"


@pytest.mark.slow
def test_fuzz_decode_bytes_never_raises_and_always_answers_in_time() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _assert_fuzz_run(*_in_child("bytes", FUZZ_SECONDS, Path(tmp)), minimum=MIN_ITERATIONS)


@pytest.mark.slow
def test_fuzz_decode_file_with_odd_names() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp, "odd names ü")
        workdir.mkdir()
        _assert_fuzz_run(*_in_child("files", FUZZ_SECONDS / 4, workdir), minimum=MIN_ITERATIONS // 4)
        assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_regression_a_thin_image_within_the_pixel_cap_exhausts_memory() -> None:
    """A 1 x 20000 PNG (121 bytes, 0.02 MP, far under --max-pixels) is resized by ImageTransform.to_pixels
    ("shortest" side to 224) to 224 x 4,480,000 RGB pixels, about 3 GB: "out of memory" with 1 GiB of address
    space, and on a machine with the memory, several GB and many seconds per file (1 x 2000: ~1 GB, ~3 s).
    max_pixels bounds the source image, not the resize target. Ingest should decode it (crop first, or
    resize in steps) or refuse it with a reason that is not "lower --max-pixels".
    """
    with tempfile.TemporaryDirectory() as tmp:
        thin = Path(tmp, "thin.png")
        Image.new("L", (1, 20_000), 128).save(thin)
        returncode, summary, case = _in_child("one", 20, thin)
    assert returncode == 0, case
    assert summary["decoded"] or not summary["reason"].startswith("out of memory"), summary


@pytest.mark.slow
def test_regression_raw_preview_search_is_unbounded() -> None:
    """pipeline/decode.py raw_preview counts only the JPEG starts that open (MAX_RAW_PREVIEWS), not the
    false starts, and copies data[start:] for each: a 32 KiB ".dng" of repeated b"\\xff\\xd8\\xff\\x00"
    takes about 20 s (64 KiB: about 80 s), quadratic in the file size.
    """
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "hostile.dng")
        raw.write_bytes(b"\xff\xd8\xff\x00" * 8192)
        returncode, summary, case = _in_child("one", 3, raw)
    assert returncode == 0, f"over 3 s: {case}"
    assert not summary["decoded"] and summary["seconds"] < 3, summary


@pytest.mark.parametrize("where", ["width::bigint > 1", "caption LIKE '%dog%' OR caption = 'it''s -- (a; b'"])
def test_regression_legitimate_filters_pass_the_checks(where_lib: Clipdex, where: str) -> None:
    """A cast ('::') is not a placeholder, and comments, ';' and parentheses inside strings are text."""
    assert where_lib.search("a photo", where=where, k=10)
    where_lib.collection.check_filter(where)
