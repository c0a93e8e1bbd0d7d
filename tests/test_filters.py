"""--where errors as a person reads them: the column they meant, never clipdex's own columns."""

from __future__ import annotations

import pytest

from pipeline import Clipdex
from storage import BadFilter
from storage.filters import INTERNAL_COLUMNS


def test_a_misspelt_column_suggests_the_one_meant_and_hides_internal_columns(lib: Clipdex) -> None:
    with pytest.raises(BadFilter) as error:
        lib.search("a dog", where="widht > 3")
    message = str(error.value)
    assert message.startswith("--where 'widht > 3': no column named widht; did you mean width? Columns: id, path")
    shown = set(message.split("Columns: ")[1].split(", "))
    assert {"width", "taken_at", "caption"} <= shown
    assert not shown & INTERNAL_COLUMNS
    assert ".rs:" not in message and "site-packages" not in message


def test_a_tag_column_that_is_not_there_says_to_classify_again(lib: Clipdex) -> None:
    with pytest.raises(
        BadFilter,
        match=r"no column named tag; tags and clusters are columns made by clipdex "
        r"classify --store and clipdex cluster \(a reembed drops them: run those again\)\.",
    ):
        lib.search("a dog", where="tag = 'cat'")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            "taken_at > 'June'",
            "--where \"taken_at > 'June'\": 'June' is not a date; write it as 2024-06-01 (or 2024-06",
        ),
        ("taken_at < '2024-13-01'", "'2024-13-01' is not a date; write it as 2024-06-01"),
        ("ingested_at BETWEEN '2024' AND '2024-02-30'", "'2024-02-30' is not a date"),
        ("kind = 'photo'", "kind is 'image' (photos) or 'video' (moments of videos), not 'photo'"),
    ],
)
def test_values_that_can_only_be_mistakes_are_named_before_any_query(lib: Clipdex, where: str, message: str) -> None:
    with pytest.raises(BadFilter) as error:
        lib.search("a dog", where=where)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert lib.search("a dog", where="taken_at > '2019-03' AND kind = 'image'") is not None  # good ones still run


def test_a_filter_that_does_not_parse_says_so_without_the_engine_s_statement(lib: Clipdex) -> None:
    with pytest.raises(BadFilter) as error:
        lib.search("a dog", where="width >")
    message = str(error.value)
    assert message.startswith("--where 'width >': not a filter clipdex can read (")
    assert "SELECT" not in message and "e.g. width > 1000 AND format = 'JPEG'" in message
    columns = set(message.split("filter on ")[1].split(", "))
    assert {"kind", "timestamp", "duration", "fps", "codec", "taken_at"} <= columns
    assert not columns & INTERNAL_COLUMNS
