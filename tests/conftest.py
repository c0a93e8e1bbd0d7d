"""Shared fixtures: a tiny real OpenCLIP model on disk, image folders, a clean environment."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner, Result

from pipeline import Clipdex
from pipeline.cli import cli
from pipeline.config import Settings
from pipeline.server.app import create_app
from tests import corpus
from tests.tiny_model import tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny OpenCLIP model with random weights, as a local-dir: id."""
    return "local-dir:" + str(tiny_model_dir(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tiny model (other weights, other folder): its vectors must never mix with the first."""
    return "local-dir:" + str(tiny_model_dir(tmp_path_factory.mktemp("other-model"), seed=1))


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One OpenVINO export cache for the whole run (and the clipdex processes it starts): each test
    model is exported once, as a user's machine exports each model once."""
    return tmp_path_factory.mktemp("clipdex-cache")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, export_cache: Path) -> None:
    """No CLIPDEX_* variables or user config from the machine; decode in-process unless a test says so."""
    for name in list(os.environ):
        if name.startswith("CLIPDEX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLIPDEX_CACHE", str(export_cache))
    # The CLI stops the encoder's notes from reaching the root logger (it prints them itself);
    # caplog listens there.
    monkeypatch.setattr(logging.getLogger("models"), "propagate", True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("CLIPDEX_WORKERS", "0")
    monkeypatch.setattr("pipeline.config.USER_CONFIG", tmp_path / "xdg-config" / "clipdex" / "config.toml")


@pytest.fixture(scope="session")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny model whose image tower gives NaN vectors: the embed step must fail those images."""
    return "local-dir:" + str(tiny_model_dir(tmp_path_factory.mktemp("nan-model"), seed=2, nan_images=True))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of valid images of every supported kind, broken files and non-images."""
    root = tmp_path / "photos"
    corpus.good_images(root / "good")
    corpus.bad_files(root / "bad")
    corpus.non_images(root / "other")
    return root


@pytest.fixture
def db(tmp_path: Path) -> str:
    """Where the test's collection lives."""
    return str(tmp_path / "db")


@pytest.fixture
def lib(photos: Path, db: str, tiny_model: str) -> Clipdex:
    library = open_library(db, tiny_model)
    library.ingest([photos / "good"])
    return library


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(lib: Clipdex, thumbnails: Path, token: str | None = None) -> Iterator[str]:
    """uvicorn on a free loopback port, in a thread of this process; yields its base URL."""
    port = free_port()
    app = create_app(lib, token=token, thumbnails=thumbnails)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_server(lib: Clipdex, tmp_path: Path) -> Iterator[str]:
    """The test library served over HTTP on loopback."""
    with serving(lib, tmp_path / "thumbs") as url:
        yield url


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port, a bucket, and the AWS variables LanceDB reads."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.2)
        request = urllib.request.Request(f"{endpoint}/photos", method="PUT")  # create the bucket
        urllib.request.urlopen(request, timeout=5).read()
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }.items():
            monkeypatch.setenv(name, value)
        yield "s3://photos/library"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Ray of this machine's 2 CPUs, its temp files in the test's tmp, stopped after the test.

    Started after the s3 fixture when a test asks for both, so its workers see the AWS variables.
    """
    import ray  # noqa: PLC0415 - seconds to import; only the Ray tests need it

    ray.init(num_cpus=2, _temp_dir=str(tmp_path_factory.mktemp("ray")), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def open_library(db: str, model: str, **settings: object) -> Clipdex:
    """A collection at db with this model (created if new), decoding in-process unless told otherwise."""
    return Clipdex.open(db, model=model, create=True, settings=Settings(workers=0).override(**settings))


def run(*args: str, ok: bool = True) -> Result:
    """Run the CLI in-process; assert the exit code (0 when ok, else non-zero)."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    else:
        assert result.exit_code != 0, result.output
        assert "Traceback" not in result.output + result.stderr
    return result


def without_timing(text: str) -> str:
    """Replace the run time in an ingest summary, the one part that varies."""
    return re.sub(r"\(\d+\.\d s\)", "(T s)", text)
