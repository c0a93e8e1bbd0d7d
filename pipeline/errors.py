"""Errors of the pipeline layer; models.ModelError and storage.StorageError complete the set.

ClipdexError
 ├── ConfigError       a config file, environment variable or flag with a bad value
 ├── InputNotFound     a path to ingest or a query image does not exist
 ├── BadQueryImage     a query image that cannot be decoded
 ├── ManifestError     a --captions file that cannot be parsed
 └── ModelMismatch     the collection holds vectors of another model
"""

from __future__ import annotations


class ClipdexError(Exception):
    """Something the user can fix; the message says what and how."""


class ConfigError(ClipdexError):
    """A configuration value is malformed."""


class InputNotFound(ClipdexError):
    """A path given to ingest or query does not exist."""


class BadQueryImage(ClipdexError):
    """The query image cannot be decoded."""


class ManifestError(ClipdexError):
    """A captions manifest cannot be parsed."""


class ModelMismatch(ClipdexError):
    """The collection was built with another model; mixing vectors is refused."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (the class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
