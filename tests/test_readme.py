"""The README's Python examples, executed as written: its paths live in a home folder made here,
and only the model id is swapped for the tiny test model (no weights can be downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import corpus

ROOT = Path(__file__).resolve().parent.parent
README_MODEL = "local-dir:/models/clip-vit-b-32"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_examples() -> None:
    assert python_blocks()


@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_readme_python_example_runs_as_written(
    number: int, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    corpus.good_images(home / "Pictures")
    (home / "Downloads").mkdir(parents=True)
    (home / "Downloads" / "query.jpg").write_bytes((home / "Pictures" / "photo.jpg").read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "captions.csv").write_text(f"path,caption\n{home}/Pictures/photo.jpg,a dog on the beach\n")
    code = python_blocks()[number]
    assert README_MODEL in code or "Clipdex.open" not in code  # the one thing swapped
    exec(compile(code.replace(README_MODEL, tiny_model), f"README.md python block {number + 1}", "exec"), {})
    assert (home / "photos.clipdex").is_dir() or "Clipdex.open" not in code
