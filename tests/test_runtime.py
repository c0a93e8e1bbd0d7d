"""The OpenVINO runtime: the same vectors as torch, a query without torch, a cache that heals itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
from click.testing import CliRunner
from PIL import Image

import models
from models import EncoderSpec, ModelError
from models.exported import META, OpenVinoEncoder, export_folder
from pipeline.cli import cli
from pipeline.ingest.decode import to_rgb
from tests import corpus
from tests.tiny_model import TINY_CONFIG, TINY_PREPROCESS, save_model_dir, vit_b_32_dir

PARITY = 0.999
TEXTS = ["a dog on the beach", "", "ünïcödé ✓ 🐕 text", "a long caption " * 40]


def _pair(model: str) -> tuple[Any, Any]:
    torch_encoder = models.load_encoder(EncoderSpec(model=model, device="cpu", precision="fp32", runtime="torch"))
    exported = models.load_encoder(EncoderSpec(model=model, runtime="openvino"))
    assert isinstance(exported, OpenVinoEncoder)
    return torch_encoder, exported


def _assert_parity(torch_encoder: Any, exported: Any, pixels: np.ndarray) -> None:
    assert exported.fingerprint == torch_encoder.fingerprint  # the runtime is not part of the fingerprint
    for want, got in (
        (torch_encoder.embed_texts(TEXTS), exported.embed_texts(TEXTS)),
        (torch_encoder.embed_pixels(pixels), exported.embed_pixels(pixels)),
    ):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
        assert float(np.min(np.sum(want * got, axis=1))) >= PARITY


def _pixels(encoder: Any, n: int, seed: int = 0) -> np.ndarray:
    h, w = encoder.transform.size
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_tiny_model_parity_on_real_images(tiny_model: str, tmp_path: Path) -> None:
    torch_encoder, exported = _pair(tiny_model)
    _assert_parity(torch_encoder, exported, _pixels(torch_encoder, 37))  # more than one batch split in two
    images = []
    for path in corpus.good_images(tmp_path).values():
        with Image.open(path) as im:
            images.append(to_rgb(im.copy()))
    want, got = torch_encoder.embed_images(images), exported.embed_images(images)
    assert float(np.min(np.sum(want * got, axis=1))) >= PARITY
    one = exported.embed_pixels(_pixels(exported, 1))  # one input runs in latency mode
    assert float(one[0] @ torch_encoder.embed_pixels(_pixels(exported, 1))[0]) >= PARITY


@pytest.mark.parametrize(
    ("size", "mode"), [((24, 40), "shortest"), ((40, 24), "longest"), ((48, 48), "squash")], ids=str
)
def test_parity_at_other_sizes_and_resize_modes(tmp_path: Path, size: tuple[int, int], mode: str) -> None:
    config = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "image_size": list(size)}}
    folder = save_model_dir(tmp_path / "model", config, {**TINY_PREPROCESS, "size": list(size), "resize_mode": mode})
    torch_encoder, exported = _pair(f"local-dir:{folder}")
    assert exported.transform.size == size and exported.transform.resize_mode == mode
    _assert_parity(torch_encoder, exported, _pixels(torch_encoder, 5))


@pytest.mark.slow
def test_vit_b_32_parity(tmp_path: Path) -> None:
    torch_encoder, exported = _pair(f"local-dir:{vit_b_32_dir(tmp_path / 'b32')}")
    _assert_parity(torch_encoder, exported, _pixels(torch_encoder, 6))


def test_auto_runs_openvino_on_a_cpu_and_says_so_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = f"local-dir:{save_model_dir(tmp_path / 'm', TINY_CONFIG, TINY_PREPROCESS, seed=5)}"
    spec = EncoderSpec(model=model, device="cpu")
    assert models.resolve_runtime(spec) == "openvino"
    caplog.set_level("INFO", logger="models")
    assert isinstance(models.load_encoder(spec), OpenVinoEncoder)
    (first,) = caplog.messages
    assert "\n" not in first and first.startswith(f"exporting {model} to OpenVINO, once for this machine")
    caplog.clear()
    assert isinstance(models.load_encoder(spec), OpenVinoEncoder)
    assert caplog.messages == []  # found in the cache: nothing said, nothing exported
    assert models.resolve_runtime(spec.with_(runtime="torch")) == "torch"
    assert models.resolve_runtime(spec.with_(device="cuda")) == "torch"


def _damage_truncate(folder: Path) -> None:
    data = (folder / "text.bin").read_bytes()
    (folder / "text.bin").write_bytes(data[: len(data) // 2])


def _damage_same_size(folder: Path) -> None:
    path = folder / "image.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _damage_meta(folder: Path) -> None:
    (folder / META).write_text("{not json")


def _damage_version(folder: Path) -> None:
    meta = json.loads((folder / META).read_text())
    (folder / META).write_text(json.dumps({**meta, "format": 0}))


def _damage_missing(folder: Path) -> None:
    (folder / "image.xml").unlink()


@pytest.mark.parametrize(
    "damage",
    [_damage_truncate, _damage_same_size, _damage_meta, _damage_version, _damage_missing],
    ids=lambda f: f.__name__,
)
def test_a_damaged_export_is_rebuilt_not_a_crash(tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture) -> None:
    model = f"local-dir:{save_model_dir(tmp_path / 'm', TINY_CONFIG, TINY_PREPROCESS, seed=6)}"
    spec = EncoderSpec(model=model, runtime="openvino")
    before = models.load_encoder(spec)
    pixels = _pixels(before, 3)
    want_images, want_texts = before.embed_pixels(pixels), before.embed_texts(TEXTS)
    caplog.set_level("INFO", logger="models")
    damage(export_folder(spec, "fp16"))
    after = models.load_encoder(spec)
    assert any(m.startswith("exporting") for m in caplog.messages)
    assert np.allclose(after.embed_pixels(pixels), want_images, atol=1e-5)
    assert np.allclose(after.embed_texts(TEXTS), want_texts, atol=1e-5)


def test_a_model_that_cannot_be_exported_stays_on_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nan_model = f"local-dir:{save_model_dir(tmp_path / 'm', TINY_CONFIG, TINY_PREPROCESS, seed=7, nan_images=True)}"
    caplog.set_level("INFO", logger="models")
    encoder = models.load_encoder(EncoderSpec(model=nan_model, device="cpu"))
    assert encoder.runtime == "torch"
    assert any("stays on torch: its exported image tower gives other vectors" in m for m in caplog.messages)
    caplog.clear()
    assert models.load_encoder(EncoderSpec(model=nan_model, device="cpu")).runtime == "torch"
    assert caplog.messages == []  # remembered: not tried again
    with pytest.raises(ModelError, match=r"--runtime openvino: .* cannot run on OpenVINO: .*; use --runtime torch"):
        models.load_encoder(EncoderSpec(model=nan_model, runtime="openvino"))


def test_openvino_is_refused_on_a_gpu_device(tiny_model: str) -> None:
    with pytest.raises(ModelError, match=r"--runtime openvino runs on the CPU, not --device cuda; use --runtime torch"):
        models.load_encoder(EncoderSpec(model=tiny_model, device="cuda", runtime="openvino"))


def test_a_query_never_imports_torch(lib: Any, tiny_model: str, photos: Path, tmp_path: Path) -> None:
    """The CLI's search and similar, from process start, with the model already exported."""
    lib.ingest([photos])
    image = next(p for p in sorted(photos.rglob("*.jpg")) if "bad" not in p.parts)
    script = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "sys.argv = ['clipdex', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'torchvision', 'click.testing') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    for args in (["search", "a dog", "--db", lib.collection.uri], ["similar", str(image), "--db", lib.collection.uri]):
        out = subprocess.run(
            [sys.executable, "-c", script, *args], check=False, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert "HEAVY []" in out.stdout, (args, out.stdout)


def test_runtime_flag_env_and_config(lib: Any, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib.ingest([photos])
    runner = CliRunner()
    db = lib.collection.uri
    vectors = {}
    for runtime in ("torch", "openvino"):
        result = runner.invoke(cli, ["embed", "--text", "a red car", "--db", db, "--runtime", runtime])
        assert result.exit_code == 0, result.output
        vectors[runtime] = np.array(json.loads(result.output.splitlines()[-1])["vector"])
    assert float(vectors["torch"] @ vectors["openvino"]) >= PARITY
    bad = runner.invoke(cli, ["search", "x", "--db", db, "--runtime", "onnx"])
    assert bad.exit_code == 2 and "'onnx' is not one of 'auto', 'torch', 'openvino'" in bad.output
    monkeypatch.setenv("CLIPDEX_RUNTIME", "tensorflow")
    bad = runner.invoke(cli, ["search", "x", "--db", db])
    assert bad.exit_code == 1 and "CLIPDEX_RUNTIME='tensorflow': must be one of auto, torch, openvino" in bad.output
    monkeypatch.setenv("CLIPDEX_RUNTIME", "torch")
    opened = models.load_encoder  # the runtime the settings ask for reaches the encoder
    seen: list[str] = []
    monkeypatch.setattr("models.load_encoder", lambda spec, **kw: seen.append(spec.runtime) or opened(spec))
    assert runner.invoke(cli, ["search", "x", "--db", db]).exit_code == 0
    config = tmp_path / "c.toml"
    config.write_text('runtime = "openvino"\n')
    monkeypatch.delenv("CLIPDEX_RUNTIME")
    assert runner.invoke(cli, ["search", "x", "--db", db, "--config", str(config)]).exit_code == 0
    assert seen == ["torch", "openvino"]


def test_open_clip_tokenizer_module_is_the_reference() -> None:
    """The torch-free tokenizer reads the very vocabulary open_clip ships."""
    from models.tokenizer import open_clip_vocab  # noqa: PLC0415

    assert open_clip_vocab() == Path(open_clip.tokenizer.default_bpe())


def test_cheap_mistakes_are_answered_before_any_model_loads(
    lib: Any, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib.ingest([photos])
    db = lib.collection.uri

    def refuse(spec: EncoderSpec) -> None:
        raise RuntimeError("a model was loaded")

    monkeypatch.setattr("models.load_encoder", refuse)
    runner = CliRunner()
    cases = [
        (["search", "a dog", "--where", "widht > 3"], "widht"),
        (["search", "a dog", "+", "missing.jpg", "--where", "width > 3"], None),  # a word: searched as text
        (["search", "a dog", "--like", str(tmp_path / "missing.jpg")], "missing.jpg does not exist"),
        (["similar", str(tmp_path / "missing.jpg")], "missing.jpg does not exist"),
        (["similar", "--id", "0000000000000000"], "no image with this id"),
        (["search", "   "], "the search text is empty"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, [*args, "--db", db])
        if message is None:
            assert "a model was loaded" in str(result.exception), args  # this one needs the model
            continue
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)


def test_an_unwritable_cache_runs_on_torch_not_a_crash(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CLIPDEX_CACHE", str(blocker))
    caplog.set_level("INFO", logger="models")
    encoder = models.load_encoder(EncoderSpec(model=tiny_model, device="cpu"))
    assert encoder.runtime == "torch" and encoder.embed_texts(["a dog"]).shape == (1, 32)
    assert any("runs on torch this time: cannot export it into" in m for m in caplog.messages)
    with pytest.raises(ModelError, match=r"set CLIPDEX_CACHE to a writable folder; use --runtime torch"):
        models.load_encoder(EncoderSpec(model=tiny_model, runtime="openvino"))
