"""A clipdex collection: LanceDB tables of images, failures and metadata, at a path or URI."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl  # POSIX: clipdex runs on Linux and macOS
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import HnswSq  # HNSW graphs in IVF partitions, 8-bit scalar-quantised

from storage.errors import BadFilter, CollectionBusy, CollectionNotFound, CollectionUnreadable, StorageError
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

# We never read index centroids; opting in to lance's leaner statistics also silences its warning.
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")

LOCK_FILE = ".clipdex-writer"  # inside a local collection's folder: who is writing now
DELETE_CHUNK = 500  # ids per DELETE statement, to keep the SQL short
INDEX_NAME = "vector_idx"
# IVF partitions of ~4k rows, each an HNSW graph over 8-bit quantised vectors; a query walks the
# graphs of the NPROBES partitions nearest to it. benchmarks/query.py measures recall and latency.
ROWS_PER_PARTITION = 4096
NPROBES = 64
HNSW_EF = 300  # candidates kept while walking a graph: recall against latency
REFINE_FACTOR = 4  # re-rank k * this candidates with the full-precision vectors
CAPTION_FILTER = "caption_vector IS NOT NULL"
EXTRA_TYPES = {"string": pa.string(), "int32": pa.int32(), "float32": pa.float32()}
EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


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
            raise CollectionUnreadable(
                f"--db {uri}: not a clipdex collection ({_first_line(exc)}); "
                "point --db at a collection or at a new, empty folder"
            ) from exc
        self._meta = {row["key"]: row["value"] for row in meta}
        self._indexed: bool | None = None
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
        with _writing(uri):
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

    def count(self) -> int:
        """Number of images."""
        return int(self._images.count_rows())

    def stats(self) -> Stats:
        """Counts and facts about the collection."""
        return Stats(
            uri=self.uri,
            images=self.count(),
            failures=int(self._failures.count_rows()),
            captioned=int(self._images.count_rows("caption IS NOT NULL")),
            dimension=self.dimension,
            model=self.model,
            schema_version=self.schema_version,
        )

    def file_states(self) -> dict[str, FileState]:
        """path -> what sync compares, for every image (vectors are not read)."""
        table = self._images.search().select(STATE_COLUMNS).limit(None).to_arrow()
        return {row["path"]: FileState(**row) for row in table.to_pylist()}

    def failure_states(self) -> dict[str, Failure]:
        """path -> the recorded failure, for every failed file."""
        return {f.path: f for f in self.failures()}

    def failures(self) -> list[Failure]:
        """Every recorded failure, by path."""
        rows = self._failures.search().limit(None).to_arrow().to_pylist()
        return sorted((Failure(**row) for row in rows), key=lambda f: f.path)

    def get(self, image_id: str) -> ImageRecord | None:
        """The image with this id, with its vectors."""
        return self._one(f"id = {_sql_str(image_id)}")

    def get_by_path(self, path: str) -> ImageRecord | None:
        """The image stored at this path, with its vectors."""
        return self._one(f"path = {_sql_str(path)}")

    def vectors(self, ids: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
        """(ids, image vectors as an (n, d) float32 array), for the given ids or for every image."""
        query = self._images.search().select(["id", "vector"]).limit(None)
        if ids:
            query = query.where(f"id IN ({', '.join(_sql_str(i) for i in ids)})")
        table = query.to_arrow()
        found = table.column("id").to_pylist()
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return found, np.asarray(flat, np.float32).reshape(len(found), self.dimension)

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

    def columns(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Some metadata columns of every image, as rows."""
        rows: list[dict[str, Any]] = self._images.search().select(list(names)).limit(None).to_arrow().to_pylist()
        return rows

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
                raise ValueError(
                    f"{name!r} cannot be an extra column: use lowercase letters, digits and _, not a built-in"
                )
            existing = self._images.schema.field(name).type if name in self._images.schema.names else kind
            if existing != kind:
                raise ValueError(f"column {name!r} already holds {existing} values, not {kind}; choose another name")
        missing = [pa.field(name, kind) for name, kind in types.items() if name not in self._images.schema.names]
        if missing:
            with _writing(self.uri):
                self._images.add_columns(missing)
        ids = sorted(next(iter(columns.values()))[0]) if columns else []
        table = pa.table(
            {"id": ids} | {name: pa.array([v[i] for i in ids], types[name]) for name, (v, _) in columns.items()}
        )
        self._merge(self._images, "id", table, insert=False)

    def search(
        self,
        vector: np.ndarray,
        *,
        column: str = "vector",
        k: int = 10,
        where: str | None = None,
        min_score: float | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[Hit]:
        """The k images closest to vector (cosine), best first, filtered by an SQL where clause."""
        if column not in ("vector", "caption_vector"):
            raise ValueError(f"column must be 'vector' or 'caption_vector', not {column!r}")
        if where:
            _check_where(where)
        filters = [f"({where})"] if where else []
        if exclude_ids:
            filters.append(f"id NOT IN ({', '.join(_sql_str(i) for i in exclude_ids)})")
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
        except (ValueError, RuntimeError) as exc:  # a parse error, or one while running (x / 0, a bad cast)
            if not where:
                raise
            raise BadFilter(_bad_filter(where, exc)) from exc
        return [_hit(row) for row in rows]

    def check_filter(self, where: str) -> None:
        """Raise BadFilter if a search could not run this where clause (an empty one is no filter)."""
        if not where:
            return
        _check_where(where)
        try:
            self._images.search().where(f"({where})").select(["id"]).limit(1).to_arrow()
        except (ValueError, RuntimeError) as exc:
            raise BadFilter(_bad_filter(where, exc)) from exc

    def has_index(self) -> bool:
        """True once the image vectors have an ANN index."""
        if self._indexed is None:
            self._indexed = any(i.name == INDEX_NAME for i in self._images.list_indices())
        return self._indexed

    def ensure_index(self, min_rows: int, *, workers: int = 0) -> str:
        """Build the ANN index once there are min_rows images, later fold new rows into it.

        workers > 0 builds it in that many Ray tasks (lance-ray; Ray must be started), else here.
        Returns what happened: 'none' (below min_rows: exact search), 'built', 'refreshed' or 'current'.
        """
        rows = self.count()
        if rows < min_rows:
            return "none"
        if not self.has_index():
            partitions = max(1, rows // ROWS_PER_PARTITION)
            with _writing(self.uri):
                if workers:
                    import lance_ray  # noqa: PLC0415 - optional dependency (clipdex[ray])

                    lance_ray.create_index(
                        self._images_uri(),
                        "vector",
                        "IVF_HNSW_SQ",
                        name=INDEX_NAME,
                        metric="cosine",
                        num_partitions=partitions,
                        num_workers=workers,
                        sample_rate=min(256, rows // partitions),  # training rows per partition, at most all
                    )
                else:
                    config = HnswSq(distance_type="cosine", num_partitions=partitions)
                    self._images.create_index("vector", config=config, name=INDEX_NAME)
            self._indexed = True
            return "built"
        stats = self._images.index_stats(INDEX_NAME)
        if stats is not None and stats.num_unindexed_rows > 0:
            self.optimize(workers=workers)
            return "refreshed"
        return "current"

    def optimize(self, *, workers: int = 0) -> None:
        """Merge the small fragments that appends leave (in Ray tasks when workers > 0), and fold new
        rows into the index."""
        with _writing(self.uri):
            if workers:
                import lance_ray  # noqa: PLC0415 - optional dependency (clipdex[ray])

                lance_ray.compact_files(self._images_uri(), num_workers=workers)
            self._images.optimize()
            self._failures.optimize()

    def iter_rows(self, columns: Sequence[str], batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
        """Every image row's columns, in batches (memory stays flat for any collection size)."""
        reader = self._images.search().select(list(columns)).limit(None).to_batches(batch_size)
        yield from reader

    # --- writing: each call is one commit ----------------------------------------------------

    @contextlib.contextmanager
    def writer(self, command: str) -> Iterator[None]:
        """Hold the collection's writer lock while a command writes (ingest, reembed, ...).

        A second writer is refused at once with CollectionBusy, naming the holder; readers never
        wait. The lock is an flock on a file in the folder, so a killed holder releases it. On
        object storage there is no lock: run one writer per collection there.
        """
        if "://" in self.uri:
            yield
            return
        try:
            lock = open(os.path.join(self.uri, LOCK_FILE), "a+", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StorageError(
                f"--db {self.uri}: cannot write ({exc.strerror or exc}); check free space and permissions, "
                "or use another --db"
            ) from exc
        with lock as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another clipdex process"
                raise CollectionBusy(
                    f"--db {self.uri}: {holder} is writing to this collection; "
                    "wait for it to finish (searches work meanwhile), or stop it"
                ) from None
            except OSError as exc:  # a file system without locks (some NFS, FUSE and SMB mounts)
                raise StorageError(
                    f"--db {self.uri}: cannot lock the collection for writing ({exc.strerror or exc}); "
                    "put it on a local disk, or on object storage"
                ) from exc
            try:
                f.seek(0)
                f.truncate()
                f.write(f"clipdex {command} (pid {os.getpid()}, since {datetime.now():%Y-%m-%d %H:%M:%S})")
                f.flush()
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def upsert(self, records: Sequence[ImageRecord], *, new: bool = False) -> None:
        """Insert new images and replace those whose id exists, in one commit.

        new=True promises that no id exists yet: the rows are appended, without the join against
        every stored id that a merge costs (which grows with the collection).
        """
        if not records:
            return
        table = records_table(records, self.dimension)
        if new:
            with _writing(self.uri):
                self._images.add(_conform(table, self._images.schema))
        else:
            self._merge(self._images, "id", table)

    def append_dataset(self, rows: Any, *, workers: int | None = None) -> None:
        """Append a Ray dataset of image rows (records_table's columns) in one commit.

        lance-ray writes the fragments in Ray tasks where the rows are, and the driver commits them:
        the rows never pass through this process. Columns added later (classify --store) are null.
        """
        import lance_ray  # noqa: PLC0415 - optional dependency (clipdex[ray])

        schema = self._images.schema
        rows = rows.map_batches(_conform, fn_kwargs={"schema": schema}, batch_format="pyarrow")
        with _writing(self.uri):
            lance_ray.write_lance(rows, self._images_uri(), mode="append", schema=schema, concurrency=workers)

    def move(self, moves: Sequence[Moved]) -> None:
        """Point stored rows at new paths, sizes and mtimes, keeping their vectors."""
        if moves:
            table = pa.table(
                {
                    "id": [m.id for m in moves],
                    "path": [m.path for m in moves],
                    "size": pa.array([m.size for m in moves], pa.int64()),
                    "mtime_ns": pa.array([m.mtime_ns for m in moves], pa.int64()),
                }
            )
            self._merge(self._images, "id", table, insert=False)

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
                "caption_vector": pa.array([_vector(u.caption_vector) for u in updates], vector_type),
            }
        )
        self._merge(self._images, "id", table, insert=False)

    def delete(self, ids: Iterable[str]) -> int:
        """Remove images by id; returns how many ids were given."""
        ids = list(ids)
        with _writing(self.uri):
            for start in range(0, len(ids), DELETE_CHUNK):
                chunk = ids[start : start + DELETE_CHUNK]
                self._images.delete(f"id IN ({', '.join(_sql_str(i) for i in chunk)})")
        return len(ids)

    def record_failures(self, failures: Sequence[Failure]) -> None:
        """Add failures, replacing earlier ones for the same paths."""
        if failures:
            rows = [f.__dict__ for f in failures]
            self._merge(self._failures, "path", pa.Table.from_pylist(rows, schema=FAILURES_SCHEMA))

    def clear_failures(self, paths: Iterable[str]) -> None:
        """Forget failures of these paths (they were ingested, or are gone)."""
        paths = list(paths)
        with _writing(self.uri):
            for start in range(0, len(paths), DELETE_CHUNK):
                chunk = paths[start : start + DELETE_CHUNK]
                self._failures.delete(f"path IN ({', '.join(_sql_str(p) for p in chunk)})")

    # --- internals ---------------------------------------------------------------------------

    def _images_uri(self) -> str:
        """Where the images table's Lance dataset lives (for lance-ray, which works on datasets)."""
        return str(self._images.uri)  # type: ignore[attr-defined]

    def _one(self, where: str) -> ImageRecord | None:
        rows = self._images.search().where(where).limit(1).to_arrow().to_pylist()
        return _record(rows[0]) if rows else None

    def _merge(self, table: Any, key: str, data: pa.Table, *, insert: bool = True) -> None:
        with _writing(self.uri):
            builder = table.merge_insert(key).when_matched_update_all()
            if insert:
                builder = builder.when_not_matched_insert_all()
            builder.execute(data, on_bad_vectors="null")  # a null caption_vector means no caption

    # --- re-embedding with another model: build a second table, then switch in one commit ----------

    def staging(self, model: str, dimension: int) -> Staging:
        """The table being filled with another model's vectors (created, or resumed if the same model)."""
        name = "images" if self._images.name != "images" else "images_next"  # two names, used in turn
        names = _table_names(self._db)
        with _writing(self.uri):
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

    def _switch(self, staging: Staging) -> None:
        """Make the staged table the images table in one commit of the meta table; drop the old one."""
        old = self._images
        with _writing(self.uri):
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
        ids = list(ids)
        with _writing(self.collection.uri):
            for start in range(0, len(ids), DELETE_CHUNK):
                chunk = ids[start : start + DELETE_CHUNK]
                self.table.delete(f"id IN ({', '.join(_sql_str(i) for i in chunk)})")

    def add(self, records: Sequence[ImageRecord]) -> None:
        """Stage a batch of re-embedded rows, in one commit."""
        if records:
            self.collection._merge(self.table, "id", records_table(records, self.dimension))

    def switch(self) -> None:
        """Make these the collection's vectors; the old model's are dropped."""
        self.collection._switch(self)


@contextlib.contextmanager
def _writing(uri: str) -> Iterator[None]:
    """Turn LanceDB's write errors (full disk, read-only folder, ...) into one line with the fix."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise StorageError(
            f"--db {uri}: cannot write ({_first_line(exc)}); check free space and permissions, or use another --db"
        ) from exc


def _refuse_file(uri: str) -> None:
    if "://" not in uri and os.path.isfile(uri):
        raise CollectionUnreadable(f"--db {uri} is a file; point --db at a folder (new, or holding a collection)")


def _check_where(where: str) -> None:
    """Refuse what could escape the parentheses a filter is wrapped in (and the filters ANDed to
    it): unbalanced parentheses, comments and statement ends outside strings; and placeholders,
    which LanceDB cannot bind (it panics on them)."""
    bare, quote = [], ""  # the filter outside quoted strings (each string becomes '')
    for char in where:
        if quote:
            if char == quote:
                quote = ""
                bare.append(char)
        else:
            quote = char if char in "'\"" else ""
            bare.append(char)
    text = "".join(bare)
    if quote or text.count("(") != text.count(")") or _closes_early(text):
        what = "an unclosed quote" if quote else "unbalanced parentheses"
        raise BadFilter(f"--where {where!r}: {what}; close each one you open")
    if re.search(r"--|/\*|\*/|;", text):
        raise BadFilter(f"--where {where!r}: comments and ';' are not allowed outside quoted strings")
    if re.search(r"[?$]|(?<!:):(?!:)|:::", text):  # '::' is a cast (width::bigint); ':x', '?', '$1' placeholders
        raise BadFilter(f"--where {where!r}: placeholders (?, $1, :name) are not supported; put values in quotes")


def _closes_early(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if depth < 0:
            return True
    return False


def _bad_filter(where: str | None, exc: Exception) -> str:
    reason = _first_line(exc)
    if "Valid fields" in reason:  # LanceDB already names the columns
        return f"--where {where!r}: {reason}"
    return (
        f"--where {where!r}: {reason}; filter on id, path, size, mtime_ns, width, height, format, "
        "taken_at, description, caption, caption_source, ingested_at (SQL, strings in single quotes)"
    )


def _connect(uri: str, storage_options: dict[str, str] | None) -> lancedb.DBConnection:
    try:
        # Every read sees the latest commit, also one made by another process meanwhile.
        return lancedb.connect(uri, storage_options=storage_options, read_consistency_interval=timedelta(0))
    except Exception as exc:
        raise CollectionUnreadable(f"--db {uri}: cannot open ({_first_line(exc)})") from exc


def _table_names(db: lancedb.DBConnection) -> list[str]:
    return list(db.list_tables().tables)


def _is_nonempty_dir(uri: str) -> bool:
    if "://" in uri or not os.path.isdir(uri):
        return False
    with os.scandir(uri) as entries:
        return next(entries, None) is not None


def _meta_rows(meta: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in meta.items()]


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _vector(v: np.ndarray | None) -> list[float] | None:
    return None if v is None else np.asarray(v, np.float32).tolist()


def records_table(records: Sequence[ImageRecord], dimension: int) -> pa.Table:
    """Image rows as the images table stores them (ingested now unless a record says when)."""
    now = datetime.now(UTC)
    return pa.Table.from_pylist([_record_row(r, now) for r in records], schema=images_schema(dimension))


def _conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """The batch in the table's schema: its columns in order and types, nulls for columns it lacks."""
    for f in schema:
        if f.name not in batch.column_names:
            batch = batch.append_column(f.name, pa.nulls(batch.num_rows, f.type))
    return batch.select(schema.names).cast(schema)


def _record_row(r: ImageRecord, now: datetime) -> dict[str, Any]:
    row = dict(r.__dict__)
    row["vector"] = _vector(r.vector)
    row["caption_vector"] = _vector(r.caption_vector)
    row["ingested_at"] = r.ingested_at or now
    return row


def _record(row: dict[str, Any]) -> ImageRecord:
    row = {k: v for k, v in row.items() if k in _RECORD_FIELDS}  # extra columns (tags, clusters) stay out
    row["vector"] = np.asarray(row["vector"], np.float32)
    if row["caption_vector"] is not None:
        row["caption_vector"] = np.asarray(row["caption_vector"], np.float32)
    return ImageRecord(**row)


_RECORD_FIELDS = {f.name for f in dataclasses.fields(ImageRecord)}


def _hit(row: dict[str, Any]) -> Hit:
    return Hit(
        id=row["id"],
        path=row["path"],
        score=round(1.0 - float(row["_distance"]), 6),
        caption=row["caption"],
        width=row["width"],
        height=row["height"],
        format=row["format"],
        taken_at=row["taken_at"],
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
