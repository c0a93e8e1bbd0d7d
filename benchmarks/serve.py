"""Search latency through HTTP, and a CLI query sent to a running server.

    .venv/bin/python benchmarks/serve.py [--rows 100000] [--queries 200]

Starts `clipdex serve` (ViT-B-32 architecture, random weights) over a collection of N random
vectors made by benchmarks/query.py (made here if missing), then times GET /api/search with
new texts (the text tower runs) and with repeated texts (cached), and `clipdex search --server`
from process start.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from common import ROOT, table, timed, vit_b_32
from query import DIM, fill

import models
from storage import Collection


def collection_with(rows: int, work: Path) -> Path:
    db = work / f"serve-{rows}"
    if not (db / "meta.lance").exists():
        encoder = models.load_encoder(models.EncoderSpec(model=vit_b_32(work)))
        fp = encoder.fingerprint
        collection = Collection.create(str(db), model=fp.to_json(), dimension=DIM)
        fill(collection, rows, np.random.default_rng(rows))
        collection.ensure_index(100_000)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    db = collection_with(args.rows, args.work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clipdex = str(Path(sys.executable).parent / "clipdex")
    server = subprocess.Popen([clipdex, "serve", "--db", str(db), "--port", str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/api/info", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)

        def get(text: str) -> float:
            url = f"{base}/api/search?{urllib.parse.urlencode({'q': text, 'k': 10})}"
            start = time.perf_counter()
            body = json.load(urllib.request.urlopen(url))
            assert len(body["hits"]) == 10
            return (time.perf_counter() - start) * 1000

        new = [get(f"photo number {i} of a thing") for i in range(args.queries)]
        cached = [get(f"photo number {i % 10} of a thing") for i in range(args.queries)]
        command = [clipdex, "search", "a dog on the beach", "--server", base, "-k", "10", "--json"]
        cli = sorted(timed(lambda: subprocess.run(command, check=True, capture_output=True)) for _ in range(7))
        rows = [("query", "p50 ms", "p95 ms")]
        rows.append(("HTTP search, new text", f"{np.percentile(new, 50):.1f}", f"{np.percentile(new, 95):.1f}"))
        rows.append(
            ("HTTP search, cached text", f"{np.percentile(cached, 50):.1f}", f"{np.percentile(cached, 95):.1f}")
        )
        rows.append(("CLI --server, from process start", f"{cli[3] * 1000:.0f}", f"{cli[-1] * 1000:.0f}"))
        print(f"{args.rows:,} rows, index built, {args.queries} queries each\n{table(rows)}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
