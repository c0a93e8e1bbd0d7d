"""Dynamic batching: one thread owns the model, and requests that arrive together share a forward pass.

Handlers put a job on a bounded queue and await its future; the thread takes what is waiting
(up to the encoder's batch size, waiting at most BATCH_WAIT_S for more), embeds the images of
the batch in one pass and its texts in another, and resolves every job's future. A full queue
refuses the job at once (QueueFull, a 503 with Retry-After), so waiting work never grows
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from models import Encoder
from pipeline.library import TEXT_CACHE_SIZE

BATCH_WAIT_S = 0.005  # how long a batch waits to fill: a few ms of latency for a full forward pass
MAX_CACHED_TEXT_CHARS = 200  # longer texts are embedded every time: queries are short, the cache stays small
STOP_JOIN_S = 10  # on shutdown, the batch in flight gets this long to finish


class QueueFull(Exception):
    """The model's queue is full: the request is refused, to be tried again in a second."""


class Stopped(Exception):
    """The batcher was stopped (the server is shutting down) before this job ran."""


@dataclass(frozen=True, eq=False)
class _Job:
    pixels: np.ndarray | None  # one image, (height, width, 3) uint8, already through the transform
    text: str | None
    future: Future[np.ndarray] = field(default_factory=Future)


class Batcher:
    """The model of a server, shared by all its requests through one bounded queue and one thread."""

    def __init__(self, encoder: Encoder, max_queued: int, wait_s: float = BATCH_WAIT_S) -> None:
        self.encoder = encoder
        self.max_queued = max_queued
        self.wait_s = wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queued)
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self._texts_lock = threading.Lock()  # the loop reads the cache, the batch thread fills it
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clipdex-batcher", daemon=True)

    def start(self) -> None:
        """Start the thread that runs the model."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in flight, refuse what still waits (Stopped), and end the thread."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # wakes an idle thread; a busy one sees the event after its batch
            self._queue.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)

    @property
    def waiting(self) -> int:
        """Jobs in the queue, not yet taken into a batch."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """Whether the model thread is alive."""
        return self._thread.is_alive()

    def check_room(self) -> None:
        """Raise QueueFull now, before an upload is decoded for a queue with no room."""
        if self._queue.full():
            raise QueueFull(self._full_message())

    async def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The vector of one image's pixels (as encoder.transform makes them), from a shared forward pass."""
        return await asyncio.wrap_future(self.submit_pixels(pixels))

    async def embed_text(self, text: str) -> np.ndarray:
        """The vector of a text: from the cache, else from a shared forward pass."""
        with self._texts_lock:
            cached = self._texts.get(text)
            if cached is not None:
                self._texts.move_to_end(text)
                return cached.copy()
        return await asyncio.wrap_future(self.submit_text(text))

    def submit_pixels(self, pixels: np.ndarray) -> Future[np.ndarray]:
        """Queue one image's pixels; raises QueueFull when max_queued jobs already wait, Stopped after stop()."""
        return self._submit(_Job(pixels, None))

    def submit_text(self, text: str) -> Future[np.ndarray]:
        """Queue a text (the cache is not asked); raises QueueFull or Stopped as submit_pixels does."""
        return self._submit(_Job(None, text))

    def _submit(self, job: _Job) -> Future[np.ndarray]:
        if self._stopping.is_set():
            raise Stopped("the server is shutting down; try again when it is back")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self._full_message()) from None
        return job.future

    def _full_message(self) -> str:
        return f"the model is busy: {self.max_queued} requests are waiting for it; try again in a second"

    def _run(self) -> None:
        while not self._stopping.is_set():
            jobs = self._take()
            if jobs:
                self._embed(jobs)
        self._refuse_waiting()

    def _take(self) -> list[_Job]:
        """What waits, up to the batch size; waits at most wait_s for the batch to fill."""
        first = self._queue.get()
        if first is None:
            return []
        jobs = [first]
        deadline = time.monotonic() + self.wait_s
        while len(jobs) < self.encoder.batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:  # stop(): run what was taken, then end
                break
            jobs.append(job)
        return jobs

    def _embed(self, jobs: list[_Job]) -> None:
        """One forward pass for the images of the batch, one for its texts; each future gets its row."""
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # not cancelled meanwhile
        images = [(job, job.pixels) for job in live if job.pixels is not None]
        texts = [(job, job.text) for job in live if job.text is not None]
        if images:
            pixels = [p for _, p in images]
            self._resolve([job for job, _ in images], lambda: self.encoder.embed_pixels(np.stack(pixels)))
        if texts:
            unique = list(dict.fromkeys(text for _, text in texts))  # one row for a text asked twice
            rows = {text: i for i, text in enumerate(unique)}
            self._resolve([job for job, _ in texts], lambda: self._embed_texts(unique), [rows[t] for _, t in texts])

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        vectors = self.encoder.embed_texts(texts)
        with self._texts_lock:
            for text, vector in zip(texts, vectors, strict=True):
                if len(text) <= MAX_CACHED_TEXT_CHARS:
                    self._texts[text] = vector.copy()
                    self._texts.move_to_end(text)
            while len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        return vectors

    @staticmethod
    def _resolve(jobs: list[_Job], run: Callable[[], np.ndarray], rows: list[int] | None = None) -> None:
        """Run the pass and hand each job its row (rows[i], default i), or every job the pass's exception."""
        try:
            vectors: np.ndarray = run()
        except Exception as exc:  # a model error reaches every request of the batch, as its 503 or 500
            for job in jobs:
                job.future.set_exception(exc)
            return
        for i, job in enumerate(jobs):
            job.future.set_result(vectors[i if rows is None else rows[i]].copy())

    def _refuse_waiting(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(Stopped("the server is shutting down; try again when it is back"))
