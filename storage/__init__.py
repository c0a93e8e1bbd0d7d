"""The collection: LanceDB tables of image vectors and metadata, searched by vector and SQL filters.

Modules: collection (the verbs), filters, locking, staging, index, arrow, schema, records, errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storage.errors import (
    BadColumn,
    BadFilter,
    CollectionBusy,
    CollectionDamaged,
    CollectionNotFound,
    CollectionUnreadable,
    StorageError,
)
from storage.index import Compactor, IndexBuilder, IndexSpec
from storage.records import CaptionUpdate, Failure, FileState, Hit, ImageRecord, Moment, Moved, Stats

if TYPE_CHECKING:
    from storage.arrow import conform as conform
    from storage.arrow import records_table as records_table
    from storage.collection import Collection as Collection
    from storage.schema import SCHEMA_VERSION as SCHEMA_VERSION
    from storage.staging import Staging as Staging

# LanceDB and Arrow load on first use (about 2 s): a CLI query sent to a server never needs them.
_LAZY = {
    "Collection": "storage.collection",
    "Staging": "storage.staging",
    "records_table": "storage.arrow",
    "conform": "storage.arrow",
    "SCHEMA_VERSION": "storage.schema",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "BadColumn",
    "BadFilter",
    "CaptionUpdate",
    "Collection",
    "CollectionBusy",
    "CollectionDamaged",
    "CollectionNotFound",
    "CollectionUnreadable",
    "Compactor",
    "Failure",
    "FileState",
    "Hit",
    "ImageRecord",
    "IndexBuilder",
    "IndexSpec",
    "Moment",
    "Moved",
    "Staging",
    "Stats",
    "StorageError",
    "conform",
    "records_table",
]
