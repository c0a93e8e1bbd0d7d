"""The architecture as tests: which package may import which, public names, light worker imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import models
import pipeline
import storage

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "models": {"storage", "pipeline", "click", "lancedb"},
    "storage": {"models", "pipeline", "click", "torch", "open_clip", "PIL"},
}


def imported_roots(package: str) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    assert imported_roots(package) & FORBIDDEN[package] == set()


def test_only_the_cli_imports_click() -> None:
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.name != "cli.py":
            assert "import click" not in path.read_text(), path


@pytest.mark.parametrize("module", [models, storage, pipeline])
def test_public_names_exist(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        assert getattr(module, name) is not None, name


def test_decode_workers_do_not_import_torch_or_lancedb() -> None:
    code = "import sys, pipeline.decode; print(sorted({'torch', 'open_clip', 'lancedb'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_library_code_never_prints_or_exits() -> None:
    for package in ("models", "storage", "pipeline"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "cli.py":
                continue
            calls = {
                node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call)
            }
            assert not calls & {"print", "exit"}, path
