"""Search latency through HTTP, a CLI query sent to a running server, and many clients at once.

    .venv/bin/python benchmarks/serve.py [--rows 100000] [--queries 200]
    .venv/bin/python benchmarks/serve.py --concurrency 1,8,32,64 [--tiny] [--requests 200] [--seconds 20]

Starts `clipdex serve` on 127.0.0.1 (ViT-B-32 architecture, random weights; --tiny: the tests'
tiny model). Without --concurrency: over a collection of N random vectors made by
benchmarks/query.py (made here if missing), times GET /api/search with new texts (the text tower
runs) and with repeated texts (cached), and `clipdex search --server` from process start.

With --concurrency: over a collection of 64 ingested images, for each number of clients (threads,
one keep-alive connection each) sends a bounded number of requests of each kind (text search with
new words, image-upload search, POST /api/embed/image) and prints requests/s, p50 and p95, against
the offline batched rate (encoder.embed_pixels on full batches, in this process, before the server
starts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
from common import ROOT, image_folder, table, timed, vit_b_32
from PIL import Image
from query import DIM, fill

import models
from pipeline import Clipdex, Settings
from storage import Collection
from tests.tiny_model import tiny_model_dir

UPLOADS = 64  # distinct images, ingested and uploaded
UPLOAD_MEGAPIXELS = 0.3  # 640x480: a phone photo scaled down for upload
KINDS = ("text search", "image search", "embed image")


def collection_with(rows: int, work: Path) -> Path:
    db = work / f"serve-{rows}"
    if not (db / "meta.lance").exists():
        encoder = models.load_encoder(models.EncoderSpec(model=vit_b_32(work)))
        fp = encoder.fingerprint
        collection = Collection.create(str(db), model=fp.to_json(), dimension=DIM)
        fill(collection, rows, np.random.default_rng(rows))
        collection.ensure_index(100_000)
    return db


@contextlib.contextmanager
def server(db: Path) -> Iterator[str]:
    """`clipdex serve` on a free loopback port, in its own process; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clipdex = str(Path(sys.executable).parent / "clipdex")
    process = subprocess.Popen([clipdex, "serve", "--db", str(db), "--port", str(port)], cwd=ROOT)
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
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def latency(args: argparse.Namespace) -> None:
    """p50 / p95 of one client's searches, and of the CLI asking the server."""
    db = collection_with(args.rows, args.work)
    clipdex = str(Path(sys.executable).parent / "clipdex")
    with server(db) as base:

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


def image_collection(work: Path, tiny: bool) -> tuple[Path, list[Path]]:
    """A collection of UPLOADS ingested images (made once), and the images."""
    name = "tiny" if tiny else "vit-b-32"
    model = "local-dir:" + str(tiny_model_dir(work / "tiny-model")) if tiny else vit_b_32(work)
    images = image_folder(work / "serve-uploads", UPLOADS, UPLOAD_MEGAPIXELS)
    db = work / f"serve-images-{name}"
    if not (db / "meta.lance").exists():
        Clipdex.open(db, model=model, create=True, settings=Settings(workers=0)).ingest([images[0].parent])
    return db, images


def offline_rate(db: Path, images: list[Path], seconds: float) -> tuple[float, int]:
    """Images per second of encoder.embed_pixels on full batches, and the batch size."""
    encoder = Clipdex.open(db, settings=Settings(workers=0)).encoder
    pixels = [encoder.transform.to_pixels(Image.open(p).convert("RGB")) for p in images]
    batch = np.stack([pixels[i % len(pixels)] for i in range(encoder.batch_size)])
    encoder.embed_pixels(batch)  # warm up
    done, start = 0, time.perf_counter()
    while done < 3 * len(batch) or time.perf_counter() - start < min(seconds, 10):
        encoder.embed_pixels(batch)
        done += len(batch)
    return done / (time.perf_counter() - start), encoder.batch_size


