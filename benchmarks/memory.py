"""Peak memory while ingesting many small images: the process and its decode workers together.

    .venv/bin/python benchmarks/memory.py [--images 20000]

Runs `clipdex ingest` (ViT-B-32 architecture, random weights, default settings) as a separate
process and samples the resident memory of it and its children every 0.2 s from /proc; prints
the peak of the sum, and the sum at each quarter of the run, to show it stays flat.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    model_id = vit_b_32(args.work)
    folder = args.work / f"small-{args.images}"
    started = time.monotonic()
    image_folder(folder, args.images, 0.05)
    print(f"{args.images} images of 0.05 MP ready in {folder} ({time.monotonic() - started:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(Path(sys.executable).parent / "clipdex"), "ingest", str(folder), "--db", f"{tmp}/db"]
        command += ["--model", model_id, "--json"]
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
    print(f"ingest: {last}")
    print(f"wall {elapsed:.0f} s, {args.images / elapsed:.1f} img/s including start-up")
    per_quarter = ", ".join(f"{q:.0f}" for q in quarters)
    print(f"peak RSS (process + workers): {peak:.0f} MiB; peak per quarter of the run: {per_quarter} MiB")


if __name__ == "__main__":
    main()
