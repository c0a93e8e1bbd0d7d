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
