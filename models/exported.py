"""The OpenVINO runtime: a model's towers exported once, then run without torch.

An export is a folder in the user's cache (``cache_root()``), named by a key made of what
determines its contents: the model's source (name and tag, a checkpoint's or local folder's
files with their sizes and times, a hub repo's cached revision), the export format, the
OpenVINO version and the weight precision. It holds ``text.xml``/``.bin`` and
``image.xml``/``.bin`` (OpenVINO IR), the tokenizer's vocabulary and ``export.json``, written
last, which records the fingerprint, the preprocessing, the tokenizer and a check of each
file (size and a hash of its head, middle and tail). A folder that fails the check, or from
another format or OpenVINO version, is never used: it is removed and exported again.

Nothing here imports torch: a query that finds its export loads in a fraction of a second.
The export itself (``models.export``) needs torch, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from PIL import Image

from models.encoder import Fingerprint
from models.errors import ModelError, ModelNotFound
from models.spec import EncoderSpec
from models.tokenizer import ClipTokenizer
from models.transform import ImageTransform

EXPORT_FORMAT = 2  # bump when the folder's layout or meaning changes: old exports are then rebuilt
META = "export.json"
VOCAB = "vocab.txt.gz"
TOWERS = ("text", "image")
_SAMPLE = 1 << 20  # bytes hashed at the head, middle and tail of each file
OV_PRECISION = {"bf16": "bf16", "fp32": "f32"}
DEFAULT_CPU_BATCH = 32


class ExportDamaged(ModelError):
    """An export folder that cannot be used (missing or changed files, another version)."""


def import_openvino() -> Any:
    """OpenVINO, with its usage telemetry off.

    OpenVINO's converter sends usage data to Google Analytics (from a forked process) at import
    unless the user opted out; clipdex sends nothing anywhere. With its telemetry package hidden,
    OpenVINO falls back to its own no-op stub.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino  # noqa: PLC0415 - 0.3 s, only where a model runs

    return openvino


def cache_root() -> Path:
    """Where exports live: the platform's user cache folder (CLIPDEX_CACHE overrides it)."""
    override = os.environ.get("CLIPDEX_CACHE")
    return Path(override).expanduser() if override else Path(platformdirs.user_cache_dir("clipdex"))


def openvino_version() -> str:
    """The installed OpenVINO's version, or '' where it is not installed (read without importing it)."""
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return ""


def export_folder(spec: EncoderSpec, weights: str) -> Path:
    """The folder an export of this model (at this weight precision) lives in, whether it exists or not."""
    parts = [f"format={EXPORT_FORMAT}", f"openvino={openvino_version()}", f"weights={weights}", *source_stamp(spec)]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(spec.model).name)[:40]
    return cache_root() / "openvino" / f"{name}-{key}"


