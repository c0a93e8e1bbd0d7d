"""Everything that moves data between the encoder and the collection: scan, decode, ingest, query.

The public API is ``Clipdex``; it loads on first use, so decode worker processes (which import
``pipeline.decode``) start without LanceDB or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Settings as Settings
    from pipeline.config import load_settings as load_settings
    from pipeline.errors import BadQueryImage as BadQueryImage
    from pipeline.errors import ClipdexError as ClipdexError
    from pipeline.errors import ConfigError as ConfigError
    from pipeline.errors import InputNotFound as InputNotFound
    from pipeline.errors import ManifestError as ManifestError
    from pipeline.errors import ModelMismatch as ModelMismatch
    from pipeline.ingest import IngestReport as IngestReport
    from pipeline.ingest import Progress as Progress
    from pipeline.library import Clipdex as Clipdex
    from pipeline.library import collection_info as collection_info
    from storage import Hit as Hit

_EXPORTS = {
    "Clipdex": "pipeline.library",
    "collection_info": "pipeline.library",
    "IngestReport": "pipeline.ingest",
    "Progress": "pipeline.ingest",
    "Settings": "pipeline.config",
    "load_settings": "pipeline.config",
    "Hit": "storage",
    "ClipdexError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "InputNotFound": "pipeline.errors",
    "BadQueryImage": "pipeline.errors",
    "ManifestError": "pipeline.errors",
    "ModelMismatch": "pipeline.errors",
}
__all__ = [
    "BadQueryImage",
    "Clipdex",
    "ClipdexError",
    "ConfigError",
    "Hit",
    "IngestReport",
    "InputNotFound",
    "ManifestError",
    "ModelMismatch",
    "Progress",
    "Settings",
    "collection_info",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
