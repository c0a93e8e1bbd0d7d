"""Export a collection (or the rows a --where picks) to Parquet, CSV or NumPy, streamed batch by batch.

Every row's id, path, metadata columns (extra ones such as tags and clusters included) and
vectors. Rows are read in batches of BATCH_ROWS and each batch is written before the next is
read, so memory stays flat however many rows there are. Files are written under a temporary
name beside --out and renamed into place at the end: an interrupted or failed export leaves no
half-written file, and an existing file is replaced only with force.

- parquet: one row per image; the vectors as fixed-size lists of float32 (vector,
  caption_vector; null where an image has no caption).
- csv: the same columns; each vector as a JSON array of its numbers in one cell (the shortest
  text that reads back to the same float32), empty where there is none.
- npy: FILE.npy holds the image vectors, an (n, d) float32 matrix; FILE.ids.csv the id and path of
  each of its rows, in order; FILE.captions.npy the caption vectors, row for row (NaN rows for
  images without a caption), written only when some exported image has one.
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.errors import BadOption, OutputError
from pipeline.ingest.sources import is_uri

if TYPE_CHECKING:
    from storage import Collection

FORMATS = ("parquet", "csv", "npy")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npy": "npy"}
BATCH_ROWS = 4096  # rows read and written at a time: 4096 x 512 floats is 8 MB per vector column
VECTOR_COLUMNS = ("vector", "caption_vector")
FIRST_COLUMNS = ("id", "path")
NPY_HEADER_BYTES = 128  # the header is written before the row count is known, padded to this size


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote."""

    format: str
    rows: int
    files: tuple[str, ...]  # --out first, then the sidecars (npy)
    bytes: int
    seconds: float


