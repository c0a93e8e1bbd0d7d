"""Query algebra: texts, image files and stored images, weighted and negated, into one vector.

beach + ./photo.jpg - crowd        (rclip-style, as CLI arguments)
2:beach + 0.5:./photo.jpg - crowd  (a weight before a colon)
--like photo.jpg --not crowd       (the same with flags)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import BadQuery
from pipeline.ingest.scan import IMAGE_EXTENSIONS

KINDS = ("text", "image", "id")
MAX_WEIGHT = 1000.0
EMPTY = "the search text is empty; give some words, e.g. clipdex search 'a dog'"
# W:term, where the term does not start with a digit or a space ("10:30 train" stays a text).
_WEIGHT = re.compile(r"^([+-]?\d+(?:\.\d+)?):(?![\d\s])(.+)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One part of a query: a text, an image file or a stored image's id; negative weights push away."""

    value: str
    weight: float = 1.0
    kind: str = "text"  # text, image or id

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


def looks_like_image(value: str) -> bool:
    """A term is an image file when it is written like a path (./dog, ~/a.jpg, x/y) or has an image
    extension, and exists: a plain word stays a text, whatever files the working folder holds."""
    path_like = (
        os.sep in value or value.startswith(("~", ".")) or os.path.splitext(value)[1].lower() in IMAGE_EXTENSIONS
    )
    return path_like and os.path.isfile(os.path.expanduser(value))


def parse_terms(tokens: Sequence[str]) -> list[Term]:
    """Terms from CLI arguments: TERM [(+|-) TERM]...; a term naming an existing file is an image.

    'W:term' gives a weight W; '-' before a term negates it.
    """
    terms: list[Term] = []
    sign = 1.0
    expect_term = True
    for token in tokens:
        if token in ("+", "-"):
            if expect_term and (terms or sign < 0):
                raise BadQuery(f"query: two operators in a row before {token!r}; write TERM + TERM - TERM")
            sign = -1.0 if token == "-" else 1.0
            expect_term = True
            continue
        if not expect_term:
            raise BadQuery(f"query: {token!r} follows a term without + or -; quote multi-word texts")
        weight, value = 1.0, token
        match = _WEIGHT.match(token)
        if match and not os.path.exists(token):
            weight, value = float(match.group(1)), match.group(2)
        if not value.strip():
            raise BadQuery(EMPTY)
        if not math.isfinite(weight) or weight == 0 or abs(weight) > MAX_WEIGHT:
            raise BadQuery(f"query: weight {weight:g} in {token!r}; use a number between 0 and {MAX_WEIGHT:g}")
        kind = "image" if looks_like_image(value) else "text"
        terms.append(Term(value, sign * weight, kind))
        sign, expect_term = 1.0, False
    if expect_term and terms:
        raise BadQuery("query: it ends with an operator; add a term after the last + or -")
    if not terms:
        raise BadQuery(EMPTY)
    return terms
