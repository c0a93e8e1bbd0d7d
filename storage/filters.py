"""--where filters: refused before LanceDB sees them when they could escape their parentheses, and
LanceDB's errors about them turned into one line that names the columns."""

from __future__ import annotations

import difflib
import re
from datetime import datetime

from storage.errors import BadFilter, first_line
from storage.schema import images_schema

MAX_WHERE_CHARS = 4000  # a filter longer than this is refused
MAX_LITERAL_CHARS = 1000  # a quoted string longer than this is refused
# Functions a filter may call: none of them can make a value much larger than its arguments (repeat,
# lpad, rpad and friends allocate what they are told to, and a filter could then take the process's
# memory). SQL words that take parentheses are allowed too.
ALLOWED_FUNCTIONS = frozenset(
    {"lower", "upper", "length", "char_length", "character_length", "octet_length", "abs", "round", "floor",
     "ceil", "sqrt", "coalesce", "nullif", "cast", "try_cast", "date_trunc", "date_part", "extract", "strpos",
     "starts_with", "ends_with", "substr", "substring", "trim", "btrim", "ltrim", "rtrim", "regexp_like",
     "regexp_match", "to_timestamp", "now", "greatest", "least", "timestamp", "date"}
)  # fmt: skip
SQL_WORDS = frozenset({"and", "or", "not", "in", "is", "like", "ilike", "between", "as", "then", "else", "when"})
# Columns clipdex keeps for itself: never offered in an error message.
INTERNAL_COLUMNS = frozenset({"vector", "caption_vector", "mtime_ns", "hash", "caption_stamp", "file_id"})
# The columns every collection has that a filter may name (tags and clusters come on top).
BUILT_IN_COLUMNS = ", ".join(n for n in images_schema(1).names if n not in INTERNAL_COLUMNS)
KINDS = ("image", "video")  # the values of the kind column


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
    if len(where) > MAX_WHERE_CHARS:
        raise BadFilter(f"--where is {len(where)} characters long; keep it under {MAX_WHERE_CHARS}")
    if any(
        len(literal) > MAX_LITERAL_CHARS
        for literal in re.findall(r"'([^']*)'|\"([^\"]*)\"", where)
        for literal in literal
    ):
        raise BadFilter(f"--where {where[:80]!r}...: a quoted value is over {MAX_LITERAL_CHARS} characters; shorten it")
    if quote or text.count("(") != text.count(")") or _closes_early(text):
        what = "an unclosed quote" if quote else "unbalanced parentheses"
        raise BadFilter(f"--where {where!r}: {what}; close each one you open")
    if re.search(r"--|/\*|\*/|;", text):
        raise BadFilter(f"--where {where!r}: comments and ';' are not allowed outside quoted strings")
    if re.search(r"[?$]|(?<!:):(?!:)|:::", text):  # '::' is a cast (width::bigint); ':x', '?', '$1' placeholders
        raise BadFilter(f"--where {where!r}: placeholders (?, $1, :name) are not supported; put values in quotes")
    _check_values(where)
    for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text):
        if name.lower() not in ALLOWED_FUNCTIONS | SQL_WORDS:
            raise BadFilter(
                f"--where {where!r}: {name}() is not allowed in a filter; use "
                f"{', '.join(sorted(ALLOWED_FUNCTIONS - {'timestamp', 'date'}))}"
            )


def _check_values(where: str) -> None:
    """Values a filter compares with that can only be a mistake, named before any query runs: a
    date that is not one (taken_at > 'June', '2024-13-01'), a kind that does not exist."""
    for value in (v for m in _DATE_VALUES.finditer(where) for v in m.groups() if v is not None):
        if not _is_date(value):
            raise BadFilter(
                f"--where {where!r}: '{value}' is not a date; write it as 2024-06-01 (or 2024-06, 2024, "
                "2024-06-01 12:30)"
            )
    for value in _KIND_VALUES.findall(where):
        if value not in KINDS:
            raise BadFilter(
                f"--where {where!r}: kind is 'image' (photos) or 'video' (moments of videos), not '{value}'"
            )


