"""Build OpenCLIP models with random weights in a folder that loads through local-dir:."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS: dict[str, Any] = {
    "size": 32,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def save_model_dir(
    folder: Path, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], seed: int = 0, nan_images: bool = False
) -> Path:
    """Write open_clip_config.json and random weights (seeded) to folder; return folder.

    nan_images: the image tower's projection is NaN, so every image vector is (a model gone bad).
    """
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if nan_images:
        state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return folder


def tiny_model_dir(folder: Path, seed: int = 0, nan_images: bool = False) -> Path:
    """A 32-d CLIP with a 32-pixel input: loads in a fraction of a second."""
    return save_model_dir(folder, TINY_CONFIG, TINY_PREPROCESS, seed, nan_images)


def vit_b_32_dir(folder: Path, seed: int = 0) -> Path:
    """The real ViT-B-32 architecture with random weights, for speed measurements."""
    model_cfg = open_clip.get_model_config("ViT-B-32")
    assert model_cfg is not None
    return save_model_dir(folder, model_cfg, {**TINY_PREPROCESS, "size": 224}, seed)


SIGLIP_WORDS = (
    "<pad>",
    "<unk>",
    "</s>",
    *["a", "photo", "of", "dog", "cat", "beach", "red", "car", "sunset", "the", "on", "at"],
)


def hf_tokenizer_model_dir(folder: Path, seed: int = 0) -> Path:
    """A tiny SigLIP-style model: its text tokenizer is a Hugging Face one, built here and saved in
    the folder (as open_clip expects for local-dir: models with hf_tokenizer_name), a logit bias,
    last-token pooling without a causal mask."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers  # noqa: PLC0415 - transformers' parts
    from tokenizers.models import WordLevel  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    text_cfg = {
        **TINY_CONFIG["text_cfg"],
        "vocab_size": 64,
        "context_length": 16,
        "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",  # any name: for local-dir: the folder's files are used
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "pool_type": "last",
        "no_causal_mask": True,
    }
    save_model_dir(folder, {**TINY_CONFIG, "init_logit_bias": -10, "text_cfg": text_cfg}, TINY_PREPROCESS, seed)
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(SIGLIP_WORDS)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(folder)
    return folder


XLM_WORDS = ("<s>", "<pad>", "</s>", "<unk>", *["a", "photo", "of", "dog", "chien", "hund", "perro", "beach", "plage"])


def xlm_roberta_model_dir(folder: Path, seed: int = 0) -> Path:
    """A tiny multilingual CLIP as open_clip's xlm-roberta-base-ViT-B-32 is made: its text tower a
    Hugging Face XLM-RoBERTa (random weights, mean pooling) whose config.json and tokenizer are
    saved in the folder, so that it loads with no hub and no cache."""
    from tokenizers import Tokenizer, pre_tokenizers, processors  # noqa: PLC0415 - transformers' parts
    from tokenizers.models import WordLevel  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    context = 16
    XLMRobertaConfig(
        vocab_size=len(XLM_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=context + 2, bos_token_id=0, pad_token_id=1, eos_token_id=2,
    ).save_pretrained(folder)  # fmt: skip
    text_cfg = {"hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "xlm-roberta-base",
                "hf_pooler_type": "mean_pooler", "context_length": context}  # fmt: skip
    model_cfg = {**TINY_CONFIG, "text_cfg": text_cfg}
    torch.manual_seed(seed)
    building = {**text_cfg, "hf_model_name": str(folder), "hf_model_pretrained": False}  # its config, no weights
    model = open_clip.model.CustomTextCLIP(**{**model_cfg, "text_cfg": building})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": TINY_PREPROCESS})
    )
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(XLM_WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return folder


def hub_text_tower_dir(folder: Path) -> Path:
    """A folder whose text tower is the Hugging Face model xlm-roberta-base (multilingual CLIP's)."""
    folder.mkdir(parents=True, exist_ok=True)
    text_cfg = {
        "hf_model_name": "xlm-roberta-base",
        "hf_tokenizer_name": "xlm-roberta-base",
        "hf_proj_type": "mlp",
        "hf_pooler_type": "mean_pooler",
    }
    config = {"model_cfg": {**TINY_CONFIG, "text_cfg": text_cfg}, "preprocess_cfg": TINY_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder
