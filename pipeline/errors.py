"""Errors of the pipeline layer; models.ModelError and storage.StorageError complete the set.

ClipdexError
 ├── ConfigError       a config file, environment variable or flag with a bad value
 ├── InputNotFound     a path to ingest or a query image does not exist
 ├── BadQueryImage     a query image that cannot be decoded
 ├── BadQuery          a query that cannot be run as given (empty, terms that cancel out, ...)
 ├── ManifestError     a --captions file that cannot be parsed
 ├── ModelMismatch     the collection holds vectors of another model
 ├── BadOption         an option value a command cannot use (--labels, --store, -k, --model, ...)
 ├── NothingToDo       the collection or folder holds nothing the command can work on
 ├── FilesUnreadable   stored files cannot be read again, so a command refuses to go on
 ├── OutputError       a file clipdex was asked to write cannot be written
 ├── ServerError       a running clipdex serve cannot be reached, or refused the request
 └── EngineError       an ingest engine (decode processes, Ray) cannot run, or its job failed

USER_ERRORS lists every root a command may turn into one line; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from models import ModelError
from storage import StorageError
from storage.errors import first_line


class ClipdexError(Exception):
    """Something the user can fix; the message says what and how."""


class ConfigError(ClipdexError):
    """A configuration value is malformed."""


class InputNotFound(ClipdexError):
    """A path given to ingest or query does not exist."""


class BadQueryImage(ClipdexError):
    """The query image cannot be decoded."""


class BadQuery(ClipdexError):
    """A query that cannot be run as given."""


class ManifestError(ClipdexError):
    """A captions manifest cannot be parsed."""


class ModelMismatch(ClipdexError):
    """The collection was built with another model; mixing vectors is refused."""


class BadOption(ClipdexError):
    """An option value the command cannot use."""


class NothingToDo(ClipdexError):
    """There is nothing for the command to work on."""


class FilesUnreadable(ClipdexError):
    """Stored files could not be read again."""


class ServerError(ClipdexError):
    """A clipdex server could not be reached or refused the request."""


class OutputError(ClipdexError):
    """An output file cannot be written."""


class EngineError(ClipdexError):
    """An ingest engine cannot run, or its job failed."""


USER_ERRORS: tuple[type[Exception], ...] = (ClipdexError, ModelError, StorageError)

__all__ = [
    "USER_ERRORS",
    "BadOption",
    "BadQuery",
    "BadQueryImage",
    "ClipdexError",
    "ConfigError",
    "EngineError",
    "FilesUnreadable",
    "InputNotFound",
    "ManifestError",
    "ModelMismatch",
    "NothingToDo",
    "OutputError",
    "ServerError",
    "first_line",
]
