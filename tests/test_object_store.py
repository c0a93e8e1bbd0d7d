"""Collections on object storage: every command against s3:// on a local S3-compatible server (moto)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, run

pytestmark = pytest.mark.slow


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


def test_every_command_works_on_s3(s3: str, photos: Path, tiny_model: str, other_model: str, tmp_path: Path) -> None:
    first = json.loads(run("ingest", str(photos), "--db", s3, "--model", tiny_model, "--json").stdout.splitlines()[-1])
    assert (first["added"], first["failed"]) == (17, 6)
    shutil.move(photos / "good" / "photo.jpg", photos / "good" / "renamed.jpg")
    again = json.loads(run("ingest", str(photos), "--db", s3, "--json").stdout.splitlines()[-1])
    assert (again["moved"], again["unchanged"], again["added"]) == (1, 16, 0)
    assert json.loads(run("info", "--db", s3, "--json").stdout)["images"] == 17
    hits = [json.loads(x) for x in run("search", "a dog", "-k", "3", "--db", s3, "--json").stdout.splitlines()]
    assert len(hits) == 3
    assert len(run("similar", "--id", hits[0]["id"], "-k", "2", "--db", s3, "--paths").stdout.splitlines()) == 2
    assert len(run("failures", "--db", s3).stdout.splitlines()) == 6
    run("classify", "--labels", "cat,dog", "--store", "tag", "--db", s3)
    assert run("search", "x", "-k", "50", "--db", s3, "--where", "tag IS NOT NULL", "--paths").stdout.count("\n") == 17
    run("duplicates", "--db", s3)
    run("map", "--out", str(tmp_path / "map.html"), "--db", s3)
    run("reembed", "--db", s3, "--model", other_model)
    assert json.loads(run("info", "--db", s3, "--json").stdout)["model"]["model"] == other_model
    missing = run("info", "--db", "s3://photos/nothing-here", ok=False)
    assert (
        missing.stderr == "Error: --db s3://photos/nothing-here: no collection here yet; run `clipdex ingest` first\n"
    )
