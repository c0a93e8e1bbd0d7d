"""Other LanceDB index types over N random unit vectors: recall@10 and p50 latency, side by side.

    .venv/bin/python benchmarks/index_types.py [--rows 1000000] [--queries 50]

clipdex builds IVF_HNSW_SQ (benchmarks/query.py measures it). This script measures the quantised
alternatives with every partition probed and a refine step (re-ranking with full vectors), the
settings that buy recall on vectors without clusters: IVF_RQ (RaBitQ, 1 bit per dimension) and
IVF_PQ (64 sub-vectors of 8 bits). One table, each index built in turn.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
from common import table
from lancedb.index import IvfPq, IvfRq
from query import DIM, fill

from storage import Collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    db = args.work / f"index-types-{args.rows}"
    if db.exists():
        shutil.rmtree(db)
    vectors = fill(Collection.create(str(db), model="{}", dimension=DIM), args.rows, np.random.default_rng(args.rows))
    images = lancedb.connect(db).open_table("images")
    queries = np.random.default_rng(1).standard_normal((args.queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    rows = [("index", "build s", "nprobes", "refine", "p50 ms", "recall@10")]
    configs = [
        ("IVF_RQ, 256 partitions", IvfRq(distance_type="cosine", num_partitions=256)),
        ("IVF_PQ, 256 x 64 sub-vectors", IvfPq(distance_type="cosine", num_partitions=256, num_sub_vectors=64)),
    ]
    for name, config in configs:
        started = time.perf_counter()
        images.create_index("vector", config=config, replace=True, name="vector_idx")
        build = time.perf_counter() - started
        for nprobes, refine in ((64, 20), (256, 20), (256, 50)):
            times, found = [], []
            for i, q in enumerate(queries):
                started = time.perf_counter()
                hits = (
                    images.search(q, vector_column_name="vector")
                    .distance_type("cosine")
                    .nprobes(nprobes)
                    .refine_factor(refine)
                    .limit(10)
                    .select(["id"])
                    .to_arrow()
                )
                times.append(time.perf_counter() - started)
                found.append(len({int(x, 16) for x in hits["id"].to_pylist()} & set(truth[i])) / 10)
            p50 = float(np.median(times)) * 1000
            rows.append((name, f"{build:.0f}", str(nprobes), str(refine), f"{p50:.1f}", f"{np.mean(found):.3f}"))
    print(table(rows))


if __name__ == "__main__":
    main()
