"""The encoder: OpenCLIP models loaded from one small spec, embedding images and texts.

``load_encoder`` picks the runtime: OpenVINO on CPUs (``models.exported``, no torch), torch
on GPUs and wherever asked (``models.openclip``). The torch-backed parts load on first use, so
that decode workers, and queries whose model is already exported, never import torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from models.encoder import Encoder, Fingerprint
from models.errors import BadSpec, DeviceUnavailable, ModelError, ModelNotFound, ModelUnavailable
from models.loading import load_encoder, resolve_runtime
from models.spec import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEVICES, PRECISIONS, RUNTIMES, EncoderSpec
from models.transform import ImageTransform

# Idle OpenMP threads of the model must sleep, not spin, while decode workers share the cores.
# It has to be set before torch starts its thread pool, that is before models.openclip loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from models.openclip import OpenClipEncoder, available_models

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DEVICES",
    "PRECISIONS",
    "RUNTIMES",
    "BadSpec",
    "DeviceUnavailable",
    "Encoder",
    "EncoderSpec",
    "Fingerprint",
    "ImageTransform",
    "ModelError",
    "ModelNotFound",
    "ModelUnavailable",
    "OpenClipEncoder",
    "available_models",
    "load_encoder",
    "resolve_runtime",
]

_LAZY = {"OpenClipEncoder", "available_models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("models.openclip"), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
