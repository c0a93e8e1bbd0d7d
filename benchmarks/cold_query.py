"""Cold `clipdex search` and `clipdex similar` from process start, split into import, model and
search, beside what importing LanceDB alone costs; and a warm query for new words.

    .venv/bin/python benchmarks/cold_query.py [--rounds 5] [--images 200]

Each cold run is a new process (`python -c` timing its own steps, and the real `clipdex` command
timed from outside); rounds are interleaved and the best kept. The ViT-B-32 architecture with
random weights is exported to OpenVINO once before timing (what a machine's first run does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, image_folder, table, vit_b_32

STEPS = r"""
import json, sys, time
t0 = time.perf_counter()
import lancedb
t_lancedb = time.perf_counter()
from pipeline import Clipdex
t_import = time.perf_counter()
lib = Clipdex.open(sys.argv[1], runtime=sys.argv[3])
kind = sys.argv[2]
if kind == "search":
    lib.check_request(None)
    vector = lib.embed_text("a dog on the beach at sunset")
else:
    vector = lib.embed_image(sys.argv[4])
t_model = time.perf_counter()
hits = lib.search_vector(vector, k=10)
t_search = time.perf_counter()
words = ["a red car", "two cats asleep", "snow on mountains", "a birthday cake", "city at night"]
warm = []
for w in words:
    s = time.perf_counter()
    lib.embed_text(w)
    warm.append(time.perf_counter() - s)
print(json.dumps({"lancedb": t_lancedb - t0, "import": t_import - t0, "model": t_model - t_import,
                  "search": t_search - t_model, "warm": min(warm), "torch": "torch" in sys.modules}))
"""


def run_steps(db: Path, kind: str, runtime: str, image: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, str(db), kind, runtime, str(image)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_cli(args: list[str]) -> float:
    clipdex = Path(sys.executable).with_name("clipdex")
    start = time.perf_counter()
    subprocess.run([str(clipdex), *args], capture_output=True, check=True)
    return time.perf_counter() - start


def import_lancedb() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lancedb"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    model = vit_b_32(args.work)
    photos = args.work / f"query-photos-{args.images}"
    paths = image_folder(photos, args.images, 0.05)
    db = args.work / f"query-db-{args.images}"
    if not db.exists():
        subprocess.run(
            [Path(sys.executable).with_name("clipdex"), "ingest", str(photos), "--db", str(db), "--model", model],
            check=True,
        )
    for runtime in ("torch", "openvino"):  # exports once, outside the timing
        run_steps(db, "search", runtime, paths[0])
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    cli: dict[tuple[str, str], list[float]] = {}
    base: list[float] = []
    for _ in range(args.rounds):
        base.append(import_lancedb())
        for runtime in ("torch", "openvino"):
            for kind in ("search", "similar"):
                results.setdefault((kind, runtime), []).append(run_steps(db, kind, runtime, paths[1]))
                query = ["search", "a dog on the beach"] if kind == "search" else ["similar", str(paths[1])]
                env_args = [*query, "--db", str(db), "--runtime", runtime]
                cli.setdefault((kind, runtime), []).append(run_cli(env_args))
    lancedb_s = min(base)
    rows = [
        [
            "command",
            "runtime",
            "process total s",
            "/ import lancedb",
            "import s",
            "model s",
            "search s",
            "warm ms",
            "torch loaded",
        ]
    ]
    for (kind, runtime), runs in results.items():
        best = min(runs, key=lambda r: r["import"] + r["model"] + r["search"])
        total = min(cli[(kind, runtime)])
        rows.append(
            [
                f"clipdex {kind}",
                runtime,
                f"{total:.2f}",
                f"{total / lancedb_s:.2f}",
                f"{best['import']:.2f}",
                f"{best['model']:.2f}",
                f"{best['search']:.3f}",
                f"{1000 * statistics.median(r['warm'] for r in runs):.1f}" if kind == "search" else "",
                str(best["torch"]),
            ]
        )
    print(f"ViT-B-32 (random weights), {args.images} images, best of {args.rounds} interleaved rounds")
    print(f"python -c 'import lancedb' alone: {lancedb_s:.2f} s (the floor of any command that opens a collection)")
    print(table(rows))
    print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
