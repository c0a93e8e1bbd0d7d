"""Model families beyond CLIP's own tokenizer: loaded from clipdex's install, or refused with the cause."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

import models
from models import EncoderSpec, ModelUnavailable
from pipeline import Clipdex
from tests.tiny_model import hf_tokenizer_model_dir, hub_text_tower_dir, xlm_roberta_model_dir


@pytest.fixture(scope="module")
def siglip_style(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"local-dir:{hf_tokenizer_model_dir(tmp_path_factory.mktemp('siglip-style'))}"


def test_a_hugging_face_tokenizer_model_loads_and_stays_on_torch(
    siglip_style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="models")
    encoder = models.load_encoder(EncoderSpec(model=siglip_style, device="cpu"))
    assert encoder.runtime == "torch"
    assert any("stays on torch: its tokenizer (HFTokenizer) is not CLIP's" in m for m in caplog.messages)
    vectors = encoder.embed_texts(["a dog on the beach", "A RED CAR!", ""])
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.9999  # different words, different vectors


def test_a_hugging_face_tokenizer_model_ingests_and_searches(siglip_style: str, photos: Path, tmp_path: Path) -> None:
    lib = Clipdex.open(tmp_path / "db", model=siglip_style, create=True)
    report = lib.ingest([photos])
    assert report.added > 0
    hits = lib.search("a photo of a dog", k=3)
    assert len(hits) == 3


def test_a_missing_package_is_named(siglip_style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ModelUnavailable, match=r"needs the Python package 'transformers' .*; pip install transformers"):
        models.load_encoder(EncoderSpec(model=siglip_style, device="cpu", runtime="torch"))


@pytest.mark.timeout(60)  # offline at once: no 30 s of retries against an unreachable hub
def test_a_folder_naming_a_hub_text_tower_never_waits_on_the_hub(tmp_path: Path) -> None:
    folder = hub_text_tower_dir(tmp_path / "xlm")
    with pytest.raises(ModelUnavailable, match=r"its text tower is the Hugging Face model 'xlm-roberta-base'"):
        models.load_encoder(EncoderSpec(model=f"local-dir:{folder}", device="cpu", runtime="torch"))


@pytest.mark.timeout(120)
def test_a_multilingual_xlm_roberta_folder_loads_offline_and_searches(tmp_path: Path, photos: Path) -> None:
    # Offline (a local-dir: model never asks the hub) and no Hugging Face cache here holds
    # xlm-roberta-base: the tower's config and tokenizer come from the folder.
    folder = xlm_roberta_model_dir(tmp_path / "xlm")
    model = f"local-dir:{folder}"
    encoder = models.load_encoder(EncoderSpec(model=model, device="cpu"))
    assert encoder.runtime == "torch"  # a Hugging Face tokenizer: no torch-free export
    vectors = encoder.embed_texts(["a photo of a dog", "chien", "perro on the plage", ""])
    assert vectors.shape == (4, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.9999
    # The vectors of the saved weights, built by hand from the folder's two configs:
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    config["text_cfg"] = {**config["text_cfg"], "hf_model_name": str(folder), "hf_model_pretrained": False}
    reference = open_clip.model.CustomTextCLIP(**config).eval()
    reference.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")))
    tokens = open_clip.get_tokenizer(model)(["a photo of a dog", "chien"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1).numpy()
    assert np.allclose(vectors[:2], expected, atol=1e-5)
    lib = Clipdex.open(tmp_path / "db", model=model, create=True)
    assert lib.ingest([photos / "good"]).added == 17
    assert len(lib.search("hund", k=3)) == 3
