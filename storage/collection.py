"""A clipdex collection: LanceDB tables of images, failures and metadata, at a path or URI.

The verbs are here (open and create, read, search, write); the pieces they stand on live beside
it: filters (--where checks), locking (the writer lock, write errors), staging (re-embedding),
index (the ANN index's shape), arrow (records <-> rows), schema (tables and upgrades).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree, HnswSq  # HNSW graphs in IVF partitions, 8-bit scalar-quantised

from storage.arrow import conform, hit_from_row, record_from_row, records_table, vector_list, vectors_array
from storage.damage import Rollback, damaged, is_damage, roll_back, unreadable
from storage.errors import BadColumn, CollectionDamaged, CollectionNotFound, CollectionUnreadable, first_line
from storage.filters import bad_filter, check_where, sql_in, sql_str, with_timestamps
from storage.index import HNSW_EF, INDEX_NAME, NPROBES, REFINE_FACTOR, Compactor, IndexBuilder, IndexSpec
from storage.locking import writer_lock, writing
from storage.records import CaptionUpdate, Failure, FileState, Hit, ImageRecord, Moved, Stats
from storage.schema import (
    FAILURES,
    FAILURES_SCHEMA,
    HIT_COLUMNS,
    IMAGES,
    META,
    META_SCHEMA,
    SCHEMA_VERSION,
    STATE_COLUMNS,
    UPGRADES,
    images_schema,
)
from storage.staging import Staging

# We never read index centroids; opting in to lance's leaner statistics also silences its warning.
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")

DELETE_CHUNK = 500  # values per DELETE statement, to keep the SQL short
CAPTION_FILTER = "caption_vector IS NOT NULL"
VECTOR_COLUMNS = ("vector", "caption_vector")
SCALAR_INDEXED = ("id", "path", "file_id")  # BTREE-indexed once the vector index is built
EXTRA_TYPES = {"string": pa.string(), "int32": pa.int32(), "float32": pa.float32()}
EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
SCAN_READAHEAD_BATCHES = 2  # batches iter_rows's scanner may read ahead of its reader
SCAN_IO_BUFFER_BYTES = 64 * 1024 * 1024  # bytes of data files it may hold in flight
P = ParamSpec("P")
R = TypeVar("R")


def _reads(method: Callable[P, R]) -> Callable[P, R]:
    """A read whose LanceDB errors about missing or truncated files become CollectionDamaged."""

    @functools.wraps(method)
    def read(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (RuntimeError, OSError, ValueError) as exc:
            if is_damage(exc):
                raise damaged(args[0].uri, exc) from exc  # type: ignore[attr-defined]
            raise

    return read


class Collection:
    """Images with their vectors, and the files that failed, in one LanceDB database."""

    def __init__(self, db: lancedb.DBConnection, uri: str) -> None:
        self._db = db
        self.uri = uri
        try:
            meta = db.open_table(META).to_arrow().to_pylist()
            # The images table is named in meta: re-embedding builds a new one, then switches.
            table = next((row["value"] for row in meta if row["key"] == "images_table"), IMAGES)
            self._images = db.open_table(table)
            self._failures = db.open_table(FAILURES)
        except Exception as exc:
            if is_damage(exc):
                raise damaged(uri, exc) from exc
            missing = "not found" in str(exc).lower() or "does not exist" in str(exc).lower()
            raise CollectionUnreadable(
                f"--db {uri}: not a clipdex collection ({first_line(exc)}); "
                "point --db at a collection or at a new, empty folder"
                if missing
                else f"--db {uri}: cannot read the collection ({first_line(exc)}); check its permissions, "
                "and for object storage the credentials and endpoint (AWS_*, GOOGLE_*, AZURE_* variables)"
            ) from exc
        self._meta = {row["key"]: row["value"] for row in meta}
        self._indexed: tuple[int, bool] | None = None  # (table version, has an index) last seen
        self.model = self._meta.get("model", "")
        self.dimension = int(self._meta.get("dimension", "0"))
        self.schema_version = int(self._meta.get("schema_version", "0"))
        if self.schema_version > SCHEMA_VERSION:
            raise CollectionUnreadable(
                f"--db {uri}: made by a newer clipdex (schema {self.schema_version}, this one reads "
                f"{SCHEMA_VERSION}); upgrade clipdex"
            )
        if self.schema_version < SCHEMA_VERSION:
            self._upgrade()

    @classmethod
    def open(cls, uri: str, *, storage_options: dict[str, str] | None = None) -> Collection:
        """Open an existing collection; CollectionNotFound when there is none."""
        _refuse_file(uri)
        if "://" not in uri and not os.path.isdir(uri):
            # lancedb.connect would create the folder: a read must leave no trace.
            raise CollectionNotFound(f"--db {uri}: no collection here yet; run `clipdex ingest` first")
        db = _connect(uri, storage_options)
        if META not in _table_names(db):
            if _table_names(db) or _is_nonempty_dir(uri):
                raise CollectionUnreadable(
                    f"--db {uri}: this location holds other data, not a clipdex collection; "
                    "point --db at a collection or at a new, empty folder"
                )
            raise CollectionNotFound(f"--db {uri}: no collection here yet; run `clipdex ingest` first")
        return cls(db, uri)

    @classmethod
    def create(
        cls, uri: str, *, model: str, dimension: int, storage_options: dict[str, str] | None = None
    ) -> Collection:
        """Create an empty collection for vectors of one model (its fingerprint JSON) and dimension."""
        _refuse_file(uri)
        if _is_nonempty_dir(uri):
            raise CollectionUnreadable(f"--db {uri}: the location is not empty; use a new folder for a new collection")
        with writing(uri):
            db = _connect(uri, storage_options)
            if _table_names(db):
                raise CollectionUnreadable(f"--db {uri}: the location is not empty; use a new location")
            db.create_table(IMAGES, schema=images_schema(dimension))
            db.create_table(FAILURES, schema=FAILURES_SCHEMA)
            # The meta table is written last: its presence marks a complete collection.
            meta = {"model": model, "dimension": str(dimension), "schema_version": str(SCHEMA_VERSION)}
            db.create_table(META, pa.Table.from_pylist(_meta_rows(meta), schema=META_SCHEMA))
        return cls(db, uri)

    # --- reading -------------------------------------------------------------------------

    @_reads
    def count(self) -> int:
        """Number of rows: photos and videos' moments."""
        return int(self._images.count_rows())

    @_reads
    def stats(self) -> Stats:
        """Counts and facts about the collection."""
        videos, moments = self.video_counts()
        return Stats(
            uri=self.uri,
            images=int(self._images.count_rows("kind = 'image'")),
            videos=videos,
            moments=moments,
            failures=int(self._failures.count_rows()),
            captioned=int(self._images.count_rows("caption IS NOT NULL")),
            dimension=self.dimension,
            model=self.model,
            schema_version=self.schema_version,
        )

    @_reads
    def video_counts(self) -> tuple[int, int]:
        """(videos, moments): how many video files are stored, and how many rows their moments take."""
        table = self._images.search().where("kind = 'video'").select(["file_id"]).limit(None).to_arrow()
        return len(set(table.column("file_id").to_pylist())), table.num_rows

    @_reads
    def file_states(self) -> dict[str, FileState]:
        """path -> what sync compares, for every image (vectors are not read)."""
        table = self._images.search().select(STATE_COLUMNS).limit(None).to_arrow()
        states: dict[str, FileState] = {}
        for row in table.to_pylist():
            if row["path"] in states:
                continue  # another moment of the same video
            row["id"] = row.pop("file_id") or row["id"]  # sync works by file; a video's moments follow
            states[row["path"]] = FileState(**row)
        return states

    def failure_states(self) -> dict[str, Failure]:
        """path -> the recorded failure, for every failed file."""
        return {f.path: f for f in self.failures()}

    @_reads
    def failures(self) -> list[Failure]:
        """Every recorded failure, by path."""
        rows = self._failures.search().limit(None).to_arrow().to_pylist()
        return sorted((Failure(**row) for row in rows), key=lambda f: f.path)

    def get(self, image_id: str, *, vectors: bool = True) -> ImageRecord | None:
        """The image with this id, with its vectors (vectors=False: not read, left empty)."""
        return self._one(f"id = {sql_str(image_id)}", vectors)

    def get_by_path(self, path: str) -> ImageRecord | None:
        """The image stored at this path, with its vectors."""
        return self._one(f"path = {sql_str(path)}")

    @_reads
    def vectors(self, ids: Sequence[str] = (), *, column: str = "vector") -> tuple[list[str], np.ndarray]:
        """(ids, vectors as an (n, d) float32 array), for the given ids or for every image.

        column "caption_vector" gives the caption vectors of the images that have one.
        """
        _check_vector_column(column)
        query = self._images.search().select(["id", column]).limit(None)
        filters = [sql_in("id", list(ids))] if ids else []
        if column == "caption_vector":
            filters.append(CAPTION_FILTER)
        if filters:
            query = query.where(" AND ".join(filters))
        table = query.to_arrow()
        return table.column("id").to_pylist(), vectors_array(table.column(column), self.dimension)

    def versions(self) -> dict[str, int]:
        """Each table's current version: every commit makes a new one (a run that changed nothing
        leaves them as they were)."""
        tables = {"images": self._images, "failures": self._failures, "meta": self._db.open_table(META)}
        return {name: int(table.version) for name, table in tables.items()}

    def damage(self) -> list[str]:
        """What cannot be read of the collection: one line per damaged table (every row of every
        column read, and a query through the vector index); empty when it is sound."""
        found = []
        for table in (self._images, self._failures, self._db.open_table(META)):
            reason = unreadable(table)
            if reason is not None:
                found.append(f"{table.name}: {reason}")
        if not found and self.has_index():
            try:
                self.search(np.zeros(self.dimension, np.float32) + 1.0, k=1)
            except CollectionDamaged as exc:
                found.append(f"{self._images.name} vector index: {exc}")
        return found

    def repair_damage(self) -> list[str]:
        """Take each damaged table back to its newest version that reads (a damaged vector index is
        dropped: the next ingest builds it again); returns what was done, one line each."""
        done = []
        with writing(self.uri):
            for table in (self._images, self._failures, self._db.open_table(META)):
                if unreadable(table) is None:
                    continue
                back: Rollback | None = roll_back(table)
                if back is None:
                    raise CollectionDamaged(
                        f"--db {self.uri}: no version of its {table.name} table reads; restore the folder from a backup"
                    )
                done.append(
                    f"{back.table}: back from version {back.from_version} to {back.to_version}, "
                    f"{back.rows_before - back.rows_after} of {back.rows_before} rows lost "
                    "(run clipdex ingest to embed their files again)"
                )
            if self.damage():
                self._images.drop_index(INDEX_NAME)
                done.append(f"{self._images.name}: the damaged vector index was dropped; the next ingest builds it")
        self._indexed = None
        return done

    def is_current(self) -> bool:
        """False once another process switched the collection to another model (reembed)."""
        try:
            meta = {r["key"]: r["value"] for r in self._db.open_table(META).to_arrow().to_pylist()}
        except (OSError, RuntimeError, ValueError):
            return False
        return (meta.get("model"), meta.get("images_table", IMAGES)) == (self.model, self._images.name)

    def column_names(self) -> list[str]:
        """The images table's columns, extra ones (tags, clusters) included."""
        return list(self._images.schema.names)

    def extra_columns(self) -> set[str]:
        """Columns added after creation (tags, clusters)."""
        return set(self._images.schema.names) - set(images_schema(self.dimension).names)

    @_reads
    def columns(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Some metadata columns of every image, as rows."""
        rows: list[dict[str, Any]] = self._images.search().select(list(names)).limit(None).to_arrow().to_pylist()
        return rows

    def iter_rows(
        self, columns: Sequence[str], batch_size: int = 10_000, *, where: str | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Every image row's columns (or those of the rows where picks), in batches, straight from
        the Lance scanner with little read-ahead: memory stays flat for any collection size, and a
        slow reader (a CSV writer) never lets the scanner buffer the collection. Raises
        CollectionDamaged, BadFilter (a bad where) or CollectionUnreadable while iterating."""
        sql = f"({with_timestamps(where)})" if where else None
        try:
            dataset = self._images.to_lance()
            yield from dataset.to_batches(
                columns=list(columns),
                filter=sql,
                batch_size=batch_size,
                batch_readahead=SCAN_READAHEAD_BATCHES,
                fragment_readahead=1,
                io_buffer_size=SCAN_IO_BUFFER_BYTES,
            )
        except (RuntimeError, OSError, ValueError) as exc:
            if is_damage(exc):
                raise damaged(self.uri, exc) from exc
            if where and not isinstance(exc, OSError):
                raise bad_filter(where, exc) from exc
            raise CollectionUnreadable(f"--db {self.uri}: cannot read it ({first_line(exc)})") from exc

    def search(
        self,
        vector: np.ndarray,
        *,
        column: str = "vector",
        k: int = 10,
        where: str | None = None,
        min_score: float | None = None,
        exclude_ids: Sequence[str] = (),
        exclude_files: Sequence[str] = (),
    ) -> list[Hit]:
        """The k rows closest to vector (cosine), best first, filtered by an SQL where clause;
        exclude_files leaves out every row of those files (a video's moments)."""
        _check_vector_column(column)
        if where:
            check_where(where)
            where = with_timestamps(where)
        filters = [f"({where})"] if where else []
        if exclude_ids:
            filters.append(f"id NOT IN ({', '.join(sql_str(i) for i in exclude_ids)})")
        if exclude_files:
            filters.append(f"file_id NOT IN ({', '.join(sql_str(i) for i in exclude_files)})")
        if column == "caption_vector":
            filters.append(CAPTION_FILTER)
        query = (
            self._images.search(np.asarray(vector, np.float32), vector_column_name=column)
            .distance_type("cosine")  # type: ignore[attr-defined]
            .limit(k)
            .select(HIT_COLUMNS)
        )
        if filters:
            query = query.where(" AND ".join(filters), prefilter=True)
        if min_score is not None:
            query = query.distance_range(upper_bound=1.0 - min_score)
        if column == "vector" and self.has_index():
            query = query.nprobes(NPROBES).ef(HNSW_EF).refine_factor(REFINE_FACTOR)
        try:
            rows = query.to_arrow().to_pylist()
        except (ValueError, RuntimeError, OSError) as exc:  # a parse error, or one while running (x / 0, a bad cast)
            if is_damage(exc):
                raise damaged(self.uri, exc) from exc
            if not where:
                raise
            raise bad_filter(where, exc) from exc
        matched = "caption" if column == "caption_vector" else "image"
        return [hit_from_row(row, matched) for row in rows]

    @_reads
    def check_filter(self, where: str) -> None:
        """Raise BadFilter if a search could not run this where clause (an empty one is no filter)."""
        if not where:
            return
        check_where(where)
        try:
            self._images.search().where(f"({with_timestamps(where)})").select(["id"]).limit(1).to_arrow()
        except (ValueError, RuntimeError) as exc:
            raise bad_filter(where, exc) from exc

    def has_index(self) -> bool:
        """True once the image vectors have an ANN index (looked up again whenever the table changed)."""
        version = self._images.version
        if self._indexed is None or self._indexed[0] != version:
            indexed = any(i.name == INDEX_NAME for i in self._images.list_indices())
            self._indexed = (version, indexed)
        return self._indexed[1]

    def ensure_index(
        self, min_rows: int, *, build: IndexBuilder | None = None, compact: Compactor | None = None
    ) -> str:
        """Build the ANN index once there are min_rows images, later fold new rows into it.

        build builds it elsewhere (given the dataset URI and the IndexSpec), else LanceDB builds it
        here; compact likewise for the compaction that folds new rows in.
        Returns what happened: 'none' (below min_rows: exact search), 'built', 'refreshed' or 'current'.
        """
        rows = self.count()
        if rows < min_rows:
            return "none"
        self._ensure_scalar_indexes()
        if not self.has_index():
            spec = IndexSpec.for_rows(rows)
            with writing(self.uri):
                if build is not None:
                    build(self.dataset_uri(), spec)
                else:
                    config = HnswSq(distance_type=spec.metric, num_partitions=spec.num_partitions)
                    self._images.create_index(spec.column, config=config, name=spec.name)
            return "built"
        stats = self._images.index_stats(INDEX_NAME)
        if stats is not None and stats.num_unindexed_rows > 0:
            self.optimize(compact=compact)
            return "refreshed"
        return "current"

    def _ensure_scalar_indexes(self) -> None:
        """BTREE indexes on id and path, so lookups by either stop scanning the table (optimize
        folds new rows into them)."""
        have = {tuple(i.columns) for i in self._images.list_indices()}
        for column in SCALAR_INDEXED:
            if (column,) not in have:
                with writing(self.uri):
                    self._images.create_index(column, config=BTree())

    def optimize(self, *, compact: Compactor | None = None) -> None:
        """Merge the small fragments that appends leave (by compact, when given), and fold new rows
        into the index."""
        with writing(self.uri):
            if compact is not None:
                compact(self.dataset_uri())
            self._images.optimize()
            self._failures.optimize()

    # --- writing: each call is one commit ----------------------------------------------------

    def writer(self, command: str) -> contextlib.AbstractContextManager[None]:
        """Hold the collection's writer lock while a command writes (storage.locking.writer_lock)."""
        return writer_lock(self.uri, command)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Around a write made outside this class (lance-ray): its errors in one line with the fix."""
        return writing(self.uri)

    def dataset_uri(self) -> str:
        """Where the images table's Lance dataset lives, for tools that work on datasets (lance-ray)."""
        return str(self._images.uri)  # type: ignore[attr-defined]

    def table_schema(self) -> pa.Schema:
        """The images table's schema now, extra columns included: what an appended batch must match."""
        return self._images.schema

    def upsert(self, records: Sequence[ImageRecord], *, new: bool = False) -> None:
        """Insert new images and replace those whose id exists, in one commit.

        new=True promises that no id exists yet: the rows are appended, without the join against
        every stored id that a merge costs (which grows with the collection).
        """
        if not records:
            return
        table = records_table(records, self.dimension)
        if new:
            with writing(self.uri):
                self._images.add(conform(table, self._images.schema))
        else:
            self._merge(self._images, "id", table)

    def move(self, moves: Sequence[Moved]) -> None:
        """Point stored files (every row of each: a video's moments too) at new paths, sizes and
        mtimes, keeping their vectors."""
        if moves:
            table = pa.table(
                {
                    "file_id": [m.id for m in moves],
                    "path": [m.path for m in moves],
                    "size": pa.array([m.size for m in moves], pa.int64()),
                    "mtime_ns": pa.array([m.mtime_ns for m in moves], pa.int64()),
                }
            )
            self._merge(self._images, "file_id", table, insert=False)

    def set_captions(self, updates: Sequence[CaptionUpdate]) -> None:
        """Replace the captions (and caption vectors) of stored rows."""
        if not updates:
            return
        vector_type = pa.list_(pa.float32(), self.dimension)
        table = pa.table(
            {
                "id": [u.id for u in updates],
                "caption": pa.array([u.caption for u in updates], pa.string()),
                "caption_source": pa.array([u.caption_source for u in updates], pa.string()),
                "caption_stamp": pa.array([u.caption_stamp for u in updates], pa.string()),
                "caption_vector": pa.array([vector_list(u.caption_vector) for u in updates], vector_type),
            }
        )
        self._merge(self._images, "id", table, insert=False)

    def set_labels(self, column: str, labels: dict[str, tuple[str, float]]) -> None:
        """Store a label and its score per image id in COLUMN and COLUMN_score (added when missing)."""
        self.set_columns(
            {column: ({i: label for i, (label, _) in labels.items()}, "string"),
             f"{column}_score": ({i: score for i, (_, score) in labels.items()}, "float32")}
        )  # fmt: skip

    def set_columns(self, columns: dict[str, tuple[dict[str, Any], str]]) -> None:
        """Set per-image values of extra columns: name -> ({id: value}, 'string' | 'int32' | 'float32').

        Missing columns are added (null for other images); they can be used in --where.
        """
        types = {name: EXTRA_TYPES[kind] for name, (_, kind) in columns.items()}
        for name, kind in types.items():
            if not EXTRA_NAME.fullmatch(name) or name in images_schema(self.dimension).names:
                raise BadColumn(
                    f"{name!r} cannot be an extra column: use lowercase letters, digits and _, not a built-in"
                )
            existing = self._images.schema.field(name).type if name in self._images.schema.names else kind
            if existing != kind:
                raise BadColumn(f"column {name!r} already holds {existing} values, not {kind}; choose another name")
        missing = [pa.field(name, kind) for name, kind in types.items() if name not in self._images.schema.names]
        if missing:
            with writing(self.uri):
                self._images.add_columns(missing)
        ids = sorted(next(iter(columns.values()))[0]) if columns else []
        table = pa.table(
            {"id": ids} | {name: pa.array([v[i] for i in ids], types[name]) for name, (v, _) in columns.items()}
        )
        self._merge(self._images, "id", table, insert=False)

    def delete(self, ids: Iterable[str]) -> int:
        """Remove rows by id, or whole files by file id (a video with all its moments); returns how
        many ids were given."""
        return self.delete_where_in(self._images, ("id", "file_id"), ids)

    def record_failures(self, failures: Sequence[Failure]) -> None:
        """Add failures, replacing earlier ones for the same paths."""
        if failures:
            rows = [f.__dict__ for f in failures]
            self._merge(self._failures, "path", pa.Table.from_pylist(rows, schema=FAILURES_SCHEMA))

    def clear_failures(self, paths: Iterable[str]) -> None:
        """Forget failures of these paths (they were ingested, or are gone)."""
        self.delete_where_in(self._failures, "path", paths)

    def delete_where_in(self, table: Any, column: str | tuple[str, ...], values: Iterable[str]) -> int:
        """Delete the rows of one of this collection's tables whose column (any of the columns) is
        one of values, a few hundred per statement; returns how many values were given."""
        values = list(values)
        columns = (column,) if isinstance(column, str) else column
        with writing(self.uri):
            for start in range(0, len(values), DELETE_CHUNK):
                chunk = values[start : start + DELETE_CHUNK]
                table.delete(" OR ".join(sql_in(c, chunk) for c in columns))
        return len(values)

    # --- re-embedding with another model: build a second table, then switch in one commit ----------

    def staging(self, model: str, dimension: int) -> Staging:
        """The table being filled with another model's vectors (created, or resumed if the same model)."""
        name = "images" if self._images.name != "images" else "images_next"  # two names, used in turn
        names = _table_names(self._db)
        with writing(self.uri):
            if name in names and self._meta.get("next_model") != model:
                self._db.drop_table(name)  # left over from another model, or from before a switch
                names.remove(name)
            table = (
                self._db.open_table(name)
                if name in names
                else self._db.create_table(name, schema=images_schema(dimension))
            )
            self._set_meta({"next_model": model})
        return Staging(self, table, model, dimension)

    def switch_to(self, staging: Staging) -> None:
        """Make the staged table the images table in one commit of the meta table; drop the old one."""
        old = self._images
        with writing(self.uri):
            self._set_meta(
                {
                    "model": staging.model,
                    "dimension": str(staging.dimension),
                    "images_table": staging.table.name,
                    "next_model": "",
                }
            )
            self._db.drop_table(old.name)
        self._images, self.model, self.dimension, self._indexed = staging.table, staging.model, staging.dimension, None

    # --- internals ---------------------------------------------------------------------------

    @_reads
    def _one(self, where: str, vectors: bool = True) -> ImageRecord | None:
        query = self._images.search().where(where).limit(1)
        if not vectors:
            query = query.select([c for c in self._images.schema.names if c not in VECTOR_COLUMNS])
        rows = query.to_arrow().to_pylist()
        return record_from_row(rows[0]) if rows else None

    def _merge(self, table: Any, key: str, data: pa.Table, *, insert: bool = True) -> None:
        with writing(self.uri):
            builder = table.merge_insert(key).when_matched_update_all()
            if insert:
                builder = builder.when_not_matched_insert_all()
            builder.execute(data, on_bad_vectors="null")  # a null caption_vector means no caption

    def _set_meta(self, values: dict[str, str]) -> None:
        table = pa.Table.from_pylist(_meta_rows(values), schema=META_SCHEMA)
        self._merge(self._db.open_table(META), "key", table)
        self._meta.update(values)

    def _upgrade(self) -> None:
        for version in range(self.schema_version, SCHEMA_VERSION):
            UPGRADES[version](self._db)
        meta = self._db.open_table(META)
        meta.update(where="key = 'schema_version'", values={"value": str(SCHEMA_VERSION)})
        self.schema_version = SCHEMA_VERSION

    # --- what `clipdex info` shows ---------------------------------------------------------

    def disk_bytes(self) -> int | None:
        """Bytes the collection's folder takes on disk (all versions kept); None on object storage."""
        if "://" in self.uri:
            return None
        total = 0
        for folder, _, names in os.walk(self.uri):
            for name in names:
                with contextlib.suppress(OSError):  # a file compacted away meanwhile
                    total += os.lstat(os.path.join(folder, name)).st_size
        return total

    @_reads
    def index_states(self) -> list[IndexState]:
        """The images table's indexes, each with the rows it covers and the rows added since."""
        states = []
        for config in self._images.list_indices():
            stats = self._images.index_stats(config.name)
            indexed, unindexed = (stats.num_indexed_rows, stats.num_unindexed_rows) if stats else (0, 0)
            kind = stats.index_type if stats else str(config.index_type)
            states.append(IndexState(config.name, tuple(config.columns), kind, indexed, unindexed))
        return states

    def ingest_history(self) -> tuple[list[str], datetime | None]:
        """The folders and prefixes ever ingested, and when the last ingest finished (None: never),
        as stored now (another process's ingest included), not as when this collection was opened."""
        stored = self._stored_meta()
        roots = json.loads(stored.get("roots", "[]"))
        last = stored.get("last_ingest")
        return [str(r) for r in roots], datetime.fromisoformat(last) if last else None

    def record_ingest(self, roots: Sequence[str], at: datetime, changed: bool) -> None:
        """Remember the roots of a finished ingest and its time, for ingest_history (one commit of
        meta), unless the run changed nothing under roots already known: a no-op run writes nothing."""
        before = set(json.loads(self._stored_meta().get("roots", "[]")))  # as now, not as opened
        if changed or not before >= set(roots):
            self._set_meta({"roots": json.dumps(sorted(before | set(roots))), "last_ingest": at.isoformat()})

    def _stored_meta(self) -> dict[str, str]:
        """The meta table as stored now."""
        return {r["key"]: r["value"] for r in self._db.open_table(META).to_arrow().to_pylist()}


@dataclass(frozen=True)
class IndexState:
    """An index of the images table: rows it covers, and rows added since (searched exactly)."""

    name: str
    columns: tuple[str, ...]
    kind: str  # IVF_HNSW_SQ, BTREE, ...
    indexed: int
    unindexed: int


def _check_vector_column(column: str) -> None:
    if column not in VECTOR_COLUMNS:
        raise ValueError(f"column must be one of {', '.join(VECTOR_COLUMNS)}, not {column!r}")


def _refuse_file(uri: str) -> None:
    if "://" not in uri and os.path.isfile(uri):
        raise CollectionUnreadable(f"--db {uri} is a file; point --db at a folder (new, or holding a collection)")


def _connect(uri: str, storage_options: dict[str, str] | None) -> lancedb.DBConnection:
    try:
        # Every read sees the latest commit, also one made by another process meanwhile.
        return lancedb.connect(uri, storage_options=storage_options, read_consistency_interval=timedelta(0))
    except Exception as exc:
        raise CollectionUnreadable(f"--db {uri}: cannot open ({first_line(exc)})") from exc


def _table_names(db: lancedb.DBConnection) -> list[str]:
    return list(db.list_tables().tables)


def _is_nonempty_dir(uri: str) -> bool:
    if "://" in uri or not os.path.isdir(uri):
        return False
    with os.scandir(uri) as entries:
        return next(entries, None) is not None


def _meta_rows(meta: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in meta.items()]
