"""Export an OpenCLIP model's two towers to OpenVINO IR, once per model (this needs torch).

The towers are traced from the torch model in fp32 on the CPU (``ov.convert_model``), saved
with fp16 weights (half the size to read at every start; computation runs in bf16 or fp32 as
the runtime is told), and checked against torch fp32 on probe texts and images before the
export is used: a model whose export does not give its vectors (cosine below ``PARITY``), or
whose tokenizer is not CLIP's byte-pair one, is recorded as unsupported and stays on torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from models.exported import (
    EXPORT_FORMAT,
    META,
    VOCAB,
    Export,
    OpenVinoEncoder,
    file_check,
    import_openvino,
    openvino_version,
    transform_fields,
)
from models.openclip import OpenClipEncoder
from models.tokenizer import ClipTokenizer, open_clip_vocab

PARITY = 0.999  # cosine an exported tower must reach against torch fp32 on every probe
PROBE_TEXTS = [
    "a photo of a dog",
    "",
    "un chat sur le canap\u00e9 \U0001f408",
    "a very long caption " * 30,
]
_CLEANINGS = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}


class Unsupported(Exception):
    """This model cannot run on the exported runtime (the reason is the message)."""


class _Tower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, tower: str, trim: bool) -> None:
        super().__init__()
        self.model = model
        self.tower = tower
        self.trim = trim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tower == "text" and self.trim:
            return _trimmed_text(self.model, x)
        encode = self.model.encode_text if self.tower == "text" else self.model.encode_image
        out = encode(x)  # type: ignore[operator]
        if not isinstance(out, torch.Tensor):
            raise Unsupported(f"its {self.tower} tower returns {type(out).__name__}, not one tensor")
        return out


def trimmable(model: torch.nn.Module) -> bool:
    """True for CLIP's own text tower: causal attention, pooled at the end token (the highest id).

    Its output at the end token depends on no later position, so the padding after the longest
    text of a batch can be cut off: a query of 6 tokens runs 6 positions, not 77.
    """
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "") == "argmax"
    )


def _trimmed_text(model: Any, text: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text for a text of any length up to the context (positions sliced)."""
    length = text.shape[1]
    x = model.token_embedding(text) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, text, "argmax")
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)  # type: ignore[no-any-return]
    return x @ model.text_projection  # type: ignore[no-any-return]


def tokenizer_config(tokenizer: Any) -> dict[str, Any]:
    """What ClipTokenizer needs to equal this open_clip tokenizer; Unsupported where it cannot."""
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.reduction_fn is not None:
        raise Unsupported(f"its tokenizer ({type(tokenizer).__name__}) is not CLIP's byte-pair tokenizer")
    cleaning = _CLEANINGS.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if cleaning is None:
        raise Unsupported("its tokenizer cleans text in a way clipdex does not know")
    extra = [tokenizer.decoder[i] for i in tokenizer.all_special_ids[2:]]
    return {
        "kind": "clip-bpe",
        "context_length": int(tokenizer.context_length),
        "cleaning": cleaning,
        "extra_special": extra,
    }


def export_openvino(encoder: OpenClipEncoder, folder: Path, precision: str) -> Export:
    """Export encoder (a torch fp32 CPU encoder) into folder, atomically; raise Unsupported if it cannot."""
    ov = import_openvino()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tokenizer = tokenizer_config(encoder._tokenizer)
        shutil.copyfile(open_clip_vocab(), work / VOCAB)
        ours = ClipTokenizer(
            work / VOCAB, tokenizer["context_length"], tokenizer["cleaning"], tuple(tokenizer["extra_special"])
        )
        theirs = encoder._tokenizer(PROBE_TEXTS).numpy()
        if not np.array_equal(ours(PROBE_TEXTS), theirs):
            raise Unsupported("its tokenizer's ids differ from CLIP's byte-pair tokenizer")
        model = encoder._model
        h, w = encoder.transform.size
        examples = {"text": torch.from_numpy(theirs[:2]), "image": torch.zeros(2, 3, h, w)}
        trim = trimmable(model) and not tokenizer["extra_special"]  # extra specials could outrank the end token
        tokenizer["trim"] = trim
        shapes = {"text": [-1, -1 if trim else theirs.shape[1]], "image": [-1, 3, h, w]}
        started = time.monotonic()
        for tower in ("text", "image"):
            # Tracing fails inside inference mode (a caller may be in it); gradients are not needed.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), _quiet_stderr():
                warnings.simplefilter("ignore")
                try:
                    converted = ov.convert_model(
                        _Tower(model, tower, trim),
                        example_input=examples[tower],
                        input=[ov.PartialShape(shapes[tower])],
                    )
                except Unsupported:
                    raise
                except Exception as exc:  # tracing raises anything from anywhere
                    raise Unsupported(f"its {tower} tower cannot be traced ({type(exc).__name__}: {exc})") from exc
            ov.save_model(converted, str(work / f"{tower}.xml"), compress_to_fp16=True)
        files = {name: file_check(work / name) for name in sorted(os.listdir(work))}
        meta = {
            "format": EXPORT_FORMAT,
            "openvino": openvino_version(),
            "fingerprint": encoder.fingerprint.to_json(),
            "transform": transform_fields(encoder.transform),
            "tokenizer": tokenizer,
            "files": files,
            "export_seconds": round(time.monotonic() - started, 1),
        }
        (work / META).write_text(json.dumps(meta, indent=2))
        export = Export.read(work)
        _check_parity(encoder, OpenVinoEncoder(export, precision))
        _publish(work, folder)
        return Export.read(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record_unsupported(folder: Path, reason: str) -> None:
    """Remember that this model stays on torch, so later runs do not try again."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": EXPORT_FORMAT, "openvino": openvino_version(), "unsupported": reason}
    tmp = folder / f".{META}.{os.getpid()}"
    tmp.write_text(json.dumps(meta))
    tmp.replace(folder / META)


def _check_parity(torch_encoder: OpenClipEncoder, exported: OpenVinoEncoder) -> None:
    rng = np.random.default_rng(0)
    h, w = torch_encoder.transform.size
    pixels = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    pixels[0] = 0  # a black image
    for tower, want, got in (
        ("text", torch_encoder.embed_texts(PROBE_TEXTS), exported.embed_texts(PROBE_TEXTS)),
        ("image", torch_encoder.embed_pixels(pixels), exported.embed_pixels(pixels)),
    ):
        cosine = float(np.min(np.sum(want * got, axis=1)))
        if not cosine >= PARITY:  # NaN included
            raise Unsupported(f"its exported {tower} tower gives other vectors (cosine {cosine:.4f} < {PARITY})")


def _publish(work: Path, folder: Path) -> None:
    """Move the finished export into place; a folder another process finished first is kept."""
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)  # an unsupported record or a damaged export
    with contextlib.suppress(OSError):  # another process published the same export first
        work.rename(folder)


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Tracing prints TracerWarnings and notes from C++ straight to file descriptor 2."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
