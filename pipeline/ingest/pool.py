"""A bounded pool of decode processes (spawn, no torch) that survives its workers, or in-process
decoding when workers=0.

Each worker holds at most TASKS_PER_WORKER files, so the parent always knows which files a worker
had when it died. A feeder thread keeps the workers busy and their results flowing into a bounded
queue while the caller works on earlier results (a forward pass, a commit), so decoding and
embedding overlap and memory stays bounded.

A worker's death (the OOM killer, a crash in a codec) costs only the files it held: a fresh
worker takes its place, the files it held are retried one at a time at the end, and a
file that kills its worker again is a failure that says so. A file that takes longer than the
time limit is a failure too, and its worker is replaced. Workers end with their parent, whatever
kills it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from pipeline.errors import EngineError, first_line
from pipeline.ingest.decode import DecodeFailed
from pipeline.ingest.scan import VIDEO_EXTENSIONS

T = TypeVar("T")
TASKS_PER_WORKER = 4  # files held by a worker: enough that it never idles on the round trip
RESULTS_PER_WORKER = 8  # results waiting for the caller, per worker: what bounds memory
DECODE_TIMEOUT_S = 120.0  # a file that takes longer is a failure (a decoder that never returns)
# A video's own limit (video.DECODE_BUDGET_S, 900 s) ends it first; this is for a decoder stuck in C.
VIDEO_TIMEOUT_S = 960.0
START_TIMEOUT_S = 120.0  # a worker that has not started by then will not
PARENT_POLL_S = 1.0  # how often a worker checks that its parent is alive, where no kernel tells it
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_READY = "ready"

Task = tuple[Callable[..., Any], str, tuple[Any, ...]]


class _Worker:
    """One decode process and the paths it holds, oldest first."""

    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, os.getpid()), daemon=True)
        with _main_module_hidden():
            self.process.start()
        child.close()
        self.held: deque[str] = deque()
        self.since = time.monotonic()  # when the oldest held path started decoding (about)
        self.ready = False

    def send(self, fn: Callable[..., Any], path: str, args: tuple[Any, ...]) -> None:
        if not self.held:
            self.since = time.monotonic()
        self.held.append(path)
        self.conn.send((fn, path, args))

    def receive(self) -> Any:
        """The next message; EOFError when the process is gone."""
        message = self.conn.recv()
        if message == _READY:
            self.ready = True
            return _READY
        self.held.popleft()
        self.since = time.monotonic()
        return message

    def stop(self, kill: bool = False) -> None:
        """Ask the process to end (kill it when it holds files: nobody will read their results)."""
        if not kill and not self.held:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        if kill or self.held or not self._joined(5):
            self.process.kill()
            self._joined(5)
        self.conn.close()

    def death(self) -> str:
        """How the process ended, in words."""
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by signal {-code}"
        return f"exited with code {code}"

    def _joined(self, seconds: float) -> bool:
        self.process.join(seconds)
        return not self.process.is_alive()


class DecodePool:
    """Runs a function over paths in worker processes, results in completion order, memory bounded."""

    def __init__(
        self, workers: int, *, timeout: float = DECODE_TIMEOUT_S, video_timeout: float = VIDEO_TIMEOUT_S
    ) -> None:
        self.workers = workers
        self.timeout = timeout
        self.video_timeout = video_timeout
        self._context = multiprocessing.get_context("spawn")
        self._pool: list[_Worker] = []

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        for worker in self._pool:
            worker.stop()
        self._pool = []

    def map(self, fn: Callable[..., T], paths: Iterable[str], *args: Any) -> Iterator[T | DecodeFailed]:
        """fn(path, *args) for each path; a file that crashes or outlasts its decoder yields a DecodeFailed."""
        if self.workers == 0:
            for path in paths:
                yield fn(path, *args)
            return
        self._start()
        results: queue.Queue[Any] = queue.Queue(maxsize=self.workers * RESULTS_PER_WORKER)
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed, args=(fn, iter(paths), args, results, stop), daemon=True)
        feeder.start()
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            stop.set()  # the caller stopped early, or is done: let the feeder go
            while feeder.is_alive():
                with contextlib.suppress(queue.Empty):
                    results.get(timeout=0.05)
            feeder.join()

    def _feed(
        self,
        fn: Callable[..., Any],
        todo: Iterator[str],
        args: tuple[Any, ...],
        out: queue.Queue[Any],
        stop: threading.Event,
    ) -> None:
        """The feeder thread: send paths to workers, pass results (and failures) on, in completion order."""

        def put(item: Any) -> None:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    out.put(item, timeout=0.1)
                    return

        try:
            again: deque[str] = deque()  # held by a worker that was stopped for another file's sake
            suspects: list[str] = []  # held by a worker that died: retried alone at the end
            while not stop.is_set():
                for worker in self._pool:
                    while len(worker.held) < TASKS_PER_WORKER and (item := _next(again, todo)) is not None:
                        worker.send(fn, item, args)
                busy = [w for w in self._pool if w.held]
                if not busy:
                    break
                for result in self._collect(busy, suspects, again):
                    put(result)
            for path in suspects:
                if not stop.is_set():
                    put(self._alone(fn, path, args))
        except Exception as exc:  # EngineError (no worker starts), or a bug: the caller raises it
            put(_Raised(exc))
        put(_DONE)

    def _collect(self, busy: list[_Worker], suspects: list[str], again: deque[str]) -> Iterator[Any]:
        """Wait for results (or deaths, or a time limit) from the busy workers."""
        now = time.monotonic()
        deadline = min(w.since + self._limit(w.held[0]) for w in busy)
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=max(0.0, deadline - now))
        for worker in busy:
            try:
                while worker.held and worker.conn.poll():
                    yield worker.receive()
            except (EOFError, OSError):
                pass  # died after its last result: handled below
            if worker.held and not worker.process.is_alive():
                suspects.extend(worker.held)
                self._replace(worker)
            elif worker.held and time.monotonic() - worker.since > self._limit(worker.held[0]):
                slow = worker.held.popleft()
                again.extend(worker.held)
                self._replace(worker, kill=True)
                yield DecodeFailed(slow, f"decoding took longer than {self._limit(slow):g} s; the file was skipped")

    def _alone(self, fn: Callable[..., Any], path: str, args: tuple[Any, ...]) -> Any:
        """Decode one suspect with no other file in flight on its worker."""
        worker = self._pool[0]
        worker.send(fn, path, args)
        limit = self._limit(path)
        while True:
            wait([worker.conn, worker.process.sentinel], timeout=limit)
            try:
                if worker.conn.poll():
                    return worker.receive()
            except (EOFError, OSError):
                pass
            if not worker.process.is_alive():
                reason = f"the decoder crashed on this file ({worker.death()})"
                self._replace(worker)
                return DecodeFailed(path, reason)
            if time.monotonic() - worker.since > limit:
                self._replace(worker, kill=True)
                return DecodeFailed(path, f"decoding took longer than {limit:g} s; the file was skipped")

    def _limit(self, path: str) -> float:
        """How long a file may take: a video longer than a photo."""
        return self.video_timeout if os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS else self.timeout

    def _start(self) -> None:
        """Start every worker now, each importing only what decoding needs, and wait for them."""
        while len(self._pool) < self.workers:
            self._pool.append(_Worker(self._context))
        for worker in self._pool:
            self._await_ready(worker)

    def _replace(self, worker: _Worker, kill: bool = False) -> None:
        worker.held.clear()
        worker.stop(kill=kill or not worker.process.is_alive())
        fresh = _Worker(self._context)
        self._pool[self._pool.index(worker)] = fresh
        self._await_ready(fresh)

    def _await_ready(self, worker: _Worker) -> None:
        if worker.ready:
            return
        if worker.conn.poll(START_TIMEOUT_S):
            with contextlib.suppress(EOFError, OSError):
                if worker.receive() == _READY:
                    return
        # No file is to blame: say so, rather than record every file as a failure.
        self.close()
        raise EngineError("decode worker processes cannot start here; run with --workers 0 (decode in-process)")


class _Raised:
    """An exception of the feeder thread, for the caller to raise."""

    def __init__(self, error: Exception) -> None:
        self.error = error


_DONE = object()  # the feeder's last item


def _next(again: deque[str], todo: Iterator[str]) -> str | None:
    return again.popleft() if again else next(todo, None)


def _serve(conn: Connection, parent: int) -> None:
    """A worker's life: decode what the parent sends until it sends None or goes away."""
    # Ctrl-C reaches the whole process group: the parent decides when to stop, not its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)
    conn.send(_READY)
    while True:
        try:
            task: Task | None = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, path, args = task
        try:
            result = fn(path, *args)
        except Exception as exc:  # a bug in a decoder must not look like a crash of the file
            result = DecodeFailed(path, f"the decoder failed: {first_line(exc)}")
        conn.send(result)


def _die_with(parent: int) -> None:
    """End this process when its parent ends, however it ends (a SIGKILL leaves no time to tell us)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(0)
    # Everywhere (and where prctl is missing): a watch on the parent.
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="parent-watch").start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Spawned workers re-import the parent's __main__ (a CLI or script that imports torch and
    LanceDB: seconds and hundreds of MB per worker); they need none of it, so hide it meanwhile."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
