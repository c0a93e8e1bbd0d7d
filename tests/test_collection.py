"""The LanceDB collection on its own: create, reopen, refuse, search, write verbs."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from storage import (
    SCHEMA_VERSION,
    BadFilter,
    CaptionUpdate,
    Collection,
    CollectionNotFound,
    CollectionUnreadable,
    Failure,
    ImageRecord,
    Moved,
)
from storage.schema import META

DIM = 4


def unit(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def record(i: int, vector: np.ndarray, caption: str | None = None, width: int = 100) -> ImageRecord:
    return ImageRecord(
        id=f"id{i}",
        path=f"/photos/{i} o'clock.jpg",
        size=1000 + i,
        mtime_ns=i,
        hash=f"h{i}",
        width=width,
        height=50,
        format="JPEG",
        vector=vector,
        caption=caption,
        caption_source="sidecar" if caption else None,
        caption_vector=unit(0, 0, 1, i) if caption else None,
    )


@pytest.fixture
def coll(tmp_path: Path) -> Collection:
    c = Collection.create(str(tmp_path / "c"), model='{"m": 1}', dimension=DIM)
    c.upsert(
        [
            record(1, unit(1, 0, 0, 0), caption="a dog"),
            record(2, unit(1, 1, 0, 0), width=2000),
            record(3, unit(0, 1, 0, 0)),
        ]
    )
    return c


def test_reopen_keeps_model_dimension_and_version(coll: Collection) -> None:
    again = Collection.open(coll.uri)
    assert (again.model, again.dimension, again.schema_version) == ('{"m": 1}', DIM, SCHEMA_VERSION)
    stats = again.stats()
    assert (stats.images, stats.failures, stats.captioned) == (3, 0, 1)


def test_search_orders_by_cosine_and_filters(coll: Collection) -> None:
    hits = coll.search(unit(1, 0, 0, 0), k=3)
    assert [h.id for h in hits] == ["id1", "id2", "id3"]
    assert [h.score for h in hits] == pytest.approx([1.0, 0.7071, 0.0], abs=1e-4)
    assert [h.id for h in coll.search(unit(1, 0, 0, 0), where="width > 1000")] == ["id2"]
    assert [h.id for h in coll.search(unit(1, 0, 0, 0), min_score=0.5)] == ["id1", "id2"]
    assert [h.id for h in coll.search(unit(0, 0, 1, 1), column="caption_vector")] == ["id1"]
    assert coll.search(unit(1, 0, 0, 0), where="path LIKE '%1 o''clock%'")[0].id == "id1"


def test_bad_filter_is_reported_as_such(coll: Collection) -> None:
    with pytest.raises(BadFilter, match=r"^--where 'nope = 1': .*nope"):
        coll.search(unit(1, 0, 0, 0), where="nope = 1")
    with pytest.raises(BadFilter):
        coll.check_filter("width >>> 2")
    coll.check_filter("width > 2")


def test_move_captions_delete_and_failures(coll: Collection) -> None:
    coll.move([Moved("id3", "/elsewhere/3.jpg", 5, 6)])
    moved = coll.get("id3")
    assert moved is not None and (moved.path, moved.size, moved.mtime_ns) == ("/elsewhere/3.jpg", 5, 6)
    assert np.allclose(moved.vector, unit(0, 1, 0, 0))
    coll.set_captions(
        [CaptionUpdate("id3", "a cat", "manifest", unit(1, 1, 1, 1)), CaptionUpdate("id1", None, None, None)]
    )
    assert coll.stats().captioned == 1
    assert coll.get_by_path("/elsewhere/3.jpg").caption == "a cat"  # type: ignore[union-attr]
    assert coll.delete(["id1", "id2"]) == 2
    assert coll.count() == 1
    now = datetime.now(UTC)
    coll.record_failures([Failure("/x'y.jpg", "empty file (0 bytes)", 0, 1, now)])
    coll.record_failures([Failure("/x'y.jpg", "still empty", 0, 2, now)])
    assert [(f.path, f.reason) for f in coll.failures()] == [("/x'y.jpg", "still empty")]
    coll.clear_failures(["/x'y.jpg"])
    assert coll.failures() == []


def test_missing_location_is_not_found_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(CollectionNotFound):
        Collection.open(str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectionNotFound):
        Collection.open(str(tmp_path / "empty"))


def test_foreign_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(CollectionUnreadable, match="holds other data"):
        Collection.open(str(tmp_path / "docs"))
    with pytest.raises(CollectionUnreadable, match="not empty"):
        Collection.create(str(tmp_path / "docs"), model="{}", dimension=DIM)


def test_newer_schema_is_refused(coll: Collection) -> None:
    meta = coll._db.open_table(META)
    meta.update(where="key = 'schema_version'", values={"value": str(SCHEMA_VERSION + 1)})
    with pytest.raises(CollectionUnreadable, match=r"made by a newer clipdex .*upgrade clipdex"):
        Collection.open(coll.uri)


def test_damaged_collection_is_unreadable(coll: Collection) -> None:
    shutil.rmtree(Path(coll.uri) / "images.lance")
    with pytest.raises(CollectionUnreadable, match=r"not a clipdex collection"):
        Collection.open(coll.uri)
