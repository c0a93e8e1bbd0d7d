"""Rows re-embedded with another model, in a second table, until one commit switches to them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from storage.arrow import conform, records_table
from storage.records import ImageRecord

if TYPE_CHECKING:
    from storage.collection import Collection


class Staging:
    """Rows re-embedded with another model, waiting for the switch."""

    def __init__(self, collection: Collection, table: Any, model: str, dimension: int) -> None:
        self.collection = collection
        self.table = table
        self.model = model
        self.dimension = dimension

    def done(self) -> dict[str, tuple[str, str, str | None]]:
        """id -> (path, hash, caption) of the rows already re-embedded (a re-run resumes after them)."""
        rows = self.table.search().select(["id", "path", "hash", "caption"]).limit(None).to_arrow().to_pylist()
        return {r["id"]: (r["path"], r["hash"], r["caption"]) for r in rows}

    def discard(self, ids: Iterable[str]) -> None:
        """Drop staged rows (their image changed or left the collection since they were staged)."""
        self.collection.delete_where_in(self.table, "id", ids)

    def add(self, records: Sequence[ImageRecord]) -> None:
        """Stage re-embedded rows, in one commit. Their ids must not be staged yet (discard first):
        rows are appended, not merged, so staging stays linear in the collection's size."""
        if records:
            table = records_table(records, self.dimension)
            with self.collection.writing():
                self.table.add(conform(table, self.table.schema))

    def switch(self) -> None:
        """Make these the collection's vectors; the old model's are dropped."""
        self.collection.switch_to(self)
