"""What to load: the one small spec that stands in front of open_clip's many parameters."""

from __future__ import annotations

from dataclasses import dataclass, replace

from models.errors import BadSpec

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
SCHEMES = ("hf-hub:", "local-dir:")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# auto: OpenVINO on CPUs (faster to start, steadier under load), torch on GPUs. Not part of the
# fingerprint: both give the same model's vectors (cosine >= 0.999, checked at export).
RUNTIMES = ("auto", "torch", "openvino")


@dataclass(frozen=True)
class EncoderSpec:
    """Which OpenCLIP model to load, and where and how to run it."""

    # An open_clip architecture name (ViT-B-32), or hf-hub:org/repo, or local-dir:/path.
    model: str = DEFAULT_MODEL
    # A pretrained tag of that architecture, or a checkpoint file; ignored for hf-hub:/local-dir:.
    pretrained: str = DEFAULT_PRETRAINED
    # auto picks CUDA, then Apple MPS, then the CPU.
    device: str = "auto"
    # auto picks fp16 on CUDA, bf16 on CPUs with AMX or AVX-512 BF16, fp32 otherwise.
    precision: str = "auto"
    # Images or texts per forward pass; None picks one from the device.
    batch_size: int | None = None
    # Which runtime runs the model: auto, torch (the reference, and GPUs), openvino (CPUs).
    runtime: str = "auto"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise BadSpec(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise BadSpec(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise BadSpec(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BadSpec(f"batch size must be at least 1, not {self.batch_size}")
        if self.has_scheme:
            # The folder or hub repo carries its own weights: a tag would be ignored, so drop it
            # to keep fingerprints of the same model equal.
            object.__setattr__(self, "pretrained", "")

    @property
    def has_scheme(self) -> bool:
        """True for hf-hub: and local-dir: ids, which carry their own weights."""
        return self.model.startswith(SCHEMES)

    @property
    def label(self) -> str:
        """The model as a person would name it: 'ViT-B-32 (laion2b_s34b_b79k)'."""
        return f"{self.model} ({self.pretrained})" if self.pretrained else self.model

    def with_(self, **changes: object) -> EncoderSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
