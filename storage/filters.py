"""--where filters: refused before LanceDB sees them when they could escape their parentheses, and
LanceDB's errors about them turned into one line that names the columns."""

from __future__ import annotations

import re

from storage.errors import BadFilter, first_line

BUILT_IN_COLUMNS = (
    "id, path, size, mtime_ns, width, height, format, taken_at, description, caption, caption_source, ingested_at"
)


def check_where(where: str) -> None:
    """Refuse what could escape the parentheses a filter is wrapped in (and the filters ANDed to
    it): unbalanced parentheses, comments and statement ends outside strings; and placeholders,
    which LanceDB cannot bind (it panics on them)."""
    bare, quote = [], ""  # the filter outside quoted strings (each string becomes '')
    for char in where:
        if quote:
            if char == quote:
                quote = ""
                bare.append(char)
        else:
            quote = char if char in "'\"" else ""
            bare.append(char)
    text = "".join(bare)
    if quote or text.count("(") != text.count(")") or _closes_early(text):
        what = "an unclosed quote" if quote else "unbalanced parentheses"
        raise BadFilter(f"--where {where!r}: {what}; close each one you open")
    if re.search(r"--|/\*|\*/|;", text):
        raise BadFilter(f"--where {where!r}: comments and ';' are not allowed outside quoted strings")
    if re.search(r"[?$]|(?<!:):(?!:)|:::", text):  # '::' is a cast (width::bigint); ':x', '?', '$1' placeholders
        raise BadFilter(f"--where {where!r}: placeholders (?, $1, :name) are not supported; put values in quotes")


def bad_filter(where: str | None, exc: Exception) -> BadFilter:
    """LanceDB's error about a filter, as one line that says what can be filtered on."""
    reason = first_line(exc)
    if "Valid fields" in reason:  # LanceDB already names the columns
        return BadFilter(f"--where {where!r}: {reason}")
    return BadFilter(f"--where {where!r}: {reason}; filter on {BUILT_IN_COLUMNS} (SQL, strings in single quotes)")


def sql_str(value: str) -> str:
    """A string literal for LanceDB's SQL."""
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: list[str]) -> str:
    """column IN ('a', 'b', ...)."""
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


def _closes_early(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if depth < 0:
            return True
    return False