def source_stamp(spec: EncoderSpec) -> list[str]:
    """What names the weights: their files' sizes and times where they are files, else their name."""
    stamp = [f"model={spec.model}", f"pretrained={spec.pretrained}"]
    if spec.model.startswith("local-dir:"):
        folder = Path(spec.model.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise ModelNotFound(
                f"--model {spec.model}: no such folder; point it at a folder made by open_clip "
                "(open_clip_config.json + open_clip_model.safetensors)"
            )
        stamp.extend(_file_stamp(path) for path in sorted(folder.iterdir()) if path.is_file())
    elif spec.model.startswith("hf-hub:"):
        stamp.append(f"revision={_hub_revision(spec.model.removeprefix('hf-hub:'))}")
    elif spec.pretrained and os.path.isfile(spec.pretrained):
        stamp.append(_file_stamp(Path(spec.pretrained)))
    return stamp


def _file_stamp(path: Path) -> str:
    info = path.stat()
    return f"file={path.name}:{info.st_size}:{info.st_mtime_ns}"


def _hub_revision(repo: str) -> str:
    """The commit the Hugging Face cache holds for repo ('' where it holds none)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(Path.home(), ".cache", "huggingface")), "hub"
    )
    ref = Path(hub) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip()
    except OSError:
        return ""


def file_check(path: Path) -> dict[str, Any]:
    """Size and a hash of the head, middle and tail of a file: catches truncated and replaced files."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            fh.seek(offset)
            digest.update(fh.read(_SAMPLE))
    return {"size": size, "sample_sha256": digest.hexdigest()}


@dataclass(frozen=True)
class Export:
    """A checked export folder and what its export.json says."""

    folder: Path
    fingerprint: Fingerprint
    transform: ImageTransform
    tokenizer: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> Export:
        """Read and check an export; raise ExportDamaged when any part is missing or changed."""
        try:
            meta = json.loads((folder / META).read_text())
            if meta.get("format") != EXPORT_FORMAT or meta.get("openvino") != openvino_version():
                raise ExportDamaged(f"{folder}: made by another clipdex or OpenVINO version")
            for name, expected in meta["files"].items():
                if file_check(folder / name) != expected:
                    raise ExportDamaged(f"{folder / name}: changed since the export")
            transform_fields = meta["transform"]
            transform = ImageTransform(
                size=tuple(transform_fields["size"]),
                mean=tuple(transform_fields["mean"]),
                std=tuple(transform_fields["std"]),
                interpolation=transform_fields["interpolation"],
                resize_mode=transform_fields["resize_mode"],
                fill_color=int(transform_fields["fill_color"]),
            )
            return cls(folder, Fingerprint.from_json(meta["fingerprint"]), transform, dict(meta["tokenizer"]))
        except ExportDamaged:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExportDamaged(f"{folder}: {type(exc).__name__}: {exc}") from exc


def read_unsupported(folder: Path) -> str | None:
    """The reason recorded when this model cannot be exported (so it is not tried on every run)."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") == EXPORT_FORMAT and meta.get("openvino") == openvino_version() and "unsupported" in meta:
        return str(meta["unsupported"])
    return None


def find_export(folder: Path) -> Export | None:
    """The export in folder if it is whole; a damaged one is removed (the caller exports again).

    None too for a folder that records the model as unsupported (see read_unsupported)."""
    if not (folder / META).exists() or read_unsupported(folder) is not None:
        return None
    try:
        return Export.read(folder)
    except ExportDamaged:
        remove_export(folder)
        return None


def remove_export(folder: Path) -> None:
    """Delete an export folder (ignoring one that another process removed first)."""
    shutil.rmtree(folder, ignore_errors=True)


class OpenVinoEncoder:
    """An exported model run by OpenVINO on the CPU: the Encoder protocol, without torch."""

    def __init__(
        self,
        export: Export,
        precision: str,
        batch_size: int | None = None,
        rebuild: Callable[[], Export] | None = None,
    ) -> None:
        self._export = export
        self.precision = precision
        self._batch_size = batch_size or DEFAULT_CPU_BATCH
        self._rebuild = rebuild
        self._compiled: dict[tuple[str, str], list[Any]] = {}  # (tower, mode) -> its infer requests
        self._models: list[Any] = []
        self._run_lock = threading.Lock()
        self._tokenizer: ClipTokenizer | None = None
        transform = export.transform
        self._mean = np.array(transform.mean, np.float32).reshape(1, 3, 1, 1) * 255
        self._std = np.array(transform.std, np.float32).reshape(1, 3, 1, 1) * 255

    @property
    def fingerprint(self) -> Fingerprint:
        """The model's fingerprint, the same as the torch runtime's."""
        return self._export.fingerprint

    @property
    def transform(self) -> ImageTransform:
        """The preprocessing images need before embed_pixels."""
        return self._export.transform

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return self._export.fingerprint.dimension

    @property
    def batch_size(self) -> int:
        """Images or texts per call."""
        return self._batch_size

    @property
    def device(self) -> str:
        """Where the model runs."""
        return "cpu"

    @property
    def runtime(self) -> str:
        """Which runtime runs the model."""
        return "openvino"

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed uint8 pixels of shape (n, height, width, 3), already resized by ``transform``."""
        size = self._export.transform.size
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.shape[1:3] != size:
            raise ValueError(f"expected pixels of shape (n, {size}, 3), got {pixels.shape}")
        if len(pixels) == 0:
            return np.zeros((0, self.dimension), np.float32)
        x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) - self._mean) / self._std
        return self._run("image", x)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images of any size and mode (converted to RGB with Pillow's defaults)."""
        if not images:
            return np.zeros((0, self.dimension), np.float32)
        return self.embed_pixels(np.stack([self._export.transform.to_pixels(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the text tower."""
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        tokens = self.tokenizer(list(texts))
        if self._export.tokenizer.get("trim"):
            # Causal text tower pooled at the end token: the padding after the longest text is cut.
            ends = np.argmax(tokens == self.tokenizer.end_id, axis=1)
            tokens = np.ascontiguousarray(tokens[:, : int(ends.max()) + 1])
        return self._run("text", tokens)

    @property
    def tokenizer(self) -> ClipTokenizer:
        """The model's tokenizer (built on first use: 0.2 s)."""
        if self._tokenizer is None:
            cfg = self._export.tokenizer
            self._tokenizer = ClipTokenizer(
                self._export.folder / VOCAB,
                context_length=int(cfg["context_length"]),
                cleaning=str(cfg["cleaning"]),
                extra_special=tuple(cfg.get("extra_special", ())),
            )
        return self._tokenizer

    def _run(self, tower: str, x: np.ndarray) -> np.ndarray:
        """Forward passes over x in batches; one input runs for latency, more for throughput.

        In throughput mode each batch is split between the compiled model's parallel requests
        (one per stream), started together and waited for in turn. No Python callbacks: OpenVINO's
        threads then never wait for the GIL (with AsyncInferQueue callbacks, freeing a compiled
        model could deadlock against them).
        """
        out = np.zeros((len(x), self.dimension), np.float32)
        mode = "LATENCY" if len(x) == 1 else "THROUGHPUT"
        with self._run_lock:  # infer requests are not shared between threads
            requests = self._requests(tower, mode)
            step = max(1, -(-min(self._batch_size, len(x)) // len(requests)))
            chunks = [(start, x[start : start + step]) for start in range(0, len(x), step)]
            for wave in range(0, len(chunks), len(requests)):
                running = list(zip(requests, chunks[wave : wave + len(requests)], strict=False))
                for request, (_, chunk) in running:
                    request.start_async({0: chunk})
                for request, (start, chunk) in running:
                    request.wait()
                    out[start : start + len(chunk)] = request.get_output_tensor(0).data
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: np.ndarray = out / np.maximum(norms, 1e-12)  # a NaN row stays NaN: the embed step fails it
        return unit

    def _requests(self, tower: str, mode: str) -> list[Any]:
        """The infer requests of a tower compiled for this mode (compiled on first use)."""
        requests = self._compiled.get((tower, mode))
        if requests is None:
            compiled = self._compile(tower, mode)
            count = 1 if mode == "LATENCY" else max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            requests = [compiled.create_infer_request() for _ in range(count)]
            self._compiled[(tower, mode)] = requests
            self._models.append(compiled)  # kept alive with its requests
        return requests

    def _compile(self, tower: str, mode: str) -> Any:
        core = import_openvino().Core()  # no compiled-model cache: compiling from IR takes 0.25 s, a cache blob 120 MB
        config = {"PERFORMANCE_HINT": mode, "INFERENCE_PRECISION_HINT": OV_PRECISION[self.precision]}
        try:
            return core.compile_model(str(self._export.folder / f"{tower}.xml"), "CPU", config)
        except RuntimeError as exc:
            if self._rebuild is None:
                raise ExportDamaged(f"{self._export.folder}: OpenVINO cannot load it ({exc})") from exc
            # Passed the checks yet does not load (a cache from a broken disk, a changed OpenVINO build):
            # export again, once.
            remove_export(self._export.folder)
            self._export = self._rebuild()
            self._rebuild = None
            self._compiled.clear()
            return core.compile_model(str(self._export.folder / f"{tower}.xml"), "CPU", config)


def transform_fields(transform: ImageTransform) -> dict[str, Any]:
    """ImageTransform as JSON fields (read back by Export.read)."""
    return {
        "size": list(transform.size),
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation,
        "resize_mode": transform.resize_mode,
        "fill_color": transform.fill_color,
    }
