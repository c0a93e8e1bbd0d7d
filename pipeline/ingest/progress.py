"""Progress events that long runs (ingest, verify, reembed) report to whoever shows them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A progress event: phase is 'model' (done 0: loading, 1: loaded; label names the model),
    'scan', 'hash', 'embed', 'verify files', 'verify vectors' or 'done'."""

    phase: str
    done: int
    total: int
    label: str = ""


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """A ProgressFn that shows nothing."""
