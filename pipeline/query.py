"""Query algebra: texts, image files and stored images, weighted and negated, into one vector.

beach + ./photo.jpg - crowd        (rclip-style, as CLI arguments)
2:beach + 0.5:./photo.jpg - crowd  (a weight before a colon)
--like photo.jpg --not crowd       (the same with flags)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import ClipdexError

KINDS = ("text", "image", "id")
EMPTY = "the search text is empty; give some words, e.g. clipdex search 'a dog'"
_WEIGHT = re.compile(r"^([+-]?\d+(?:\.\d+)?):(.+)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One part of a query: a text, an image file or a stored image's id; negative weights push away."""

    value: str
    weight: float = 1.0
    kind: str = "text"  # text, image or id

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


def parse_terms(tokens: Sequence[str]) -> list[Term]:
    """Terms from CLI arguments: TERM [(+|-) TERM]...; a term naming an existing file is an image.

    'W:term' gives a weight W; '-' before a term negates it.
    """
    terms: list[Term] = []
    sign = 1.0
    expect_term = True
    for token in tokens:
        if token in ("+", "-"):
            if expect_term and terms:
                raise ClipdexError(f"query: two operators in a row before {token!r}; write TERM + TERM - TERM")
            sign = -1.0 if token == "-" else 1.0
            expect_term = True
            continue
        if not expect_term:
            raise ClipdexError(f"query: {token!r} follows a term without + or -; quote multi-word texts")
        weight, value = 1.0, token
        match = _WEIGHT.match(token)
        if match and not os.path.exists(token):
            weight, value = float(match.group(1)), match.group(2)
        if not value.strip():
            raise ClipdexError(EMPTY)
        kind = "image" if os.path.isfile(os.path.expanduser(value)) else "text"
        terms.append(Term(value, sign * weight, kind))
        sign, expect_term = 1.0, False
    if expect_term and terms:
        raise ClipdexError("query: it ends with an operator; add a term after the last + or -")
    if not terms:
        raise ClipdexError(EMPTY)
    return terms
