"""Helpers shared by the benchmarks: test models and image folders, timing, a plain table."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import corpus  # noqa: E402
from tests.tiny_model import vit_b_32_dir  # noqa: E402


def vit_b_32(work: Path) -> str:
    """The real ViT-B-32 architecture with random weights (same speed as real ones), as local-dir:."""
    folder = work / "vit-b-32"
    if not (folder / "open_clip_config.json").exists():
        vit_b_32_dir(folder)
    return f"local-dir:{folder}"


def image_folder(folder: Path, count: int, megapixels: float, suffix: str = ".jpg") -> list[Path]:
    """count JPEGs of about this size (made once, reused), all different."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}{suffix}"
        if not path.exists():
            if megapixels >= 1:
                corpus.large_jpeg(path, megapixels=megapixels, seed=i)
            else:
                side = int((megapixels * 1e6 * 3 / 4) ** 0.5)
                corpus.pattern_image(path, seed=i, size=(int(side * 4 / 3), side))
        paths.append(path)
    return paths


def first_only(paths: Sequence[Path], folder: Path) -> Path:
    """A folder holding just the first image: the 1-image run whose time is subtracted."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / paths[0].name
    if not target.exists():
        shutil.copy(paths[0], target)
    return folder


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def table(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
