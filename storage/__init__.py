"""The collection: LanceDB tables of image vectors and metadata, searched by vector and SQL filters."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storage.errors import BadFilter, CollectionBusy, CollectionNotFound, CollectionUnreadable, StorageError
from storage.records import CaptionUpdate, Failure, FileState, Hit, ImageRecord, Moved, Stats

if TYPE_CHECKING:
    from storage.collection import Collection as Collection
    from storage.collection import Staging as Staging
    from storage.collection import records_table as records_table
    from storage.schema import SCHEMA_VERSION as SCHEMA_VERSION

# LanceDB and Arrow load on first use (about 2 s): a CLI query sent to a server never needs them.
_LAZY = {
    "Collection": "storage.collection",
    "Staging": "storage.collection",
    "records_table": "storage.collection",
    "SCHEMA_VERSION": "storage.schema",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "BadFilter",
    "CaptionUpdate",
    "Collection",
    "CollectionBusy",
    "CollectionNotFound",
    "CollectionUnreadable",
    "Failure",
    "FileState",
    "Hit",
    "ImageRecord",
    "Moved",
    "Staging",
    "Stats",
    "StorageError",
    "records_table",
]
