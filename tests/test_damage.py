"""A damaged collection: every command says in one line what is damaged and what to do; verify
reports it; verify --repair goes back to the last version that reads and says what that lost."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from pipeline import Clipdex
from storage import Collection, CollectionDamaged
from tests.conftest import open_library, run


def newest_data_file(db: str) -> str:
    files = glob.glob(os.path.join(db, "images.lance", "data", "*.lance"))
    return max(files, key=os.path.getmtime)


@pytest.fixture
def two_ingests(photos: Path, db: str, tiny_model: str, tmp_path: Path) -> Clipdex:
    """A collection of the good images, then one more image in a second commit."""
    lib = open_library(db, tiny_model)
    lib.ingest([photos / "good"])
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "late.jpg").write_bytes((photos / "good" / "photo.jpg").read_bytes()[:-2] + b"\xff\xd9")
    lib.ingest([photos / "good", extra])
    return lib


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_data_file_is_one_line_everywhere_and_repair_goes_back(
    two_ingests: Clipdex, db: str, photos: Path, damage: str
) -> None:
    before = two_ingests.collection.count()
    path = newest_data_file(db)
    if damage == "truncate":
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
    else:
        os.remove(path)
    for args in (("search", "a dog"), ("duplicates",), ("similar", str(photos / "good" / "photo.jpg"))):
        result = run(*args, "--db", db, ok=False)
        assert result.exit_code == 1
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1 and "the collection is damaged" in message, message
        assert "clipdex verify --repair" in message and ".rs:" not in message
    checked = run("verify", "--db", db, ok=False)
    assert "damaged:" in checked.output
    repaired = run("verify", "--repair", "--db", db)
    assert "rolled back: images: back from version" in repaired.output
    lib = Clipdex.open(db)
    assert lib.collection.damage() == []
    assert lib.collection.count() == before  # what the lost version held is ingested again
    assert run("verify", "--db", db).exit_code == 0


def test_a_damaged_table_raises_collection_damaged_in_the_api(two_ingests: Clipdex, db: str) -> None:
    os.remove(newest_data_file(db))
    with pytest.raises(CollectionDamaged, match=r"the collection is damaged \(its images table"):
        Collection.open(db).file_states()
