"""--engine ray with an S3 source and an S3 collection (moto): its own module, as its Ray must start
after the AWS variables are set (its workers read them), while tests/test_ray.py shares one Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ingest.sources import _resolve
from tests import corpus
from tests.test_ray import MANY, assert_same_collections, library, open_local, open_ray

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
__all__ = ["library"]  # the fixture, shared with tests/test_ray.py


def upload(folder: Path, prefix: str) -> int:
    """Copy a folder's files to s3://prefix/... through pyarrow (the AWS variables point at moto)."""
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs, key = _resolve(f"{prefix}/{path.relative_to(folder).as_posix()}")
            with fs.open_output_stream(key) as out:
                out.write(path.read_bytes())
            count += 1
    return count


def test_ray_ingests_an_s3_prefix_into_an_s3_collection(
    s3: str, local_ray: None, library: Path, tmp_path: Path, tiny_model: str
) -> None:
    source = "s3://photos/images"
    upload(library / "many", source)
    upload(library / "bad", source + "/bad")
    lib = open_ray(s3, tiny_model)
    report = lib.ingest([source])
    assert (report.added, report.failed) == (MANY, 6)
    assert {f.path for f in lib.collection.failures()} >= {source + "/bad/empty.jpg", source + "/bad/truncated.jpg"}
    assert lib.similar(library / "many" / "010.jpg", k=1)[0].path == source + "/010.jpg"

    # The local engine reads the same prefix (decode workers on pyarrow.fs), into a local folder.
    local = open_local(str(tmp_path / "local"), tiny_model)
    assert (local.ingest([source]).added, local.collection.count()) == (MANY, MANY)
    assert_same_collections(local, lib)

    fs, key = _resolve(source + "/010.jpg")
    fs.delete_file(key)
    corpus.pattern_image(tmp_path / "up" / "new.jpg", seed=3000)
    upload(tmp_path / "up", source + "/later")
    again = lib.ingest([source])
    assert (again.added, again.removed, again.unchanged) == (1, 1, MANY - 1)
