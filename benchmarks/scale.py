"""Scaling out on this machine: local ingest against --engine ray, and the index built by Ray tasks.

    .venv/bin/python benchmarks/scale.py [--images 1000] [--rows 100000] [--repeats 2]

1. The same folder of small (0.3 MP) JPEGs ingested with ViT-B-32 (random weights) by the local
   engine and by --engine ray on a local Ray of this machine's cores (started once, its start-up
   reported apart): wall seconds per run, best of --repeats, and the ratio.
2. The IVF_HNSW_SQ index over --rows random unit vectors built by LanceDB in this process and by
   lance-ray with 1 and 2 workers: build seconds and recall@10 of each against exact search.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from common import image_folder, table, timed, vit_b_32
from query import DIM, fill, latencies, recall

import models
from pipeline import Clipdex, Settings
from pipeline.config import default_workers
from storage import Collection, Hit


def ingest_seconds(folder: Path, db: Path, encoder: models.OpenClipEncoder, settings: Settings, n: int) -> float:
    if db.exists():
        shutil.rmtree(db)
    fp = encoder.fingerprint
    lib = Clipdex(Collection.create(str(db), model=fp.to_json(), dimension=fp.dimension), encoder, settings)
    start = time.perf_counter()
    report = lib.ingest([folder])
    seconds = time.perf_counter() - start
    assert (report.added, report.failed) == (n, 0), report
    return seconds


def index_rows(n: int, work: Path, encoder: models.OpenClipEncoder, queries: np.ndarray) -> list[tuple[str, ...]]:
    rows = []
    truth = None
    for label, workers in (("LanceDB, in process", 0), ("lance-ray, 1 worker", 1), ("lance-ray, 2 workers", 2)):
        db = work / f"index-{n}"
        if db.exists():
            shutil.rmtree(db)
        collection = Collection.create(str(db), model=encoder.fingerprint.to_json(), dimension=DIM)
        vectors = fill(collection, n, np.random.default_rng(n))
        if truth is None:
            truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        build = timed(lambda c=collection, w=workers: c.ensure_index(1, workers=w))
        lib = Clipdex(collection, encoder, Settings())

        def search(q: np.ndarray, lib: Clipdex = lib) -> list[Hit]:
            return lib.search_vector(q, k=10)

        p50, _, found = latencies(search, queries)
        rows.append((label, f"{build:.1f}", f"{recall(found, truth):.3f}", f"{p50:.1f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()

    model_id = vit_b_32(args.work)
    encoder = models.load_encoder(models.EncoderSpec(model=model_id))
    folder = args.work / f"0.3mp-{args.images}"
    image_folder(folder, args.images, 0.3)
    cores = default_workers()
    print(f"ViT-B-32 (random weights), {encoder.precision} on {encoder.device}, {cores} cores, {args.images} images")
    started = timed(lambda: ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False))
    local, distributed = float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved: this machine's speed drifts
        local = min(local, ingest_seconds(folder, args.work / "local-db", encoder, Settings(), args.images))
        ray_settings = Settings(engine="ray", workers=1)
        distributed = min(distributed, ingest_seconds(folder, args.work / "ray-db", encoder, ray_settings, args.images))
    rows = [("engine", "seconds", "img/s", "x local time")]
    rows.append(("local", f"{local:.1f}", f"{args.images / local:.1f}", "1.00"))
    rows.append(("ray (1 actor, local Ray)", f"{distributed:.1f}", f"{args.images / distributed:.1f}",
                 f"{distributed / local:.2f}"))  # fmt: skip
    print(table(rows))
    print(f"(Ray start-up, not included above: {started:.1f} s)\n")

    queries = np.random.default_rng(1).standard_normal((100, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    header = ("index build, " + f"{args.rows:,} rows", "seconds", "recall@10", "p50 ms")
    print(table([header, *index_rows(args.rows, args.work, encoder, queries)]))


if __name__ == "__main__":
    main()
