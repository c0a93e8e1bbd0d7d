"""Errors raised by a collection.

StorageError
 ├── CollectionNotFound      nothing at the given path or URI yet
 ├── CollectionUnreadable    something is there, but it is not a clipdex collection we can read
 ├── CollectionBusy          another process is writing to the collection
 └── BadFilter               a --where expression LanceDB cannot run
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


class BadFilter(StorageError):
    """A metadata filter that LanceDB cannot parse or run."""
