"""Model only, side by side in one run: torch fp32, torch bf16, OpenVINO's raw compiled model, and
clipdex's own encoder API on each runtime; images per second on ready pixels and cosine to fp32.

    .venv/bin/python benchmarks/model.py [--models ViT-B-32,ViT-B-16] [--batch 64] [--rounds 4] [--compete]

Rounds are interleaved and the best kept (this machine's speed drifts). --compete also measures
every method while a CPU-bound process spins on one core, as decode workers or other programs do.
Models are the real architectures with random weights (the speed of real ones).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
from common import table

import models
from models.exported import OV_PRECISION, export_folder, find_export, import_openvino
from models.hardware import cpu_precision
from tests.tiny_model import TINY_PREPROCESS, save_model_dir

PRECISION = cpu_precision("auto")  # what clipdex runs here: bf16 with AMX / AVX-512 BF16, else fp32


def model_dir(work: Path, name: str) -> str:
    folder = work / name
    if not (folder / "open_clip_config.json").exists():
        cfg = open_clip.get_model_config(name)
        assert cfg is not None
        save_model_dir(folder, cfg, {**TINY_PREPROCESS, "size": cfg["vision_cfg"]["image_size"]})
    return f"local-dir:{folder}"


def spin(stop: multiprocessing.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def rate(fn: Callable[[], np.ndarray], n: int) -> tuple[float, np.ndarray]:
    fn()  # warm up
    start = time.perf_counter()
    out = fn()
    return n / (time.perf_counter() - start), out


def onnx_runtime(encoder: object, x: np.ndarray) -> Callable[[], np.ndarray] | None:
    """ONNX Runtime on the same image tower (torch.onnx export), where onnxruntime is installed: the
    other runtime the issue asked to measure against OpenVINO."""
    try:
        import onnxruntime  # noqa: PLC0415 - optional, for this comparison only
    except ImportError:
        return None
    model = encoder._model  # type: ignore[attr-defined]

    class Image(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule: its weights are the graph's parameters

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels)  # type: ignore[no-any-return]

    path = Path(tempfile.mkdtemp()) / "image.onnx"
    # With gradients on: in no_grad mode nn.MultiheadAttention takes a fused path that ONNX cannot export.
    with torch.enable_grad():
        torch.onnx.export(
            Image(),
            (torch.from_numpy(x[:2]),),
            str(path),
            dynamo=False,
            input_names=["pixels"],
            dynamic_axes={"pixels": {0: "n"}},
        )
    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run() -> np.ndarray:
        out = session.run(None, {"pixels": x})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)  # type: ignore[no-any-return]

    return run


def methods(model_id: str, pixels: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    spec = models.EncoderSpec(model=model_id, device="cpu")
    ref = models.load_encoder(spec.with_(precision="fp32", runtime="torch"))
    exported = models.load_encoder(spec.with_(precision=PRECISION, runtime="openvino"))
    fast = models.load_encoder(spec.with_(precision=PRECISION, runtime="torch")) if PRECISION != "fp32" else ref
    export = find_export(export_folder(spec, "fp16"))
    assert export is not None
    ov = import_openvino()
    compiled = ov.Core().compile_model(
        str(export.folder / "image.xml"),
        "CPU",
        {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": OV_PRECISION[PRECISION]},
    )
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    mean = np.array(ref.transform.mean, np.float32).reshape(1, 3, 1, 1) * 255
    std = np.array(ref.transform.std, np.float32).reshape(1, 3, 1, 1) * 255
    x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std

    def raw_openvino() -> np.ndarray:
        out = np.zeros((len(x), ref.dimension), np.float32)
        step = -(-len(x) // requests)
        queue = ov.AsyncInferQueue(compiled, requests)
        queue.set_callback(lambda req, s: out.__setitem__(slice(s, s + step), req.get_output_tensor(0).data))
        for s in range(0, len(x), step):
            queue.start_async({0: x[s : s + step]}, s)
        queue.wait_all()
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def torch_model(encoder: object, dtype: torch.dtype) -> Callable[[], np.ndarray]:
        model = encoder._model  # type: ignore[attr-defined]

        def run() -> np.ndarray:
            with torch.inference_mode():
                out = model.encode_image(torch.from_numpy(x).to(dtype)).float()
            return torch.nn.functional.normalize(out, dim=-1).numpy()

        return run

    fns = {"torch fp32 (raw)": torch_model(ref, torch.float32)}
    onnx = onnx_runtime(ref, x)
    if onnx is not None:
        fns["onnxruntime fp32 (raw)"] = onnx
    if PRECISION != "fp32":
        fns[f"torch {PRECISION} (raw)"] = torch_model(fast, torch.bfloat16)
    fns[f"openvino {PRECISION} (raw)"] = raw_openvino
    fns[f"clipdex torch {PRECISION}"] = lambda: fast.embed_pixels(pixels)
    fns[f"clipdex openvino {PRECISION}"] = lambda: exported.embed_pixels(pixels)
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-B-16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compete", action="store_true", help="also measure beside a CPU-bound process")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    loads = ["quiet", "competing"] if args.compete else ["quiet"]
    for name in args.models.split(","):
        model_id = model_dir(args.work, name)
        size = models.load_encoder(models.EncoderSpec(model=model_id, device="cpu", runtime="openvino")).transform.size
        pixels = np.random.default_rng(0).integers(0, 256, (args.batch, *size, 3), dtype=np.uint8)
        fns = methods(model_id, pixels)
        best: dict[tuple[str, str], float] = {}
        cosine: dict[str, float] = {}
        reference = fns["torch fp32 (raw)"]()
        for _ in range(args.rounds):
            for load in loads:
                stop = multiprocessing.Event()
                rival = multiprocessing.Process(target=spin, args=(stop,)) if load == "competing" else None
                if rival:
                    rival.start()
                try:
                    for label, fn in fns.items():
                        speed, out = rate(fn, len(pixels))
                        best[(label, load)] = max(best.get((label, load), 0.0), speed)
                        cosine[label] = float(np.min(np.sum(out * reference, axis=1)))
                finally:
                    stop.set()
                    if rival:
                        rival.join()
        fastest = {load: max(best[(label, load)] for label in fns if "raw" in label) for load in loads}
        header = ["method", *(f"img/s {load}" for load in loads), "/ best raw (quiet)", "min cosine to fp32"]
        rows = [header]
        for label in fns:
            speeds = [f"{best[(label, load)]:.1f}" for load in loads]
            rows.append([label, *speeds, f"{best[(label, 'quiet')] / fastest['quiet']:.2f}", f"{cosine[label]:.5f}"])
        print(
            f"\n{name}, batch {args.batch}, {PRECISION} (auto here), {torch.get_num_threads()} torch threads, "
            f"best of {args.rounds} rounds"
        )
        print(table(rows))


if __name__ == "__main__":
    main()