def _is_date(value: str) -> bool:
    match = re.fullmatch(_DATE[1:-1], value)
    if match is None:
        return False
    parts = (int(g) if g else d for g, d in zip(match.groups(), (0, 1, 1, 0, 0, 0), strict=True))
    year, month, day, hour, minute, second = parts
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return True


TIMESTAMP_COLUMNS = ("taken_at", "ingested_at")
# A timestamp column compared with a quoted date as people write it: '2024', '2024-06', '2024-06-01',
# '2024-06-01 12:30' (also after BETWEEN ... AND).
_DATE = r"'(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?'"
_COMPARED = re.compile(
    r"\b(" + "|".join(TIMESTAMP_COLUMNS) + r")\s*(<=|>=|<>|!=|=|<|>|\bBETWEEN\b)\s*(?!TIMESTAMP)" + _DATE,
    re.IGNORECASE,
)
_AND_DATE = re.compile(r"(\bBETWEEN\s+TIMESTAMP\s+'[^']*'\s+AND\s+)" + _DATE, re.IGNORECASE)
# The quoted values a timestamp column is compared with (and BETWEEN's second one), as written.
_DATE_VALUES = re.compile(
    r"\b(?:" + "|".join(TIMESTAMP_COLUMNS) + r")\s*(?:<=|>=|<>|!=|=|<|>)\s*'([^']*)'"
    r"|\b(?:" + "|".join(TIMESTAMP_COLUMNS) + r")\s+BETWEEN\s+'([^']*)'\s+AND\s+'([^']*)'",
    re.IGNORECASE,
)
_KIND_VALUES = re.compile(r"\bkind\s*(?:=|<>|!=)\s*'([^']*)'", re.IGNORECASE)


def with_timestamps(where: str) -> str:
    """The filter with dates compared to timestamp columns written as TIMESTAMP literals, which
    LanceDB needs: taken_at > '2024-06-01' -> taken_at > TIMESTAMP '2024-06-01 00:00:00'."""

    def literal(m: re.Match[str], first: int) -> str:
        year, month, day, hour, minute, second = (m.group(i) for i in range(first, first + 6))
        return f"TIMESTAMP '{year}-{month or '01'}-{day or '01'} {hour or '00'}:{minute or '00'}:{second or '00'}'"

    where = _COMPARED.sub(lambda m: f"{m.group(1)} {m.group(2)} {literal(m, 3)}", where)
    return _AND_DATE.sub(lambda m: f"{m.group(1)}{literal(m, 2)}", where)


def bad_filter(where: str | None, exc: Exception) -> BadFilter:
    """LanceDB's error about a filter, as one line that says what can be filtered on (never the
    library's source paths, nor the columns only clipdex itself uses)."""
    reason = re.split(r",? /(?:root|rustc|home|usr)/\S*", first_line(exc))[0]
    unknown = re.search(r"No field named ([\w.\"]+)\. Valid fields are (.*?)\.?$", reason)
    if unknown:  # LanceDB names the columns, the internal ones too
        name = unknown.group(1).strip('"').split(".")[-1]
        fields = [f.strip("` ") for f in unknown.group(2).split(",")]
        shown = [f for f in fields if f and f not in INTERNAL_COLUMNS]
        close = difflib.get_close_matches(name, shown, n=1)
        hint = (
            f"; did you mean {close[0]}?"
            if close
            else "; tags and clusters are columns made by clipdex classify --store and clipdex cluster "
            "(a reembed drops them: run those again)."
        )
        return BadFilter(f"--where {where!r}: no column named {name}{hint} Columns: {', '.join(shown)}")
    parser = re.search(r"sql parser error: (.*?)\)?$", reason)
    if parser:  # LanceDB quotes the statement it wrapped the filter in: only the parser's words matter
        reason = f"not a filter clipdex can read ({parser.group(1).rstrip('.')})"
    return BadFilter(
        f"--where {where!r}: {reason}; write it as SQL, e.g. width > 1000 AND format = 'JPEG', strings in single "
        f"quotes; filter on {BUILT_IN_COLUMNS}"
    )


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
