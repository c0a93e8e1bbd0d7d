"""Peak memory while ingesting many small images: the process and its decode workers together.

    .venv/bin/python benchmarks/memory.py [--images 20000]
    .venv/bin/python benchmarks/memory.py --tiny --images 50000 --compare 5000
    .venv/bin/python benchmarks/memory.py --images 1500 --runtimes torch,openvino

Runs `clipdex ingest` (ViT-B-32 architecture, random weights, default settings) as a separate
process and samples the resident memory of it and its children every 0.2 s from /proc; prints
the peak of the sum, and the sum at each quarter of the run, to show it stays flat. With
--tiny, the files are 16x12 pixels and the model the tests' tiny one, so that what grows with
the number of files (scan, plan, batches, writes) is not hidden behind the model's memory;
--compare N also ingests N files and prints the ratio of the two peaks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import image_folder, vit_b_32

from tests import corpus
from tests.tiny_model import tiny_model_dir


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def measure(folder: Path, model_id: str, runtime: str = "auto") -> tuple[float, list[float], float, str]:
    """Peak RSS, peak per quarter, wall seconds and the JSON summary of one `clipdex ingest`."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(Path(sys.executable).parent / "clipdex"), "ingest", str(folder), "--db", f"{tmp}/db"]
        command += ["--model", model_id, "--json", "--runtime", runtime]
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ)
        samples: list[tuple[float, float]] = []
        while process.poll() is None:
            samples.append((time.monotonic() - started, tree_rss_mb(process.pid)))
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        last = (process.stdout.read() if process.stdout else b"").decode().strip().splitlines()[-1]
    peak = max(rss for _, rss in samples)
    quarters = [
        max((r for t, r in samples if q * elapsed / 4 <= t < (q + 1) * elapsed / 4), default=0) for q in range(4)
    ]
    return peak, quarters, elapsed, last


def tiny_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"t{i:06d}.png"
        if not path.exists():
            corpus.pattern_image(path, seed=i, size=(16, 12))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--tiny", action="store_true", help="16x12 files and the tests' tiny model")
    parser.add_argument("--compare", type=int, help="also ingest this many files and compare the peaks")
    parser.add_argument("--runtimes", default="auto", help="comma-separated: each runtime ingests the folder")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    model_id = f"local-dir:{tiny_model_dir(args.work / 'tiny-model')}" if args.tiny else vit_b_32(args.work)
    peaks = {}
    for count in [args.images] + ([args.compare] if args.compare else []):
        started = time.monotonic()
        if args.tiny:
            folder = tiny_folder(args.work / f"tiny-{count}", count)
        else:
            folder = args.work / f"small-{count}"
            image_folder(folder, count, 0.05)
        print(f"{count} images ready in {folder} ({time.monotonic() - started:.0f} s)", flush=True)
        for runtime in args.runtimes.split(","):
            peak, quarters, elapsed, last = measure(folder, model_id, runtime)
            peaks[count] = peak
            print(f"runtime {runtime}, ingest: {last}")
            print(f"wall {elapsed:.0f} s, {count / elapsed:.1f} img/s including start-up")
            per_quarter = ", ".join(f"{q:.0f}" for q in quarters)
            print(f"peak RSS (process + workers): {peak:.0f} MiB; peak per quarter of the run: {per_quarter} MiB")
    if args.compare:
        ratio = peaks[args.images] / peaks[args.compare]
        print(f"peak at {args.images} files / peak at {args.compare} files: {ratio:.2f}")


if __name__ == "__main__":
    main()
