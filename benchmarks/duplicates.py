"""Time to find duplicates in a collection of N random unit vectors with planted copies, and
whether the keepers are the originals.

1% of the images get an exact copy (same bytes: same hash and vector, a "copy" name, a later
mtime) and 1% a near copy (the vector nudged, half the pixels); rows are written through
storage's own upsert, no model needed.

.venv/bin/python benchmarks/duplicates.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import timed

from pipeline.analyse.duplicates import DuplicateGroup, find_duplicates, summarise, summary_text
from storage import Collection, ImageRecord

DIM = 512
CHUNK = 10_000
PLANTED = 0.01  # share of images with an exact copy, and again with a near copy
NAMES = {"": "", "c": " copy", "n": "_small"}  # original, exact copy, near copy


def fill(collection: Collection, rows: int, rng: np.random.Generator) -> tuple[int, int]:
    """rows random images, then the planted copies; returns (exact copies, near copies)."""
    vectors = rng.standard_normal((rows, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    planted = int(rows * PLANTED)
    exact = rng.choice(rows, planted, replace=False)
    near = rng.choice(np.setdiff1d(np.arange(rows), exact), planted, replace=False)

    def record(i: int, *, suffix: str = "", vector: np.ndarray | None = None, scale: int = 1) -> ImageRecord:
        copy = bool(suffix)
        return ImageRecord(
            id=f"{i:012x}{suffix}",
            path=f"/photos/{i // 1000:03d}/IMG_{i:06d}{NAMES[suffix]}.jpg",
            size=2_000_000 // scale,
            mtime_ns=(1_600_000_000 + i * 3600 + (10**7 if copy else 0)) * 10**9,
            hash=f"h{i}" if suffix != "n" else f"h{i}n",
            width=4000 // scale,
            height=3000 // scale,
            format="JPEG",
            vector=vectors[i] if vector is None else vector,
        )

    for start in range(0, rows, CHUNK):
        collection.upsert([record(i) for i in range(start, min(rows, start + CHUNK))], new=True)
    nudged = vectors[near] + rng.standard_normal((planted, DIM), dtype=np.float32) * 0.003
    nudged /= np.linalg.norm(nudged, axis=1, keepdims=True)
    copies = [record(int(i), suffix="c") for i in exact]
    copies += [record(int(i), suffix="n", vector=v, scale=2) for i, v in zip(near, nudged, strict=True)]
    collection.upsert(copies, new=True)
    return planted, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    db = args.work / f"duplicates-{args.rows}"
    if db.exists():
        shutil.rmtree(db)
    collection = Collection.create(str(db), model="{}", dimension=DIM)
    exact, near = fill(collection, args.rows, np.random.default_rng(0))
    groups: list[DuplicateGroup] = []
    seconds = timed(lambda: groups.extend(find_duplicates(collection)))
    originals = sum(
        " copy" not in g.keeper.path and "_small" not in g.keeper.path for g in groups if g.tier in ("exact", "near")
    )
    found = {tier: sum(g.tier == tier for g in groups) for tier in ("exact", "near")}
    print(f"{args.rows:,} images (+{exact} exact, +{near} near copies planted): find_duplicates in {seconds:.1f} s")
    print(f"found {found['exact']} exact and {found['near']} near groups; the original kept in {originals}")
    print(summary_text(summarise(groups)))
    shutil.rmtree(db)


if __name__ == "__main__":
    main()
