"""A bounded pool of decode processes (spawn, no torch), or in-process decoding when workers=0."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from pipeline.errors import EngineError
from pipeline.ingest.decode import DecodeFailed

T = TypeVar("T")
IN_FLIGHT_PER_WORKER = 8  # enough queued work to keep a worker busy while results are consumed


class DecodePool:
    """Runs a function over paths in worker processes, results in completion order, memory bounded."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map(self, fn: Callable[..., T], paths: Iterable[str], *args: Any) -> Iterator[T | DecodeFailed]:
        """fn(path, *args) for each path; a crashed worker yields a DecodeFailed for its path."""
        if self.workers == 0:
            for path in paths:
                yield fn(path, *args)
            return
        todo = iter(paths)
        pending: dict[Future[T], str] = {}
        suspects: list[str] = []

        def submit_next() -> None:
            path = next(todo, None)
            if path is not None:
                pending[self._pool().submit(fn, path, *args)] = path

        for _ in range(self.workers * IN_FLIGHT_PER_WORKER):
            submit_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                path = pending.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    # A decoder crashed or was killed: every task of that pool is lost, so each
                    # is retried alone later, which tells the culprit from the bystanders.
                    self.close()
                    suspects.append(path)
                submit_next()
        for path in suspects:
            try:
                yield self._pool().submit(fn, path, *args).result()
            except BrokenProcessPool:
                self.close()
                yield DecodeFailed(path, "the decoder process died on this file (out of memory or a crash)")

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
            )
            with _main_module_hidden():
                # Start every worker now, each importing only what decoding needs.
                try:
                    for ready in [self._executor.submit(_ready) for _ in range(self.workers)]:
                        ready.result()
                except BrokenProcessPool as exc:
                    # No file is to blame: say so, rather than record every file as a failure.
                    self.close()
                    raise EngineError(
                        "decode worker processes cannot start here; run with --workers 0 (decode in-process)"
                    ) from exc
        return self._executor


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group: the parent decides when to stop, not its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ready() -> None:
    """A no-op task that makes a worker process start."""


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
