"""What this machine offers, found without torch: CPU features, and whether a GPU may be there."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from models.errors import DeviceUnavailable

BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_precision(requested: str) -> str:
    """'auto' on a CPU: bf16 where it has bf16 units (AMX, AVX-512 BF16), else fp32; check explicit ones."""
    if requested == "auto":
        return "bf16" if cpu_flags() & BF16_CPU_FLAGS else "fp32"
    if requested == "fp16":
        raise DeviceUnavailable("--precision fp16 runs only on a GPU; use --precision bf16 or fp32 on the CPU")
    return requested


def gpu_may_exist() -> bool:
    """True where torch might find a GPU (an NVIDIA device node, or a Mac's MPS): ask torch there.

    Cheap and conservative: it decides whether --device auto may skip importing torch.
    """
    if sys.platform == "darwin":
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")
