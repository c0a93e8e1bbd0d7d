"""The OpenCLIP encoder: loading by name and tag, hf-hub:, local-dir: or a checkpoint; batched embedding."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from models.device import DTYPES, default_batch_size, resolve_device, resolve_precision
from models.encoder import Fingerprint
from models.errors import ModelError, ModelNotFound, ModelUnavailable
from models.spec import EncoderSpec
from models.transform import ImageTransform

HUB_PROBE_TIMEOUT_S = 3.0
CHECKPOINT_GLOBS = ("*.safetensors", "*.bin", "*.pth")  # the weights open_clip finds in a local-dir: folder
HF_CONFIG = "config.json"  # a Hugging Face text tower's config, in a local-dir: folder beside the tokenizer's files
LOCAL_DIR_HINT = "--model local-dir:/path/to/folder (open_clip_config.json + open_clip_model.safetensors)"


class OpenClipEncoder:
    """An OpenCLIP model on one device, embedding batches into L2-normalised float32 rows."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        spec: EncoderSpec,
        transform: ImageTransform,
        device: torch.device,
        precision: str,
    ) -> None:
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._device = device
        self._dtype = DTYPES[precision]
        self.spec = spec
        self.precision = precision
        self._transform = transform
        self._batch_size = spec.batch_size or default_batch_size(device)
        self._mean = torch.tensor(transform.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(transform.std, device=device).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = self._model.encode_text(tokenizer([""]).to(device))  # type: ignore[operator]
        self._dimension = int(probe.shape[-1])

    @property
    def fingerprint(self) -> Fingerprint:
        """Model, tag, dimension and preprocessing: what a collection records."""
        return Fingerprint(
            model=self.spec.model,
            pretrained=self.spec.pretrained,
            dimension=self._dimension,
            preprocess=self._transform.describe(),
        )

    @property
    def transform(self) -> ImageTransform:
        """The preprocessing images need before embed_pixels."""
        return self._transform

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return self._dimension

    @property
    def batch_size(self) -> int:
        """Images or texts per forward pass."""
        return self._batch_size

    @property
    def device(self) -> str:
        """Where the model runs: cpu, cuda, mps."""
        return str(self._device)

    @property
    def runtime(self) -> str:
        """Which runtime runs the model."""
        return "torch"

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed uint8 pixels of shape (n, height, width, 3), already resized by ``transform``."""
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.shape[1:3] != self._transform.size:
            raise ValueError(f"expected pixels of shape (n, {self._transform.size}, 3), got {pixels.shape}")
        return self._batched(pixels, self._encode_pixels)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images of any size and mode (converted to RGB with Pillow's defaults)."""
        if not images:
            return np.zeros((0, self._dimension), np.float32)
        return self.embed_pixels(np.stack([self._transform.to_pixels(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the text tower."""
        return self._batched(list(texts), self._encode_texts)

    def _batched(self, items: Any, encode: Callable[[Any], torch.Tensor]) -> np.ndarray:
        out = np.zeros((len(items), self._dimension), np.float32)
        start = 0
        with torch.inference_mode():
            while start < len(items):
                chunk = items[start : start + self._batch_size]
                try:
                    features = encode(chunk).float()
                except torch.OutOfMemoryError:
                    if self._batch_size == 1:
                        raise
                    # The GPU is shared or the batch too big: halve it for good and retry.
                    self._batch_size = max(1, self._batch_size // 2)
                    if self._device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                features = torch.nn.functional.normalize(features, dim=-1)
                out[start : start + len(chunk)] = features.cpu().numpy()
                start += len(chunk)
        return out

    def _encode_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels).to(self._device).permute(0, 3, 1, 2).float().div_(255)
        x = ((x - self._mean) / self._std).to(self._dtype)
        if self._device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self._model.encode_image(x)  # type: ignore[operator,no-any-return]

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self._tokenizer(texts).to(self._device)
        return self._model.encode_text(tokens)  # type: ignore[operator,no-any-return]


def load_encoder(spec: EncoderSpec) -> OpenClipEncoder:
    """Load an OpenCLIP model as the spec says; raise a ModelError with the fix when it cannot."""
    _check_exists(spec)
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    with _hub_access(spec), _quiet_root_logger():
        try:
            # open_clip's own precision handling: fp16 / bf16 weights with LayerNorms kept in fp32
            # (the original CLIP's mixed precision), rather than casting the whole model.
            model = open_clip.create_model(
                spec.model,
                pretrained=spec.pretrained or None,
                device=device,
                precision=precision,
                **_local_text_tower(spec),
            )
            tokenizer = open_clip.get_tokenizer(spec.model)
        except ModelError:
            raise
        except Exception as exc:  # open_clip raises bare RuntimeError/ValueError/OSError
            raise _explain(spec, exc) from exc
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    transform = ImageTransform.from_open_clip(dict(model.visual.preprocess_cfg))
    return OpenClipEncoder(model, tokenizer, spec, transform, device, precision)


def available_models() -> list[str]:
    """Architecture names open_clip knows."""
    return list(open_clip.list_models())


def nearest_names(name: str, known: list[str], n: int = 6) -> list[str]:
    """The known names closest to a misspelt one (difflib, ignoring case), then those containing it."""
    by_lower = {k.lower(): k for k in known}
    wanted = name.lower().replace("/", "-")
    close = [by_lower[m] for m in difflib.get_close_matches(wanted, list(by_lower), n=n, cutoff=0.6)]
    close += [k for k in known if wanted in k.lower() and k not in close]
    return close[:n]


def _check_exists(spec: EncoderSpec) -> None:
    """Catch unknown names, tags and folders before any download is attempted."""
    if spec.model.startswith("local-dir:"):
        folder = Path(spec.model.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelNotFound(
                f"--model {spec.model}: no open_clip_config.json in {folder}; "
                f"point it at a folder made by open_clip (config + weights), e.g. {LOCAL_DIR_HINT}"
            )
        return
    if spec.has_scheme:
        return
    known = available_models()
    if spec.model not in known:
        close = nearest_names(spec.model, known)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known[:12])}, ..."
        raise ModelNotFound(f"--model {spec.model}: open_clip has no such model; {hint}")
    tags = list(open_clip.list_pretrained_tags_by_model(spec.model))
    if spec.pretrained and spec.pretrained not in tags and not os.path.isfile(spec.pretrained):
        close = nearest_names(spec.pretrained, tags)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelNotFound(
            f"--pretrained {spec.pretrained}: not a tag of {spec.model} nor a checkpoint file; "
            f"{hint}tags: {', '.join(tags) or 'none'}"
        )
    if not spec.pretrained:
        raise ModelNotFound(
            f"--model {spec.model} needs --pretrained: a tag ({', '.join(tags[:6]) or 'none known'}) "
            "or a checkpoint file"
        )


def _needs_hub(spec: EncoderSpec) -> bool:
    if spec.model.startswith("hf-hub:"):
        return True
    return not spec.has_scheme and not os.path.isfile(spec.pretrained)


def _hub_reachable() -> bool:
    """A quick TCP probe, so an offline machine fails in seconds rather than after a minute of retries."""
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_access(spec: EncoderSpec) -> Iterator[None]:
    """Use the Hugging Face cache only (offline mode) for a local folder, and when the hub cannot be
    reached: a local-dir: model never waits on the network (its text tower may name a hub model)."""
    local = spec.model.startswith("local-dir:")
    if not local and (not _needs_hub(spec) or hf_constants.HF_HUB_OFFLINE or _hub_reachable()):
        yield
        return
    saved, saved_env = hf_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    hf_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"  # read by transformers
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs its failures on the root logger; our exception says it better, once."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _missing_module(exc: BaseException) -> str:
    """The top-level package whose import failed somewhere in exc's chain ('' if none)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ImportError) and seen.name:
            return seen.name.split(".")[0]
        seen = seen.__cause__ or seen.__context__
    return ""


def _local_text_cfg(spec: EncoderSpec) -> dict[str, Any]:
    """A local folder's text_cfg ({} if none, or not a local folder)."""
    if not spec.model.startswith("local-dir:"):
        return {}
    config = Path(spec.model.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
    try:
        text_cfg = json.loads(config.read_text())["model_cfg"].get("text_cfg", {})
    except (OSError, ValueError, KeyError, AttributeError):
        return {}
    return text_cfg if isinstance(text_cfg, dict) else {}


def _hub_text_model(spec: EncoderSpec) -> str:
    """The Hugging Face model a local folder's text tower is built from ('' if none)."""
    return str(_local_text_cfg(spec).get("hf_model_name") or "")


def _local_text_tower(spec: EncoderSpec) -> dict[str, Any]:
    """create_model's text_cfg override for a local folder whose text tower is a Hugging Face model
    (xlm-roberta, ...) and which carries that model's config.json (as save_pretrained writes it,
    beside the tokenizer's files open_clip already reads from the folder): the tower is built from
    the folder, so nothing is asked of the hub or its cache. {} otherwise."""
    text_cfg = _local_text_cfg(spec)
    if not text_cfg.get("hf_model_name"):
        return {}
    folder = Path(spec.model.removeprefix("local-dir:")).expanduser()
    try:
        hf_config = json.loads((folder / HF_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(hf_config, dict) or "model_type" not in hf_config or "vision_config" in hf_config:
        return {}  # not a text tower's config (a whole CLIP's, or another tool's file)
    if not any(folder.glob(pattern) for pattern in CHECKPOINT_GLOBS):
        return {}  # no weights here: open_clip would take the tower's from the hub, so let it ask there
    # The folder's checkpoint holds the tower's weights: build it from the config alone.
    return {"text_cfg": {**text_cfg, "hf_model_name": str(folder.resolve()), "hf_model_pretrained": False}}


def _explain(spec: EncoderSpec, exc: Exception) -> ModelError:
    """Turn open_clip's errors into one line that says what to do."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    missing = _missing_module(exc)
    if missing:
        return ModelUnavailable(
            f"{spec.label} needs the Python package {missing!r} (its tokenizer or text tower comes from it), "
            f"which is not installed; pip install {missing}, or reinstall clipdex, which depends on it"
        )
    hub_model = _hub_text_model(spec)
    if hub_model:
        return ModelUnavailable(
            f"--model {spec.model}: its text tower is the Hugging Face model {hub_model!r}, whose config is not "
            f"in the Hugging Face cache and cannot be downloaded here; put that model's {HF_CONFIG} in the folder "
            f"(AutoConfig.from_pretrained({hub_model!r}).save_pretrained(folder)), run once with internet, or copy "
            f"the cache (HF_HUB_CACHE) from a machine that has it ({first_line})"
        )
    if spec.model.startswith("local-dir:"):
        return ModelNotFound(f"--model {spec.model}: cannot load it ({first_line}); {LOCAL_DIR_HINT}")
    if _needs_hub(spec):
        cache = os.environ.get("HF_HUB_CACHE") or hf_constants.HF_HUB_CACHE
        return ModelUnavailable(
            f"cannot get the weights of {spec.label}: they are not in the Hugging Face cache ({cache}) "
            f"and the hub cannot be reached; run once with internet, or use local weights: {LOCAL_DIR_HINT}"
        )
    return ModelNotFound(f"cannot load {spec.label}: {first_line}")
