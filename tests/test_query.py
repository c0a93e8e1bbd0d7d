"""Query algebra: parsing rclip-style terms, and what weighted and negative terms do to results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import Clipdex, ClipdexError
from pipeline.query import Term, parse_terms
from tests.conftest import run


def test_parse_texts_images_weights_and_signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(b"x")
    assert parse_terms(["a dog"]) == [Term("a dog")]
    assert parse_terms(["beach", "+", "photo.jpg", "-", "crowd"]) == [
        Term("beach"),
        Term("photo.jpg", 1.0, "image"),
        Term("crowd", -1.0),
    ]
    assert parse_terms(["2:beach", "-", "0.5:photo.jpg"]) == [Term("beach", 2.0), Term("photo.jpg", -0.5, "image")]
    assert parse_terms(["-", "crowd"]) == [Term("crowd", -1.0)]
    assert parse_terms(["12:30 at noon"]) == [Term("12:30 at noon")]  # a time, not a weight
    (tmp_path / "dog").write_bytes(b"x")
    assert parse_terms(["dog"]) == [Term("dog")]  # a plain word stays a text, whatever files are here
    assert parse_terms(["./dog"]) == [Term("./dog", 1.0, "image")]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "the search text is empty"),
        (["  "], "the search text is empty"),
        (["beach", "+"], "ends with an operator"),
        (["beach", "+", "-", "x"], "two operators in a row"),
        (["beach", "dog"], r"follows a term without \+ or -"),
        (["-", "-", "crowd"], "two operators in a row"),
        (["0:beach"], "weight 0"),
        (["99999:beach"], "weight 99999"),
    ],
)
def test_parse_errors_say_how_to_write_it(tokens: list[str], message: str) -> None:
    with pytest.raises(ClipdexError, match=message):
        parse_terms(tokens)


def test_query_vector_is_the_normalised_weighted_sum(lib: Clipdex, photos: Path) -> None:
    image = photos / "good" / "photo.jpg"
    terms = [Term("beach", 2.0), Term(str(image), 1.0, "image"), Term("crowd", -1.0)]
    expected = 2 * lib.embed_text("beach") + lib.embed_image(image) - lib.embed_text("crowd")
    assert np.allclose(lib.query_vector(terms), expected / np.linalg.norm(expected), atol=1e-6)
    assert lib.query([Term("beach")], k=5) == lib.search("beach", k=5)
    with pytest.raises(ClipdexError, match="cancel each other out"):
        lib.query_vector([Term("beach"), Term("beach", -1.0)])


def test_image_and_id_terms_pull_results_their_way(lib: Clipdex, photos: Path) -> None:
    photo = photos / "good" / "photo.jpg"
    hits = lib.query([Term("a blue sky"), Term(str(photo), 50.0, "image")], k=1)
    assert hits[0].path == str(photo)
    stored = lib.collection.get_by_path(str(photo))
    assert stored is not None
    by_id = lib.query([Term(stored.id, 1.0, "id")], k=3)
    assert stored.id not in {h.id for h in by_id}  # a stored image term leaves itself out
    score = {h.path: h.score for h in lib.query([Term("a blue sky")], k=17)}[str(photo)]
    pushed = {h.path: h.score for h in lib.query([Term("a blue sky"), Term(str(photo), -1.0, "image")], k=17)}
    assert pushed[str(photo)] < score


def test_cli_algebra_with_flags_filters_and_floor(lib: Clipdex, photos: Path, db: str) -> None:
    photo = str(photos / "good" / "photo.jpg")
    out = run("search", "beach", "+", f"50:{photo}", "-k", "1", "--db", db, "--paths").stdout
    assert out == photo + "\n"
    flags = run("search", "beach", "--like", photo, "--not", "crowd", "-k", "3", "--db", db, "--json").stdout
    expected = [h.id for h in lib.query([Term("beach"), Term(photo, 1, "image"), Term("crowd", -1)], k=3)]
    assert [json.loads(line)["id"] for line in flags.splitlines()] == expected
    gifs = run("search", "beach", "-", "crowd", "--where", "format = 'GIF'", "--db", db, "--paths").stdout
    assert gifs == f"{photos}/good/animated.gif\n"
    none = run("search", "beach", "--unlike", photo, "--min-score", "0.99", "--db", db)
    assert none.stderr == "no matches at or above score 0.99\n"
    bad = run("search", "beach", "dog", "--db", db, ok=False)
    assert "follows a term without + or -; quote multi-word texts" in bad.stderr
