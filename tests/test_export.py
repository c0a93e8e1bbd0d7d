"""Export: every row's id, path, metadata and vectors to Parquet, CSV and NumPy, read back and compared."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from models import EncoderSpec
from pipeline import Clipdex
from pipeline.errors import OutputError
from pipeline.maintain.export import export
from storage import BadFilter, Collection, ImageRecord
from tests.conftest import run

DIM = 8
ROWS = 10
CAPTIONED = (7, 8)  # only late rows: the npy caption matrix starts after its first batches


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """Ten rows written through storage (no model needed), two captioned, half with a capture time, and a tag."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    caption_vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    caption_vectors /= np.linalg.norm(caption_vectors, axis=1, keepdims=True)
    uri = str(tmp_path_factory.mktemp("export") / "db")
    c = Collection.create(uri, model="{}", dimension=DIM)
    c.upsert(
        [
            ImageRecord(
                id=f"id{n:02d}",
                path=f'/photos/{2020 + n % 5}/img, "{n}".jpg',  # a comma and quotes: CSV must quote them
                size=1000 + n,
                mtime_ns=n * 10**15,
                hash=f"h{n}",
                width=100 * (n + 1),
                height=50,
                format="JPEG",
                vector=vectors[n],
                taken_at=datetime(2020 + n % 5, 6, 1) if n % 2 else None,
                caption=f"caption {n}" if n in CAPTIONED else None,
                caption_source="sidecar" if n in CAPTIONED else None,
                caption_vector=caption_vectors[n] if n in CAPTIONED else None,
            )
            for n in range(ROWS)
        ],
        new=True,
    )
    c.set_labels("tag", {f"id{n:02d}": ("cat" if n % 3 else "dog", 0.5) for n in range(ROWS)})
    return c


def stored(collection: Collection) -> dict[str, dict[str, object]]:
    """id -> the row as storage holds it, vectors included."""
    ids, vectors = collection.vectors()
    cap_ids, cap_vectors = collection.vectors(column="caption_vector")
    rows = {r["id"]: r for r in collection.columns(["id", "path", "width", "taken_at", "caption", "tag"])}
    for i, v in zip(ids, vectors, strict=True):
        rows[i]["vector"] = v
        rows[i]["caption_vector"] = None
    for i, v in zip(cap_ids, cap_vectors, strict=True):
        rows[i]["caption_vector"] = v
    return rows


def test_parquet_round_trip(collection: Collection, tmp_path: Path) -> None:
    out = tmp_path / "all.parquet"
    report = export(collection, out, batch_rows=3)
    assert (report.format, report.rows, report.files) == ("parquet", ROWS, (str(out),))
    table = pq.read_table(out)
    assert table.column_names[:2] == ["id", "path"] and table.column_names[-2:] == ["vector", "caption_vector"]
    assert {"tag", "tag_score", "taken_at", "caption", "mtime_ns"} <= set(table.column_names)
    want = stored(collection)
    got = table.to_pylist()
    assert sorted(r["id"] for r in got) == sorted(want)
    for row in got:
        expected = want[row["id"]]
        assert {k: row[k] for k in ("path", "width", "taken_at", "caption", "tag")} == {
            k: expected[k] for k in ("path", "width", "taken_at", "caption", "tag")
        }
        np.testing.assert_array_equal(np.array(row["vector"], np.float32), expected["vector"])
        if expected["caption_vector"] is None:
            assert row["caption_vector"] is None
        else:
            np.testing.assert_array_equal(np.array(row["caption_vector"], np.float32), expected["caption_vector"])


