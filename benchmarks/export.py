"""Peak memory of `clipdex export` for N and 4N rows: it must stay flat (streamed), not grow with N.

Synthetic collections (random unit vectors, one image in ten captioned) are written through
storage's own upsert, no model needed, in a process of their own; each export runs in a fresh
process whose peak RSS (VmHWM: ru_maxrss would carry over the parent's peak across exec) is
compared with its RSS just before the export started. --arena-max N runs the exports with
MALLOC_ARENA_MAX=N, to tell memory that is live from memory glibc's per-thread arenas keep.

.venv/bin/python benchmarks/export.py [--rows 25000] [--dim 512] [--formats parquet,csv,npy] [--arena-max 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from storage import Collection, ImageRecord

ROOT = Path(__file__).resolve().parent.parent

CHUNK = 10_000  # rows per upsert while building the synthetic collection


def build(db: Path, rows: int, dim: int) -> None:
    """A collection of rows random rows, written in chunks through Collection.upsert."""
    if db.exists():
        shutil.rmtree(db)
    collection = Collection.create(str(db), model="{}", dimension=dim)
    rng = np.random.default_rng(rows)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = [
            ImageRecord(
                id=f"{i:016x}",
                path=f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg",
                size=2_000_000 + i,
                mtime_ns=1_700_000_000 * 10**9 + i,
                hash=f"{i:032x}",
                width=4000,
                height=3000,
                format="JPEG",
                vector=vectors[i - start],
                taken_at=datetime(2024, 1, 1 + i % 28),
                caption=f"caption {i}" if i % 10 == 0 else None,
                caption_source="sidecar" if i % 10 == 0 else None,
                caption_vector=vectors[i - start][::-1].copy() if i % 10 == 0 else None,
            )
            for i in range(start, start + n)
        ]
        collection.upsert(records, new=True)


def child(db: str, out: str, fmt: str) -> None:
    """Run one export in this process; print the RSS before it (KB) and the seconds it took."""
    from pipeline.maintain.export import export  # noqa: PLC0415 - imported before the baseline is taken

    collection = Collection.open(db)
    before = _peak_kb()
    start = time.perf_counter()
    report = export(collection, out, format=fmt, force=True)
    print(before, _peak_kb(), time.perf_counter() - start, report.rows, report.bytes)


def _peak_kb() -> int:
    """This process's peak resident memory so far (VmHWM), in KB."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def run_child(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run this script in a fresh process; its stdout."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, env=environ)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def measure(db: Path, out: Path, fmt: str, env: dict[str, str]) -> tuple[float, float, float, int, int]:
    """(peak MB, MB above the pre-export baseline, seconds, rows, bytes written) of one export."""
    before, peak, seconds, rows, size = run_child(["--child", str(db), str(out), fmt], env).split()
    return int(peak) / 1024, (int(peak) - int(before)) / 1024, float(seconds), int(rows), int(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_000, help="N: the small collection; the large one has 4N")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--formats", default="parquet,csv,npy")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    parser.add_argument("--arena-max", type=int, help="run the exports with MALLOC_ARENA_MAX set to this")
    parser.add_argument("--child", nargs=3, metavar=("DB", "OUT", "FORMAT"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=3, metavar=("DB", "ROWS", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.build:
        build(Path(args.build[0]), int(args.build[1]), int(args.build[2]))
        return
    # Only here: common imports the test models (torch), which would inflate a child's baseline.
    from common import table  # noqa: PLC0415

    env = {"MALLOC_ARENA_MAX": str(args.arena_max)} if args.arena_max else {}
    rows_out = [["rows", "format", "seconds", "written MB", "peak RSS MB", "RSS added by export MB"]]
    for rows in (args.rows, 4 * args.rows):
        db = args.work / f"export-{rows}-{args.dim}"
        started = time.perf_counter()
        run_child(["--build", str(db), str(rows), str(args.dim)])  # this process stays small
        print(f"built {rows:,} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for fmt in args.formats.split(","):
            out = args.work / f"export-{rows}.{fmt}"
            peak, added, seconds, exported, size = measure(db, out, fmt, env)
            assert exported == rows, (exported, rows)
            rows_out.append([f"{rows:,}", fmt, f"{seconds:.1f}", f"{size / 1e6:.0f}", f"{peak:.0f}", f"{added:.0f}"])
            for stale in args.work.glob(f"export-{rows}*.*"):
                if stale.is_file():
                    stale.unlink()  # the outputs can be large; only their sizes are kept
        shutil.rmtree(db)
    if env:
        print(f"(exports run with MALLOC_ARENA_MAX={args.arena_max})")
    print(table(rows_out))


if __name__ == "__main__":
    main()
