"""Query latency and recall: exact search against the ANN index, over N random unit vectors.

    .venv/bin/python benchmarks/query.py [--rows 100000 1000000] [--queries 200]

For each N: p50 / p95 of a search (vector in, Hit records out) without and with the index
clipdex builds above its row threshold, recall@10 of the index against exact (numpy) top-10,
the index build time, a text query through the ViT-B-32 text tower (warm: cached; cold: new
words), and a cold `clipdex search` from process start (model load included).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import ROOT, table, timed, vit_b_32

import models
from pipeline import Clipdex, Settings
from storage import Collection, Hit
from storage.schema import images_schema

DIM = 512
CHUNK = 50_000


def fill(collection: Collection, rows: int, rng: np.random.Generator) -> np.ndarray:
    """rows random unit vectors, written in large appends (a benchmark shortcut past ingest)."""
    vectors = rng.standard_normal((rows, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    schema = images_schema(DIM)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        ids = [f"{i:012x}" for i in range(start, start + n)]
        batch = {
            "id": ids,
            "path": [f"/photos/{i}.jpg" for i in ids],
            "size": pa.array(np.full(n, 1000), pa.int64()),
            "mtime_ns": pa.array(np.zeros(n, np.int64)),
            "hash": ids,
            "width": pa.array(np.full(n, 640, np.int32)),
            "height": pa.array(np.full(n, 480, np.int32)),
            "format": ["JPEG"] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[start : start + n].ravel()), DIM),
            "ingested_at": pa.array(np.zeros(n, "datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
        }
        for name in ("taken_at", "description", "caption", "caption_source", "caption_vector"):
            batch[name] = pa.nulls(n, schema.field(name).type)
        collection._images.add(pa.table(batch).select(schema.names).cast(schema))
    return vectors


def latencies(fn: object, queries: np.ndarray) -> tuple[float, float, list[list[str]]]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        hits = fn(q)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
        results.append([h.id for h in hits])
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), results


def recall(found: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & {f"{i:012x}" for i in t}) / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(n: int, encoder: models.OpenClipEncoder, queries: np.ndarray, work: Path) -> list[tuple[str, ...]]:
    """All the rows of the table for one collection size."""
    db = work / f"query-{n}"
    if db.exists():
        shutil.rmtree(db)
    fp = encoder.fingerprint
    collection = Collection.create(str(db), model=fp.to_json(), dimension=DIM)
    vectors = fill(collection, n, np.random.default_rng(n))
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    lib = Clipdex(collection, encoder, Settings())

    def search(q: np.ndarray) -> list[Hit]:
        return lib.search_vector(q, k=10)

    rows = []
    exact_queries = queries[: max(10, len(queries) * 100_000 // n)]  # exact search is slow: fewer
    p50, p95, found = latencies(search, exact_queries)
    exact_recall = recall(found, truth[: len(exact_queries)])
    rows.append((f"{n:,}", "exact", f"{p50:.1f}", f"{p95:.1f}", f"{exact_recall:.3f}", ""))
    build = timed(lambda: collection.ensure_index(1))
    p50, p95, found = latencies(search, queries)
    rows.append((f"{n:,}", "index", f"{p50:.1f}", f"{p95:.1f}", f"{recall(found, truth):.3f}", f"{build:.1f}"))
    words = [f"a photo of thing number {i}" for i in range(20)]
    for label in ("text, new words", "text, cached"):
        ms = [timed(lambda w=w: lib.search(w, k=10)) * 1000 for w in words]
        rows.append((f"{n:,}", label, f"{np.median(ms):.1f}", f"{np.percentile(ms, 95):.1f}", "", ""))
    clipdex = str(Path(sys.executable).parent / "clipdex")
    command = [clipdex, "search", "a dog on the beach", "--db", str(db), "-k", "10", "--json"]
    cli = min(timed(lambda: subprocess.run(command, check=True, capture_output=True, cwd=ROOT)) for _ in range(3))
    rows.append((f"{n:,}", "cold CLI process", f"{cli * 1000:.0f}", "", "", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    encoder = models.load_encoder(models.EncoderSpec(model=vit_b_32(args.work)))
    queries = np.random.default_rng(1).standard_normal((args.queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = [("rows", "search", "p50 ms", "p95 ms", "recall@10", "build s")]
    for n in args.rows:
        rows += measure(n, encoder, queries, args.work)
        print(table(rows), flush=True)
    print(f"\n{encoder.precision} text tower on {encoder.device}; index: IVF_HNSW_SQ, cosine")


if __name__ == "__main__":
    main()
