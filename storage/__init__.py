"""The collection: LanceDB tables of image vectors and metadata, searched by vector and SQL filters."""

from __future__ import annotations

from storage.collection import Collection
from storage.errors import BadFilter, CollectionNotFound, CollectionUnreadable, StorageError
from storage.records import CaptionUpdate, Failure, FileState, Hit, ImageRecord, Moved, Stats
from storage.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "BadFilter",
    "CaptionUpdate",
    "Collection",
    "CollectionNotFound",
    "CollectionUnreadable",
    "Failure",
    "FileState",
    "Hit",
    "ImageRecord",
    "Moved",
    "Stats",
    "StorageError",
]
