"""Damaged collections: a data, index or version file truncated or deleted under LanceDB.

LanceDB reports such damage as RuntimeError("lance error: Not found: ...") or "LanceError(IO)";
here it becomes CollectionDamaged, one line naming the table and the way out. A table keeps its
history of versions, so repair can go back to the newest version whose files all read, and say
how many rows that loses (files ingested again bring them back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from storage.errors import CollectionDamaged, first_line

DAMAGE_MARKS = ("lance error: Not found", "LanceError(IO)", "failed to fill whole buffer", "Invalid data")
# I/O errors of the disk or the permissions, not of the collection's files: "cannot write" says those.
NOT_DAMAGE = ("No space left", "Read-only file system", "Permission denied", "quota")
SCAN_BATCH = 8192  # rows per batch when every column of a table is read to check it


def is_damage(exc: BaseException) -> bool:
    """True for LanceDB's errors about files that are missing or cut short."""
    text = str(exc)
    return (
        isinstance(exc, (RuntimeError, OSError, ValueError))
        and any(m in text for m in DAMAGE_MARKS)
        and not any(m in text for m in NOT_DAMAGE)
    )


def damaged(uri: str, exc: BaseException) -> CollectionDamaged:
    """The one-line error for a damaged collection."""
    reason = re.split(r", /(?:root|rustc|home|usr)/", first_line(exc))[0].removeprefix("lance error: ")
    table = re.search(r"(\w+)\.lance/", str(exc))
    where = f"its {table.group(1)} table" if table else "a table"
    return CollectionDamaged(
        f"--db {uri}: the collection is damaged ({where}: {reason}); run `clipdex verify --repair` to go back "
        "to the last version that reads (it says what that loses), or restore the folder from a backup"
    )


@dataclass(frozen=True)
class Rollback:
    """A table taken back to an earlier version."""

    table: str
    from_version: int
    to_version: int
    rows_before: int  # as the damaged version counted them
    rows_after: int


def unreadable(table: Any, columns: list[str] | None = None) -> str | None:
    """Why the table's current version cannot be read in full (every row of every column), or None."""
    try:
        for _ in table.search().select(columns or list(table.schema.names)).limit(None).to_batches(SCAN_BATCH):
            pass
    except Exception as exc:
        if is_damage(exc):
            return first_line(exc)
        raise
    return None


def roll_back(table: Any) -> Rollback | None:
    """Make the newest version of the table that reads in full its latest; None when none reads."""
    latest = int(table.version)
    rows_before = int(table.count_rows())
    for version in sorted((int(v["version"]) for v in table.list_versions()), reverse=True):
        if version >= latest:
            continue
        table.checkout(version)
        if unreadable(table) is None:
            rows_after = int(table.count_rows())
            table.restore()  # a new latest version with this one's contents
            return Rollback(table.name, latest, version, rows_before, rows_after)
    table.checkout_latest()
    return None
