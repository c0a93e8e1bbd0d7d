"""The search box's query algebra, as the CLI writes it: `beach + photo.jpg - crowd`, `2:beach`,
plus `like:ID` for a stored image. The server never opens a path a client names: an image term is a
stored image, found by its id or by its file's name (or path) in the collection."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from typing import Any

from pipeline.errors import BadQuery
from pipeline.ingest.scan import IMAGE_EXTENSIONS
from pipeline.query import EMPTY, MAX_WEIGHT, Term

MAX_TERMS = 16
# W:term as pipeline.query reads it: a weight, then a term not starting with a digit or a space.
_WEIGHT = re.compile(r"^([+-]?\d+(?:\.\d+)?):(?![\d\s])(.+)$", re.DOTALL)
_OPERATOR = re.compile(r"(?<=\s)([+-])(?=\s)")  # a lone + or -, as pipeline.library.as_terms splits one string
LIKE = "like:"


def parse_box(text: str, likes: Iterable[str], find_image: ImageFinder) -> list[Term]:
    """Terms from the box's text and the like= ids; raises BadQuery with a sentence for the page."""
    parts = [p for p in _OPERATOR.split(" " + text.strip() + " ") if p.strip()] if text.strip() else []
    terms: list[Term] = []
    sign, expect_term = 1.0, True
    for raw in parts:
        part = raw.strip()
        if part in ("+", "-"):
            if expect_term and (terms or sign < 0):
                raise BadQuery(f"two operators in a row before {part!r}; write words + words - words")
            sign, expect_term = (-1.0 if part == "-" else 1.0), True
            continue
        weight, value = 1.0, part
        match = _WEIGHT.match(part)
        if match:
            weight, value = float(match.group(1)), match.group(2).strip()
        if not math.isfinite(weight) or weight == 0 or abs(weight) > MAX_WEIGHT:
            raise BadQuery(f"weight {weight:g} in {part!r}; use a number between 0 and {MAX_WEIGHT:g}")
        terms.append(_term(value, sign * weight, find_image))
        sign, expect_term = 1.0, False
    if parts and expect_term:
        raise BadQuery("the query ends with + or -; add words or an image after it")
    terms += [Term(i, 1.0, "id") for i in likes if i]
    if not terms:
        raise BadQuery(EMPTY.replace("clipdex search", "search for"))
    if len(terms) > MAX_TERMS:
        raise BadQuery(f"the query has {len(terms)} terms; use at most {MAX_TERMS}")
    return terms


class ImageFinder:
    """Stored images by id, path or file name (the Overview's rows)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.ids = {str(r["id"]) for r in rows}
        self.paths = {str(r["path"]): str(r["id"]) for r in rows}
        self.names: dict[str, list[str]] = {}
        for r in rows:
            self.names.setdefault(os.path.basename(str(r["path"])), []).append(str(r["id"]))

    def find(self, value: str) -> str | None:
        """The id of the stored image a term names, None if it names no image; BadQuery if several."""
        if value.startswith(LIKE):
            image_id = value[len(LIKE) :].strip()
            if image_id not in self.ids:
                raise BadQuery(f"{value}: no image with this id in the collection")
            return image_id
        if value in self.paths:
            return self.paths[value]
        if not _looks_like_file(value):
            return None
        found = self.names.get(os.path.basename(value), [])
        if len(found) > 1:
            raise BadQuery(f"{value}: {len(found)} images have this name; click the one you mean for more like it")
        if not found:
            raise BadQuery(
                f"{value}: no stored image has this name, and the server never reads files by path; "
                "drop the image on the page instead"
            )
        return found[0]


def _term(value: str, weight: float, find_image: ImageFinder) -> Term:
    if not value:
        raise BadQuery(EMPTY.replace("clipdex search", "search for"))
    image_id = find_image.find(value)
    return Term(image_id, weight, "id") if image_id is not None else Term(value, weight, "text")


def _looks_like_file(value: str) -> bool:
    return " " not in value and os.path.splitext(value)[1].lower() in IMAGE_EXTENSIONS
