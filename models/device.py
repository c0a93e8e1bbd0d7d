"""Choosing a device and a precision: CUDA, then MPS, then the CPU; the fastest dtype each runs well."""

from __future__ import annotations

import torch

from models import hardware
from models.errors import DeviceUnavailable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(requested: str) -> torch.device:
    """Turn 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' into a device that exists here."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"--device {requested}: no CUDA GPU is visible here; use --device auto or --device cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable("--device mps: Apple MPS is not available here; use --device auto or cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """Turn 'auto' into fp16 on GPUs, bf16 on CPUs with bf16 units, else fp32; check explicit ones."""
    if requested == "auto" and device.type in ("cuda", "mps"):
        return "fp16"
    if device.type == "cpu":
        return hardware.cpu_precision(requested)
    return requested


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass: enough to fill a GPU, small enough to keep CPU latency low."""
    return 256 if device.type == "cuda" else 64 if device.type == "mps" else 32
