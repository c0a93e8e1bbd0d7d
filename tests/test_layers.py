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
    "models": {"storage", "pipeline", "click", "lancedb", "ray", "lance_ray", "fastapi", "uvicorn"},
    "storage": {"models", "pipeline", "click", "torch", "open_clip", "PIL", "ray", "lance_ray", "fastapi", "uvicorn"},
}
# Within pipeline/, these third-party packages belong to one subpackage (or module) each.
OWNED = {
    "click": "pipeline/cli",
    "fastapi": "pipeline/server",
    "uvicorn": "pipeline/server",
    "ray": "pipeline/ingest/ray.py",
    "lance_ray": "pipeline/ingest/ray.py",
    "watchdog": "pipeline/maintain/watch.py",
    "av": "pipeline/ingest/video.py",
}


def module_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def imported_roots(package: str) -> set[str]:
    return set().union(*(module_imports(path) for path in (ROOT / package).rglob("*.py")))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    assert imported_roots(package) & FORBIDDEN[package] == set()


def test_only_the_cli_imports_click() -> None:
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.parent.name != "cli":
            assert "import click" not in path.read_text(), path


@pytest.mark.parametrize("package", sorted(OWNED))
def test_each_framework_has_one_home_in_pipeline(package: str) -> None:
    home = ROOT / OWNED[package]
    importers = {p for p in (ROOT / "pipeline").rglob("*.py") if package in module_imports(p)}
    assert importers, package
    assert all(p == home or home in p.parents for p in importers), sorted(map(str, importers))


def test_subpackages_are_where_the_readme_says() -> None:
    for sub in ("ingest", "maintain", "analyse", "cli", "server"):
        assert (ROOT / "pipeline" / sub / "__init__.py").is_file(), sub
    for name in ("scan", "sources", "captions", "decode", "pool", "plan", "embed", "sync", "local", "ray"):
        assert (ROOT / "pipeline" / "ingest" / f"{name}.py").is_file(), name


@pytest.mark.parametrize("module", [models, storage, pipeline])
def test_public_names_exist(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        assert getattr(module, name) is not None, name


def test_decode_workers_do_not_import_torch_or_lancedb() -> None:
    heavy = "{'torch', 'open_clip', 'lancedb', 'click', 'ray', 'fastapi'}"
    code = f"import sys, pipeline.ingest.decode; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_spawned_decode_worker_imports_nothing_heavy() -> None:
    """What a real worker of the pool has loaded, read from its own sys.modules."""
    from pipeline.ingest.pool import DecodePool  # noqa: PLC0415

    with DecodePool(1) as pool:
        (loaded,) = list(pool.map(_heavy_modules, ["-"]))
    assert loaded == []


def _heavy_modules(_: str) -> list[str]:
    return sorted({"torch", "open_clip", "lancedb", "click", "ray", "fastapi", "pipeline.library"} & set(sys.modules))


def test_library_code_never_prints_or_exits() -> None:
    for package in ("models", "storage", "pipeline"):
        for path in (ROOT / package).rglob("*.py"):
            if path.parent.name == "cli":
                continue
            calls = {
                node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call)
            }
            assert not calls & {"print", "exit"}, path
