"""Dynamic batching in the server: concurrent requests share forward passes, get the vectors they would
alone, and a full queue is a 503 with Retry-After; through a real uvicorn on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from pipeline import Clipdex
from pipeline.server.app import create_app
from pipeline.server.batching import Batcher, Stopped
from tests import corpus
from tests.conftest import serving


class Gate:
    """Stands in for an encoder method: records each batch's size; the first batch waits until opened."""

    def __init__(self, real: Callable[[Any], np.ndarray]) -> None:
        self.real = real
        self.sizes: list[int] = []
        self.inside = threading.Event()
        self.opened = threading.Event()

    def __call__(self, items: Sequence[Any]) -> np.ndarray:
        self.sizes.append(len(items))
        self.inside.set()
        self.opened.wait(60)
        return self.real(items)


@contextlib.contextmanager
def served(
    lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> Iterator[tuple[str, Batcher]]:
    """tests.conftest.serving, with these create_app options; yields the URL and the app's batcher."""
    made: list[FastAPI] = []

    def make(*args: Any, **kwargs: Any) -> FastAPI:
        made.append(create_app(*args, **kwargs, **options))
        return made[-1]

    monkeypatch.setattr("tests.conftest.create_app", make)
    with serving(lib, tmp_path / "thumbs") as url:
        yield url, made[0].state.batcher


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def in_threads(calls: Sequence[Callable[[], httpx.Response]]) -> tuple[list[threading.Thread], list[Any]]:
    """Start one thread per call; its response lands at its index once joined."""
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, out


def cosine(a: Sequence[float], b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sixteen_concurrent_uploads_share_a_pass_and_get_their_own_vectors(
    lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [corpus.pattern_image(tmp_path / "uploads" / f"u{i}.png", seed=100 + i) for i in range(16)]
    expected = [lib.embed_image(path) for path in paths]
    gate = Gate(lib.encoder.embed_pixels)
    monkeypatch.setattr(lib.encoder, "embed_pixels", gate)
    with served(lib, tmp_path, monkeypatch) as (url, batcher):

        def upload(path: Path) -> Callable[[], httpx.Response]:
            files = {"file": (path.name, path.read_bytes(), "image/png")}
            return lambda: httpx.post(f"{url}/api/embed/image", files=files, timeout=60)

        threads, responses = in_threads([upload(p) for p in paths])
        try:
            assert gate.inside.wait(30), "no upload reached the model"
            wait_until(lambda: batcher.waiting == 16 - gate.sizes[0], "the other uploads were not queued")
            started = time.monotonic()
            info = httpx.get(f"{url}/api/info", timeout=10)  # the model is busy, the server is not
            took = time.monotonic() - started
        finally:
            gate.opened.set()
            for thread in threads:
                thread.join(60)
    assert info.status_code == 200 and info.json()["images"] == 17 and took < 5
    assert [r.status_code for r in responses] == [200] * 16
    assert sum(gate.sizes) == 16 and len(gate.sizes) == 2  # the first upload alone, then the other 15 at once
    for response, vector in zip(responses, expected, strict=True):
        assert np.allclose(response.json()["vector"], vector, atol=1e-5)
        assert cosine(response.json()["vector"], vector) >= 0.9999


def test_concurrent_text_searches_and_embeds_are_batched(
    lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"a photo of thing number {i}" for i in range(12)]
    expected = {text: lib.embed_text(text) for text in texts}
    ranked = {text: [h.id for h in lib.search(text, k=3)] for text in texts}
    gate = Gate(lib.encoder.embed_texts)
    monkeypatch.setattr(lib.encoder, "embed_texts", gate)
    with served(lib, tmp_path, monkeypatch) as (url, batcher):
        calls: list[Callable[[], httpx.Response]] = []
        for i, text in enumerate(texts):
            if i % 2:
                calls.append(lambda t=text: httpx.post(f"{url}/api/embed/text", json={"text": t}, timeout=60))
            else:
                calls.append(lambda t=text: httpx.get(f"{url}/api/search", params={"q": t, "k": 3}, timeout=60))
        threads, responses = in_threads(calls)
        try:
            assert gate.inside.wait(30), "no text reached the model"
            wait_until(lambda: batcher.waiting == 12 - gate.sizes[0], "the other texts were not queued")
        finally:
            gate.opened.set()
            for thread in threads:
                thread.join(60)
        again = httpx.get(f"{url}/api/search", params={"q": texts[0], "k": 3}, timeout=10)
    assert [r.status_code for r in responses] == [200] * 12
    assert len(gate.sizes) < len(texts) and sum(gate.sizes) == 12  # fewer passes than requests
    for i, (text, response) in enumerate(zip(texts, responses, strict=True)):
        if i % 2:
            assert cosine(response.json()["vector"], expected[text]) >= 0.9999
        else:
            assert [h["id"] for h in response.json()["hits"]] == ranked[text]
    assert again.status_code == 200 and sum(gate.sizes) == 12  # a text seen before: from the cache


def test_a_full_queue_is_a_503_with_retry_after(lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(lib.encoder.embed_texts)
    monkeypatch.setattr(lib.encoder, "embed_texts", gate)
    image = corpus.pattern_image(tmp_path / "q.png", seed=7).read_bytes()
    with served(lib, tmp_path, monkeypatch, max_queued=2) as (url, batcher):

        def search(text: str) -> Callable[[], httpx.Response]:
            return lambda: httpx.get(f"{url}/api/search", params={"q": text}, timeout=60)

        threads, first = in_threads([search("held in the model")])
        try:
            assert gate.inside.wait(30), "the first search did not reach the model"
            more, waiting = in_threads([search("waiting one"), search("waiting two")])
            threads += more
            wait_until(lambda: batcher.waiting == 2, "two searches were not queued")
            refused = [
                httpx.get(f"{url}/api/search", params={"q": "one too many"}, timeout=10),
                httpx.post(f"{url}/api/embed/text", json={"text": "one too many"}, timeout=10),
                httpx.post(f"{url}/api/similar", files={"file": ("q.png", image, "image/png")}, timeout=10),
            ]
            info = httpx.get(f"{url}/api/info", timeout=10)
        finally:
            gate.opened.set()
            for thread in threads:
                thread.join(60)
        after = httpx.get(f"{url}/api/search", params={"q": "one too many"}, timeout=60)
    for response in refused:
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json() == {"detail": "the model is busy: 2 requests are waiting for it; try again in a second"}
    assert info.status_code == 200
    assert [r.status_code for r in first + waiting] == [200] * 3 and after.status_code == 200


def test_a_slow_upload_never_holds_up_a_search(lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = corpus.pattern_image(tmp_path / "slow.png", seed=9).read_bytes()
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\nContent-Type: image/png\r\n\r\n'
    body = head + image + b"\r\n--b--\r\n"
    with (
        served(lib, tmp_path, monkeypatch) as (url, _),
        socket.create_connection(("127.0.0.1", int(url.rsplit(":")[-1]))) as s,
    ):
        s.settimeout(30)
        s.sendall(
            b"POST /api/embed/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        started = time.monotonic()
        search = httpx.get(f"{url}/api/search", params={"q": "while an upload trickles in"}, timeout=10)
        took = time.monotonic() - started
        s.sendall(body[len(body) // 2 :])
        answer = b""
        while b"vector" not in answer and (chunk := s.recv(65536)):
            answer += chunk
    assert search.status_code == 200 and took < 5
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_the_model_thread_stops_with_the_server_and_then_refuses_work(
    lib: Clipdex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served(lib, tmp_path, monkeypatch) as (url, batcher):
        assert httpx.get(f"{url}/api/search", params={"q": "x"}, timeout=30).status_code == 200
        assert batcher.running
    wait_until(lambda: not batcher.running, "the model thread outlived the server")
    with pytest.raises(Stopped, match=r"^the server is shutting down; try again when it is back$"):
        batcher.submit_text("x")


def test_one_batch_embeds_images_and_texts_like_the_encoder_alone(lib: Clipdex) -> None:
    batcher = Batcher(lib.encoder, max_queued=8)
    pixels = [np.random.default_rng(i).integers(0, 256, (*lib.encoder.transform.size, 3), np.uint8) for i in range(3)]
    futures = [batcher.submit_pixels(p) for p in pixels] + [batcher.submit_text(t) for t in ("a cat", "a dog", "a cat")]
    batcher.start()
    try:
        got = [future.result(timeout=30) for future in futures]
    finally:
        batcher.stop()
    alone = [lib.encoder.embed_pixels(p[None])[0] for p in pixels]
    alone += [lib.encoder.embed_texts([t])[0] for t in ("a cat", "a dog", "a cat")]
    for vector, expected in zip(got, alone, strict=True):
        assert np.allclose(vector, expected, atol=1e-5)
    assert not batcher.running
