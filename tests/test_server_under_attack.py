"""The target, end to end against a real `clipdex serve` process on loopback: every attack is answered
with a 4xx or a 410, the server stays alive and its RSS within 512 MB of idle throughout, and
/api/info answers while 16 clients upload 12-MP photos at once."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests import corpus
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLIPDEX = str(Path(sys.executable).parent / "clipdex")
HOST = "127.0.0.1"  # loopback only, never another address
MAX_GROWTH = 512 * 1024 * 1024  # bytes of RSS over idle that an attack may cost
SAMPLE_S = 0.05  # how often the RSS is sampled during an attack
CLIENT_TIMEOUT_S = 10.0
INFO_WORST_S = 5.0  # asserted; the 0.5 s target is measured by the benchmark (benchmarks/serve.py), not here
HALF_OPEN = 200
UPLOADERS = 16
PEAKS: dict[str, int] = {}  # attack -> peak RSS over idle, printed with -s


@dataclass
class Served:
    """A `clipdex serve` process, its address, idle RSS and the images it serves."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path
    idle_rss: int
    hits: list[dict[str, Any]] = field(default_factory=list)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def rss(pid: int) -> int:
    """VmRSS in bytes of a process and all its descendants (0 for one that is gone)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return total
    return total + sum(rss(child) for child in children)


def subprocess_env(tmp: Path) -> dict[str, str]:
    """This environment without the machine's CLIPDEX_* settings or user folders; decoding in-process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPDEX_")}
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        env[name] = str(tmp / name.lower())
    env["CLIPDEX_WORKERS"] = "0"
    return env


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, then a kill after 10 s; nothing of the process group is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # children of the server, if any outlived it
        os.killpg(process.pid, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, export_cache: Path) -> Iterator[Served]:
    """A small library ingested with the CLI, served by `clipdex serve` in its own process group."""
    tmp = tmp_path_factory.mktemp("under-attack")
    env = subprocess_env(tmp)
    env["CLIPDEX_CACHE"] = str(export_cache)  # the run's one export of the tiny model, not one more
    corpus.good_images(tmp / "photos")
    db = str(tmp / "db")
    ingest = subprocess.run(
        [CLIPDEX, "ingest", str(tmp / "photos"), "--db", db, "--model", tiny_model],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ingest.returncode == 0, ingest.stderr
    port = free_port()
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CLIPDEX, "serve", "--db", db, "--host", HOST, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"clipdex serve exited: {log.read_text(errors='replace')}"
            try:
                if httpx.get(f"{url}/api/info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "clipdex serve did not answer /api/info in 120 s"
            time.sleep(0.2)
        time.sleep(1)  # let start-up allocations settle
        server = Served(process, url, port, log, idle_rss=rss(process.pid))
        search = httpx.get(f"{url}/api/search", params={"q": "a", "k": 50}, timeout=CLIENT_TIMEOUT_S)
        assert search.status_code == 200, search.text
        server.hits = search.json()["hits"]
        assert len(server.hits) >= 10
        print(f"\nidle RSS of clipdex serve: {server.idle_rss / 2**20:.0f} MB")
        yield server
        print("\npeak RSS over idle, per attack: " + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in PEAKS.items()))
    finally:
        stop(process)


@contextlib.contextmanager
def attack(server: Served, name: str) -> Iterator[None]:
    """Sample the server's RSS every 50 ms while the block runs; then it must be alive and within 512 MB of idle."""
    peak = [rss(server.process.pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], rss(server.process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join(5)
    peak[0] = max(peak[0], rss(server.process.pid))
    growth = peak[0] - server.idle_rss
    PEAKS[name] = growth
    print(f"\n{name}: peak RSS {peak[0] / 2**20:.0f} MB, {growth / 2**20:+.0f} MB over idle")
    assert server.process.poll() is None, f"the server died during {name}: {server.log_tail()}"
    assert growth < MAX_GROWTH, f"{name} took the server {growth / 2**20:.0f} MB over idle"
    assert httpx.get(f"{server.url}/api/info", timeout=CLIENT_TIMEOUT_S).status_code == 200


def expect(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, f"{response.request.method} {response.request.url!s:.200}: " + (
        f"{response.status_code} {response.text[:300]}"
    )


def test_filters_that_would_allocate_are_refused(served: Served) -> None:
    wheres = [
        "repeat(caption, 1000000000) = 'x'",
        "lpad(path, 2000000000) = 'x'",
        "width > 0 AND " * 357 + "width > 0",  # 5,007 characters
        "caption = '" + "x" * 2000 + "'",
    ]
    with attack(served, "filters"), httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for where in wheres:
            expect(client.get(f"{served.url}/api/search", params={"q": "a", "where": where}), 400, 422)


def test_bombs_huge_bodies_and_long_texts_are_refused(served: Served) -> None:
    bomb = Image.new("1", (14000, 14000))
    uploads = {}
    for kind, options in (("TIFF", {"compression": "group4"}), ("PNG", {"optimize": True})):
        buffer = io.BytesIO()
        bomb.save(buffer, kind, **options)
        uploads[f"bomb.{kind.lower()}"] = buffer.getvalue()
    del bomb
    assert all(len(data) < 1_000_000 for data in uploads.values())
    with attack(served, "uploads"), httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for name, data in uploads.items():
            for route in ("/api/similar", "/api/embed/image"):
                response = client.post(f"{served.url}{route}", files={"file": (name, data, "image/octet-stream")})
                expect(response, 413)
                assert "14000x14000 is 196.0 MP" in response.json()["detail"]

        started = time.monotonic()
        with socket.create_connection((HOST, served.port), timeout=5) as s:  # 2 GB announced, 6 bytes sent
            s.sendall(
                b"POST /api/similar HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 2000000000\r\n\r\n--b\r\n"
            )
            answer = b""
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
        print(f"\na declared 2 GB body: 413 after {took:.3f} s")
        assert took < 5, f"a 2 GB Content-Length took {took:.1f} s to refuse"

        expect(client.post(f"{served.url}/api/embed/text", json={"text": "a" * 10_000_000}), 413, 422)


def test_swapped_files_are_gone_without_hanging(served: Served) -> None:
    by_format: dict[str, dict[str, Any]] = {}
    for hit in served.hits:
        by_format.setdefault(Path(hit["path"]).suffix.lower(), hit)
    link, text, fifo = by_format[".png"], by_format[".bmp"], by_format[".webp"]
    for hit in (link, text, fifo):
        os.unlink(hit["path"])
    os.symlink("/etc/passwd", link["path"])
    Path(text["path"]).write_text("root:x:0:0:root:/root:/bin/bash\n" * 3, encoding="utf-8")
    os.mkfifo(fifo["path"])
    with attack(served, "files"), httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for hit in (link, text, fifo):
            for route in (f"/api/images/{hit['id']}", f"/api/images/{hit['id']}/thumbnail"):
                response = client.get(f"{served.url}{route}")  # a hang is a ReadTimeout after 10 s
                expect(response, 410)
                assert b"root:" not in response.content


def test_half_open_connections_never_take_the_server_down(served: Served) -> None:
    sockets: list[socket.socket] = []
    with attack(served, "half-open"):
        try:
            for _ in range(HALF_OPEN):
                sockets.append(socket.create_connection((HOST, served.port), timeout=5))
            time.sleep(0.5)
            saturated = httpx.get(f"{served.url}/api/info", timeout=CLIENT_TIMEOUT_S)
            expect(saturated, 200, 503)  # limit_concurrency: a 503 while 128 connections are open
            print(f"\n/api/info with {HALF_OPEN} half-open connections: {saturated.status_code}")
        finally:
            for s in sockets:
                s.close()
        deadline = time.monotonic() + 10
        while (status := httpx.get(f"{served.url}/api/info", timeout=CLIENT_TIMEOUT_S).status_code) != 200:
            assert time.monotonic() < deadline, f"/api/info still {status} 10 s after the sockets were closed"
            time.sleep(0.2)


def test_info_answers_during_concurrent_12_mp_uploads(served: Served, tmp_path: Path) -> None:
    photo = corpus.large_jpeg(tmp_path / "big.jpg", megapixels=12).read_bytes()
    barrier = threading.Barrier(UPLOADERS + 1)
    statuses: list[int | str] = []
    times: list[float] = []

    def upload() -> None:
        barrier.wait(30)
        try:
            files = {"file": ("big.jpg", photo, "image/jpeg")}
            statuses.append(httpx.post(f"{served.url}/api/similar", files=files, timeout=120).status_code)
        except httpx.HTTPError as exc:
            statuses.append(repr(exc))

    uploaders = [threading.Thread(target=upload, daemon=True) for _ in range(UPLOADERS)]
    with attack(served, "16 uploads"), httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for thread in uploaders:
            thread.start()
        barrier.wait(30)
        while any(thread.is_alive() for thread in uploaders):
            started = time.monotonic()
            assert client.get(f"{served.url}/api/info").status_code == 200
            times.append(time.monotonic() - started)
            time.sleep(0.02)
        for thread in uploaders:
            thread.join(1)
    worst = max(times)
    print(f"\n/api/info during {UPLOADERS} concurrent 12-MP uploads: worst {worst:.3f} s of {len(times)} requests")
    assert statuses == [200] * UPLOADERS
    assert worst <= INFO_WORST_S  # the 0.5 s target is measured by the benchmark, not asserted on this noisy machine
