"""Errors raised by a collection.

StorageError
 ├── CollectionNotFound      nothing at the given path or URI yet
 ├── CollectionUnreadable    something is there, but it is not a clipdex collection we can read
 ├── CollectionBusy          another process is writing to the collection
 ├── CollectionDamaged       a table's files are missing or cut short (verify --repair can go back)
 ├── BadFilter               a --where expression LanceDB cannot run
 └── BadColumn               an extra column (tags, clusters) with a name or type that cannot be used
"""

from __future__ import annotations


class StorageError(Exception):
    """A collection could not be opened, read or written."""


class CollectionNotFound(StorageError):
    """No collection exists at that location."""


class CollectionUnreadable(StorageError):
    """The location holds something that is not a readable clipdex collection."""


class CollectionBusy(StorageError):
    """Another clipdex process holds the collection's writer lock."""


class CollectionDamaged(StorageError):
    """A data, index or version file of the collection is missing or truncated."""


class BadFilter(StorageError):
    """A metadata filter that LanceDB cannot parse or run."""


class BadColumn(StorageError):
    """An extra column name that is not allowed, or one that already holds another type."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (the class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
