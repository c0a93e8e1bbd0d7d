"""Everything that moves data between the encoder and the collection: scan, decode, ingest, query.

  errors, config   the error tree and Settings
  library          Clipdex: the typed API that the CLI and the server are thin layers over
  query            query algebra (terms, weights)
  shapes           the JSON shapes of results (CLI --json and HTTP)
  ingest/          scan, decode, plan, the one embed step, the local and Ray engines
  maintain/        verify (and repair), reembed
  analyse/         duplicates, classify, clusters and the map, evaluate
  cli/             the click commands (the only click importer), text rendering, the HTTP client
  server/          the FastAPI app and its page (the only FastAPI and uvicorn importer)

The public API is ``Clipdex``; it loads on first use, so decode worker processes (which import
``pipeline.ingest.decode``) start without LanceDB or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Settings as Settings
    from pipeline.config import load_settings as load_settings
    from pipeline.errors import BadQuery as BadQuery
    from pipeline.errors import BadQueryImage as BadQueryImage
    from pipeline.errors import ClipdexError as ClipdexError
    from pipeline.errors import ConfigError as ConfigError
    from pipeline.errors import EngineError as EngineError
    from pipeline.errors import InputNotFound as InputNotFound
    from pipeline.errors import ManifestError as ManifestError
    from pipeline.errors import ModelMismatch as ModelMismatch
    from pipeline.errors import OutputError as OutputError
    from pipeline.ingest.progress import Progress as Progress
    from pipeline.ingest.sync import IngestReport as IngestReport
    from pipeline.library import Clipdex as Clipdex
    from pipeline.library import collection_info as collection_info
    from storage import Hit as Hit

_EXPORTS = {
    "Clipdex": "pipeline.library",
    "collection_info": "pipeline.library",
    "IngestReport": "pipeline.ingest.sync",
    "Progress": "pipeline.ingest.progress",
    "Settings": "pipeline.config",
    "load_settings": "pipeline.config",
    "Hit": "storage",
    "ClipdexError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "InputNotFound": "pipeline.errors",
    "BadQueryImage": "pipeline.errors",
    "ManifestError": "pipeline.errors",
    "ModelMismatch": "pipeline.errors",
    "BadQuery": "pipeline.errors",
    "EngineError": "pipeline.errors",
    "OutputError": "pipeline.errors",
}
__all__ = [
    "BadQuery",
    "BadQueryImage",
    "Clipdex",
    "ClipdexError",
    "ConfigError",
    "EngineError",
    "Hit",
    "IngestReport",
    "InputNotFound",
    "ManifestError",
    "ModelMismatch",
    "OutputError",
    "Progress",
    "Settings",
    "collection_info",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
