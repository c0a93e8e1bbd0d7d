"""Collections on object storage: every command against s3:// on a local S3-compatible server (moto)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


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
