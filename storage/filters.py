"""--where filters: refused before LanceDB sees them when they could escape their parentheses, and
LanceDB's errors about them turned into one line that names the columns."""

from __future__ import annotations

import difflib
import re

from storage.errors import BadFilter, first_line

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
    for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text):
        if name.lower() not in ALLOWED_FUNCTIONS | SQL_WORDS:
            raise BadFilter(
                f"--where {where!r}: {name}() is not allowed in a filter; use "
                f"{', '.join(sorted(ALLOWED_FUNCTIONS - {'timestamp', 'date'}))}"
            )


TIMESTAMP_COLUMNS = ("taken_at", "ingested_at")
# A timestamp column compared with a quoted date as people write it: '2024', '2024-06', '2024-06-01',
# '2024-06-01 12:30' (also after BETWEEN ... AND).
_DATE = r"'(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?'"
_COMPARED = re.compile(
    r"\b(" + "|".join(TIMESTAMP_COLUMNS) + r")\s*(<=|>=|<>|!=|=|<|>|\bBETWEEN\b)\s*(?!TIMESTAMP)" + _DATE,
    re.IGNORECASE,
)
_AND_DATE = re.compile(r"(\bBETWEEN\s+TIMESTAMP\s+'[^']*'\s+AND\s+)" + _DATE, re.IGNORECASE)


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