def test_csv_round_trip_with_vectors_as_json_arrays(collection: Collection, tmp_path: Path) -> None:
    out = tmp_path / "all.csv"
    assert export(collection, out, batch_rows=4).rows == ROWS
    with out.open(newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    want = stored(collection)
    assert sorted(r["id"] for r in got) == sorted(want)
    for row in got:
        expected = want[row["id"]]
        assert row["path"] == expected["path"] and int(row["width"]) == expected["width"]
        assert np.array_equal(np.array(json.loads(row["vector"]), np.float32), expected["vector"])  # exact
        if expected["caption_vector"] is None:
            assert row["caption_vector"] == ""
        else:
            assert np.array_equal(np.array(json.loads(row["caption_vector"]), np.float32), expected["caption_vector"])
    assert pa_csv.read_csv(out).num_rows == ROWS  # pyarrow reads it back too


def test_npy_matrix_ids_sidecar_and_caption_matrix(collection: Collection, tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    report = export(collection, out, batch_rows=3)
    assert report.files == (str(out), str(tmp_path / "vectors.ids.csv"), str(tmp_path / "vectors.captions.npy"))
    matrix = np.load(out)
    captions = np.load(tmp_path / "vectors.captions.npy")
    with (tmp_path / "vectors.ids.csv").open(newline="", encoding="utf-8") as f:
        ids = [(int(r["row"]), r["id"], r["path"]) for r in csv.DictReader(f)]
    assert matrix.shape == captions.shape == (ROWS, DIM) and matrix.dtype == np.float32
    want = stored(collection)
    assert [row for row, _, _ in ids] == list(range(ROWS))
    for row, image_id, path in ids:
        assert path == want[image_id]["path"]
        np.testing.assert_array_equal(matrix[row], want[image_id]["vector"])
        if want[image_id]["caption_vector"] is None:
            assert np.isnan(captions[row]).all()
        else:
            np.testing.assert_array_equal(captions[row], want[image_id]["caption_vector"])


def test_where_narrows_every_format_and_dates_work(collection: Collection, tmp_path: Path) -> None:
    wide = {i for i, r in stored(collection).items() if int(r["width"]) > 500}
    assert export(collection, tmp_path / "w.parquet", where="width > 500").rows == len(wide) == 5
    assert set(pq.read_table(tmp_path / "w.parquet").column("id").to_pylist()) == wide
    recent = run("export", "--db", collection.uri, "--out", str(tmp_path / "r.npy"), "--where", "taken_at >= '2023'",
                 "--json")  # fmt: skip
    data = json.loads(recent.stdout)
    assert data["rows"] == 2 and data["files"] == [str(tmp_path / "r.npy"), str(tmp_path / "r.ids.csv")]
    assert np.load(tmp_path / "r.npy").shape == (2, DIM)  # no captions among them: no caption matrix
    assert "exported 2 rows to" in recent.stderr
    none = export(collection, tmp_path / "none.csv", format="csv", where="width > 99999")
    assert none.rows == 0 and pa_csv.read_csv(tmp_path / "none.csv").num_rows == 0


def test_refusals_are_one_line_and_leave_no_file(collection: Collection, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"exists; add --force to replace it"):
        export(collection, out)
    assert out.read_bytes() == b"precious"
    assert export(collection, out, force=True).rows == ROWS and pq.read_table(out).num_rows == ROWS
    bad_folder = run("export", "--db", collection.uri, "--out", str(tmp_path / "no" / "such" / "x.csv"), ok=False)
    assert bad_folder.stderr == (
        f"Error: --out {tmp_path / 'no/such/x.csv'}: the folder {tmp_path / 'no/such'} does not exist; "
        "create it or choose another --out\n"
    )
    with pytest.raises(BadFilter):
        export(collection, tmp_path / "bad.parquet", where="no_such_column > 1")
    with pytest.raises(BadFilter, match="unbalanced parentheses"):
        export(collection, tmp_path / "bad.parquet", where="1=1) OR (1=1")
    assert (
        "format from its name"
        in run("export", "--db", collection.uri, "--out", str(tmp_path / "x.bin"), ok=False).stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]  # no temporary files left behind


def test_clipdex_export_method(collection: Collection, tmp_path: Path) -> None:
    """The Python API; no model loads for it (the spec is never loaded)."""
    lib = Clipdex(collection, EncoderSpec(model="never-loaded"))
    report = lib.export(tmp_path / "lib.npy", where="caption IS NOT NULL")
    assert report.rows == len(CAPTIONED) and report.format == "npy"
    ids, vectors = collection.vectors(column="caption_vector")
    with (tmp_path / "lib.ids.csv").open(newline="", encoding="utf-8") as f:
        order = {r["id"]: int(r["row"]) for r in csv.DictReader(f)}
    np.testing.assert_array_equal(np.load(tmp_path / "lib.captions.npy")[[order[i] for i in ids]], vectors)