def export(
    collection: Collection,
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    where: str | None = None,
    force: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> ExportReport:
    """Write every row (or those matching where) to out as parquet, csv or npy (format=None: from
    out's suffix). Raises OutputError for an out that cannot be written or exists (without force),
    BadFilter for a bad where, BadOption for an unknown format."""
    started = time.monotonic()
    path = _output_path(out)
    kind = _format(path, format)
    outputs = _outputs(path, kind)
    for target in outputs.values():
        if os.path.lexists(target) and not force:
            raise OutputError(f"--out {path}: {target} exists; add --force to replace it, or choose another --out")
    if where:
        collection.check_filter(where)  # a bad filter is one line before any file is made
    columns = _columns(collection)
    with _Staged(outputs) as staged:
        batches = collection.iter_rows(columns, batch_rows, where=where)
        if kind == "parquet":
            rows = _write_parquet(staged["out"], batches, _schema(collection, columns))
        elif kind == "csv":
            rows = _write_csv(staged["out"], batches, _schema(collection, columns))
        else:
            rows = _write_npy(staged, batches, collection.dimension)
        written = staged.commit()
    size = sum(os.path.getsize(f) for f in written)
    return ExportReport(kind, rows, tuple(written), size, time.monotonic() - started)


def _output_path(out: str | os.PathLike[str]) -> str:
    text = os.fspath(out)
    if is_uri(text):
        raise OutputError(f"--out {text}: export writes local files; give a path on this machine")
    path = os.path.abspath(os.path.expanduser(text))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise OutputError(f"--out {path}: is a folder; give a file name, e.g. {os.path.join(path, 'export.parquet')}")
    if not os.path.isdir(folder):
        raise OutputError(f"--out {path}: the folder {folder} does not exist; create it or choose another --out")
    return path


def _format(path: str, format: str | None) -> str:
    if format is None:
        found = SUFFIXES.get(os.path.splitext(path)[1].lower())
        if found is None:
            raise BadOption(f"--out {path}: cannot tell the format from its name; give --format {'|'.join(FORMATS)}")
        return found
    if format not in FORMATS:
        raise BadOption(f"--format {format}: choose one of {', '.join(FORMATS)}")
    return format


def _outputs(path: str, kind: str) -> dict[str, str]:
    """role -> final path of every file the export writes."""
    if kind != "npy":
        return {"out": path}
    stem = path[:-4] if path.lower().endswith(".npy") else path
    return {"out": path, "ids": f"{stem}.ids.csv", "captions": f"{stem}.captions.npy"}


def _columns(collection: Collection) -> list[str]:
    """id and path first, the vectors last, every other column between, in the table's order."""
    names = collection.column_names()
    middle = [c for c in names if c not in FIRST_COLUMNS and c not in VECTOR_COLUMNS]
    return [*FIRST_COLUMNS, *middle, *(c for c in VECTOR_COLUMNS if c in names)]


def _schema(collection: Collection, columns: list[str]) -> pa.Schema:
    schema = collection.table_schema()
    return pa.schema([schema.field(c) for c in columns])


def _write_parquet(path: str, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> int:
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            writer.write_batch(_conform(batch, schema))
            rows += batch.num_rows
    return rows


def _write_csv(path: str, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> int:
    fields = [pa.field(f.name, pa.string()) if f.name in VECTOR_COLUMNS else f for f in schema]
    text_schema = pa.schema(fields)
    rows = 0
    with pa_csv.CSVWriter(path, text_schema) as writer:
        for raw in batches:
            batch = _conform(raw, schema)
            arrays = [
                _vector_text(batch.column(i)) if f.name in VECTOR_COLUMNS else batch.column(i)
                for i, f in enumerate(schema)
            ]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=text_schema))
            rows += batch.num_rows
    return rows


def _vector_text(column: pa.Array) -> pa.Array:
    """Each vector as '[0.1,-0.2,...]', null where there is none, formatted by Arrow (no Python loop)."""
    d = column.type.list_size
    values = column.values.slice(column.offset * d, len(column) * d)
    offsets = pa.array(np.arange(0, len(column) * d + 1, d, dtype=np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pc.cast(values, pa.string())), ",")
    framed = pc.binary_join_element_wise("[", joined, "]", "")
    return pc.if_else(column.is_null(), pa.scalar(None, pa.string()), framed)


def _matrix(column: pa.Array, dimension: int) -> np.ndarray:
    """An (n, d) float32 copy of a vector column, NaN rows where it is null."""
    values = column.values.slice(column.offset * dimension, len(column) * dimension)
    matrix = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(column), dimension)
    if column.null_count:
        matrix[np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return matrix


def _write_npy(staged: _Staged, batches: Iterator[pa.RecordBatch], dimension: int) -> int:
    rows = 0
    captions: IO[bytes] | None = None
    with open(staged["out"], "wb") as images, open(staged["ids"], "w", encoding="utf-8", newline="") as ids:
        images.write(b"\0" * NPY_HEADER_BYTES)  # the real header once the row count is known
        writer = csv.writer(ids)
        writer.writerow(["row", "id", "path"])
        try:
            for batch in batches:
                images.write(_matrix(batch.column("vector"), dimension).tobytes())
                writer.writerows(
                    zip(
                        range(rows, rows + batch.num_rows),
                        batch.column("id").to_pylist(),
                        batch.column("path").to_pylist(),
                        strict=True,
                    )
                )
                vectors = batch.column("caption_vector") if "caption_vector" in batch.schema.names else None
                if captions is None and vectors is not None and vectors.null_count < len(vectors):
                    captions = open(staged["captions"], "wb")  # noqa: SIM115 - closed below
                    captions.write(b"\0" * NPY_HEADER_BYTES)
                    _write_nan_rows(captions, rows, dimension)  # the rows before the first caption
                if captions is not None and vectors is not None:
                    captions.write(_matrix(vectors, dimension).tobytes())
                rows += batch.num_rows
            _finish_npy(images, rows, dimension)
            if captions is not None:
                _finish_npy(captions, rows, dimension)
        finally:
            if captions is not None:
                captions.close()
    if captions is None:
        staged.drop("captions")
    return rows


def _write_nan_rows(f: IO[bytes], rows: int, dimension: int) -> None:
    chunk = np.full((BATCH_ROWS, dimension), np.nan, np.float32)
    for start in range(0, rows, BATCH_ROWS):
        f.write(chunk[: min(BATCH_ROWS, rows - start)].tobytes())


def _finish_npy(f: IO[bytes], rows: int, dimension: int) -> None:
    """Write the NPY 1.0 header for (rows, dimension) float32 over the space left for it."""
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dimension)}).encode("latin1")
    prefix = b"\x93NUMPY\x01\x00"
    room = NPY_HEADER_BYTES - len(prefix) - 2
    if len(header) + 1 > room:  # cannot happen below 10^40 rows, checked all the same
        raise OutputError(f"cannot write the header of a {rows} x {dimension} matrix")
    body = header + b" " * (room - len(header) - 1) + b"\n"
    f.seek(0)
    f.write(prefix + len(body).to_bytes(2, "little") + body)
    f.flush()
    os.fsync(f.fileno())


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch in the schema's column order and types (a scanner may hand columns back reordered)."""
    if batch.schema.equals(schema):
        return batch
    return pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in schema], schema=schema)


class _Staged:
    """Temporary files beside the outputs, renamed into place by commit, removed otherwise."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = dict(outputs)
        self.temps: dict[str, str] = {}

    def __enter__(self) -> _Staged:
        try:
            for role, target in self.outputs.items():
                temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
                # O_EXCL: never through a file or link already there; 0o666 & umask, as any new file.
                os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                self.temps[role] = temp
        except OSError as exc:
            self._remove()
            raise OutputError(
                f"--out {self.outputs['out']}: cannot write in {os.path.dirname(self.outputs['out'])} "
                f"({exc.strerror or exc}); choose another --out"
            ) from exc
        return self

    def __getitem__(self, role: str) -> str:
        return self.temps[role]

    def drop(self, role: str) -> None:
        """This output is not written after all."""
        with contextlib.suppress(OSError):
            os.unlink(self.temps.pop(role))
        self.outputs.pop(role)

    def commit(self) -> list[str]:
        for role, temp in self.temps.items():
            os.replace(temp, self.outputs[role])
        self.temps = {}
        return list(self.outputs.values())

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._remove()
        if isinstance(exc, OSError):
            raise OutputError(
                f"--out {self.outputs['out']}: cannot write ({exc.strerror or exc}); check free space, "
                "or choose another --out"
            ) from exc

    def _remove(self) -> None:
        for temp in self.temps.values():
            with contextlib.suppress(OSError):
                os.unlink(temp)
