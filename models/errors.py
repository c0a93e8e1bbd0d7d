"""Errors raised while loading or running an encoder.

ModelError
 ├── ModelNotFound       the name, tag, folder or checkpoint does not exist
 ├── ModelUnavailable    the weights are not on disk and cannot be downloaded
 ├── DeviceUnavailable   the requested device or precision cannot be used here
 └── BadSpec             a device, precision or batch size that is not one clipdex knows
"""

from __future__ import annotations


class ModelError(Exception):
    """An encoder could not be loaded or used."""


class ModelNotFound(ModelError):
    """The model name, pretrained tag, folder or checkpoint does not exist."""


class ModelUnavailable(ModelError):
    """The weights are not on disk and cannot be downloaded."""


class DeviceUnavailable(ModelError):
    """The requested device or precision cannot be used on this machine."""


class BadSpec(ModelError):
    """An EncoderSpec field with a value outside its choices."""