def load(base: str, kind: str, clients: int, uploads: list[bytes], requests: int, seconds: float) -> list[float]:
    """Latencies in ms of `requests` requests of this kind from `clients` threads (at most `seconds`);
    a refused request (503) is recorded as NaN."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    taken = 0

    def send(client: httpx.Client, i: int) -> httpx.Response:
        if kind == "text search":
            return client.get("/api/search", params={"q": f"new words {clients} {i} {time.time_ns()}", "k": 10})
        route = "/api/similar" if kind == "image search" else "/api/embed/image"
        return client.post(route, files={"file": (f"u{i}.jpg", uploads[i % len(uploads)], "image/jpeg")})

    def worker() -> None:
        nonlocal taken
        with httpx.Client(base_url=base, timeout=120) as client:
            while time.monotonic() < deadline:
                with lock:
                    if taken >= requests:
                        return
                    i = taken
                    taken += 1
                start = time.perf_counter()
                response = send(client, i)
                took = (time.perf_counter() - start) * 1000
                if response.status_code not in (200, 503):
                    raise AssertionError(f"{kind}: {response.status_code} {response.text}")
                with lock:
                    latencies.append(took if response.status_code == 200 else float("nan"))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def concurrency(args: argparse.Namespace) -> None:
    """Requests/s, p50 and p95 per kind and number of clients, against the offline batched rate."""
    counts = [int(c) for c in args.concurrency.split(",")]
    db, images = image_collection(args.work, args.tiny)
    offline, batch_size = offline_rate(db, images, args.seconds)
    uploads = [p.read_bytes() for p in images]
    rows = [("kind", "clients", "requests", "req/s", "p50 ms", "p95 ms", "503s")]
    rates: dict[tuple[str, int], float] = {}
    p50: dict[tuple[str, int], float] = {}
    p95: dict[tuple[str, int], float] = {}
    with server(db) as base:
        for kind in KINDS:
            load(base, kind, 2, uploads, 8, 60)  # warm up: first passes, thread pools, caches
            for clients in counts:
                start = time.perf_counter()
                ms = np.array(load(base, kind, clients, uploads, args.requests, args.seconds))
                wall = time.perf_counter() - start
                ok = ms[~np.isnan(ms)]
                key = (kind, clients)
                rates[key], p50[key], p95[key] = len(ok) / wall, *np.percentile(ok, [50, 95])
                refused = str(len(ms) - len(ok))
                rows.append(
                    (
                        kind,
                        str(clients),
                        str(len(ms)),
                        f"{rates[key]:.1f}",
                        f"{p50[key]:.0f}",
                        f"{p95[key]:.0f}",
                        refused,
                    )
                )
                print(" ".join(rows[-1]), file=sys.stderr, flush=True)
    model = "tiny model" if args.tiny else "ViT-B-32 (random weights)"
    print(f"{model}, {UPLOADS} images of {UPLOAD_MEGAPIXELS} MP; per row at most {args.requests} requests or")
    print(f"{args.seconds:g} s; the clients run on the server's machine\n{table(rows)}")
    print(f"offline batched: {offline:.1f} img/s (encoder.embed_pixels, batches of {batch_size})")
    embed = "embed image"
    for clients in (c for c in counts if c == 32):
        print(
            f"32 clients, embed image: {rates[(embed, clients)] / offline:.2f} of the offline rate; "
            f"p95(32) / p50(1) = {p95[(embed, clients)] / p50.get((embed, 1), float('nan')):.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--concurrency", help="numbers of clients at once, e.g. 1,8,32,64")
    parser.add_argument("--requests", type=int, default=200, help="per kind and number of clients")
    parser.add_argument("--seconds", type=float, default=20, help="at most, per kind and number of clients")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model: a quick run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench")
    args = parser.parse_args()
    run: Callable[[argparse.Namespace], None] = concurrency if args.concurrency else latency
    run(args)


if __name__ == "__main__":
    main()
