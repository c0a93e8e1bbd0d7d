"""Time to find duplicates in a collection of N random unit vectors (with some planted copies).

.venv/bin/python benchmarks/duplicates.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import timed
from query import DIM, fill

from pipeline.analyse.duplicates import find_duplicates
from storage import Collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    db = args.work / f"duplicates-{args.rows}"
    if db.exists():
        shutil.rmtree(db)
    collection = Collection.create(str(db), model="{}", dimension=DIM)
    fill(collection, args.rows, np.random.default_rng(0))
    groups: list[object] = []
    seconds = timed(lambda: groups.extend(find_duplicates(collection)))
    print(f"{args.rows:,} images: find_duplicates in {seconds:.1f} s, {len(groups)} groups")


if __name__ == "__main__":
    main()
