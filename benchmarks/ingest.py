"""Ingest throughput, side by side in one run: a naive loop, LanceDB's open-clip function, clipdex,
and the machine's limit measured from its parts (decode on all cores, model alone).

    .venv/bin/python benchmarks/ingest.py [--large 24] [--small 160] [--repeats 3] [--compete]

Steady-state images per second = (N - 1) / (t(N images) - t(1 image)), so start-up (worker
spawn, table creation) cancels out; the best of --repeats interleaved rounds is kept, since this
machine's speed drifts. Models use the real ViT-B-32 architecture with random weights.
clipdex runs on each runtime (torch bf16, OpenVINO bf16); the limit uses the faster model-only
rate. --compete repeats the clipdex rows while a CPU-bound process spins on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.synchronize
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import lancedb
import numpy as np
import open_clip
import pyarrow as pa
import torch
from common import first_only, image_folder, table, timed, vit_b_32
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector
from PIL import Image

import models
from pipeline import Clipdex, Settings
from pipeline.config import default_workers
from pipeline.ingest.decode import decode_file
from pipeline.ingest.pool import DecodePool
from storage import Collection


def naive_loop(model_id: str) -> Callable[[Path, Path], None]:
    """The seed's style: open, full decode, preprocess, fp32 encode one image, add one row."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_id)
    model.eval()

    def run(folder: Path, db: Path) -> None:
        schema = pa.schema([pa.field("path", pa.string()), pa.field("vector", pa.list_(pa.float32(), 512))])
        tbl = lancedb.connect(db).create_table("images", schema=schema)
        for path in sorted(folder.iterdir()):
            with torch.no_grad():
                image = Image.open(path).convert("RGB")
                v = model.encode_image(preprocess(image).unsqueeze(0))
                v = torch.nn.functional.normalize(v, dim=-1)[0].numpy()
            tbl.add([{"path": str(path), "vector": v.tolist()}])

    return run


def lancedb_function(model_id: str) -> Callable[[Path, Path], None]:
    """LanceDB's own open-clip embedding function, offline through the same local-dir: model."""
    func = get_registry().get("open-clip").create(name=model_id, pretrained="", device="cpu")

    class Images(LanceModel):
        image_uri: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    def run(folder: Path, db: Path) -> None:
        tbl = lancedb.connect(db).create_table("images", schema=Images)
        tbl.add([{"image_uri": str(p)} for p in sorted(folder.iterdir())])

    return run


def clipdex(model_id: str, runtime: str = "auto") -> Callable[[Path, Path], None]:
    """clipdex with its defaults (decode workers per core, precision auto, batch auto) on a runtime."""
    encoder = models.load_encoder(models.EncoderSpec(model=model_id, runtime=runtime))

    def run(folder: Path, db: Path) -> None:
        fp = encoder.fingerprint
        collection = Collection.create(str(db), model=fp.to_json(), dimension=fp.dimension)
        report = Clipdex(collection, encoder, Settings()).ingest([folder])
        assert (report.failed, report.added) == (0, len(list(folder.iterdir())))

    return run


def decode_only(transform: models.ImageTransform) -> Callable[[Path, Path], None]:
    """The decode half of the limit: clipdex's decoder on all cores, no model."""

    def run(folder: Path, db: Path) -> None:
        with DecodePool(default_workers()) as pool:
            for result in pool.map(decode_file, [str(p) for p in sorted(folder.iterdir())], transform, 10**9):
                assert not hasattr(result, "reason")

    return run


def model_only(encoder: models.Encoder, count: int) -> float:
    """The model half of the limit: batched forward passes on ready pixels, images per second."""
    pixels = np.random.default_rng(0).integers(0, 255, (count, 224, 224, 3), dtype=np.uint8)
    encoder.embed_pixels(pixels[: encoder.batch_size])  # warm up
    return count / timed(lambda: encoder.embed_pixels(pixels))


def steady_rate(fn: Callable[[Path, Path], None], many: Path, one: Path, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t_many = timed(lambda: fn(many, Path(tmp) / "many"))
        t_one = timed(lambda: fn(one, Path(tmp) / "one"))
    return (n - 1) / max(t_many - t_one, 1e-9)


def spin(stop: multiprocessing.synchronize.Event) -> None:
    """A competing CPU-bound process."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


@contextlib.contextmanager
def competing(active: bool) -> Iterator[None]:
    stop = multiprocessing.Event()
    rival = multiprocessing.Process(target=spin, args=(stop,)) if active else None
    if rival:
        rival.start()
    try:
        yield
    finally:
        stop.set()
        if rival:
            rival.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=24, help="12 MP JPEGs")
    parser.add_argument("--small", type=int, default=160, help="0.3 MP JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compete", action="store_true", help="also run clipdex beside a CPU-bound process")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    model_id = vit_b_32(args.work)
    encoders = {rt: models.load_encoder(models.EncoderSpec(model=model_id, runtime=rt)) for rt in ("torch", "openvino")}
    print(
        f"ViT-B-32 (random weights), {encoders['torch'].precision} on the CPU, batch {encoders['torch'].batch_size}, "
        f"{default_workers()} decode workers, torch threads {torch.get_num_threads()}, "
        f"default runtime here: {models.resolve_runtime(models.EncoderSpec(model=model_id))}"
    )
    methods = {
        "naive loop": naive_loop(model_id),
        "lancedb open-clip": lancedb_function(model_id),
        "clipdex torch": clipdex(model_id, "torch"),
        "clipdex openvino": clipdex(model_id, "openvino"),
        "decode only": decode_only(encoders["torch"].transform),
    }
    rivals = ["clipdex torch", "clipdex openvino"]
    for label, n, megapixels in (("12 MP JPEG", args.large, 12.0), ("0.3 MP JPEG", args.small, 0.3)):
        folder = args.work / f"{megapixels}mp-{n}"
        paths = image_folder(folder, n, megapixels)
        one = first_only(paths, args.work / f"{megapixels}mp-1")
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                best[name] = max(best.get(name, 0.0), steady_rate(fn, folder, one, n))
            for rt, encoder in encoders.items():
                best[f"model only {rt}"] = max(best.get(f"model only {rt}", 0.0), model_only(encoder, 96))
            if args.compete:
                with competing(True):
                    for name in rivals:
                        key = f"{name}, competing"
                        best[key] = max(best.get(key, 0.0), steady_rate(methods[name], folder, one, n))
        model = max(best["model only torch"], best["model only openvino"])
        limit = 1 / (1 / best["decode only"] + 1 / model)
        rows = [("method", "img/s", "x naive", "/ limit")]
        names = ["naive loop", "lancedb open-clip", *rivals, "decode only", "model only torch", "model only openvino"]
        names += [f"{name}, competing" for name in rivals] if args.compete else []
        for name in names:
            ratio = f"{best[name] / limit:.2f}" if name.startswith("clipdex") else ""
            rows.append((name, f"{best[name]:.1f}", f"{best[name] / best['naive loop']:.1f}", ratio))
        rows.append(("limit (decode+best model)", f"{limit:.1f}", f"{limit / best['naive loop']:.1f}", "1.00"))
        print(f"\n{label}, {n} images, best of {args.repeats}:\n{table(rows)}")


if __name__ == "__main__":
    main()
