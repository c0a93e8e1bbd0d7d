"""Ingest on a Ray cluster (``--engine ray``): local ingest's plan, with the heavy work in Ray Data jobs.

The driver scans, compares with the collection and finds moved files exactly as local ingest
does (pipeline.ingest). Then each chunk of files to embed is one Ray Data job: decode tasks
(Pillow and numpy, no torch) feed a fixed pool of encoder actors (one per GPU, or a share of the
CPUs each), and lance-ray writes the rows from the workers and commits them once per chunk, so an
interrupted run keeps every finished chunk. Failures come back to the driver (a path and a reason
each) and are recorded as local ingest records them.

Files are read where the tasks run: s3:// and gs:// sources work anywhere, local paths only where
every node sees them at the same path (a shared mount).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import models
from models import EncoderSpec, ImageTransform
from pipeline.decode import Decoded, DecodeFailed, decode_file
from pipeline.errors import ClipdexError, first_line
from pipeline.ingest import Ingester, IngestOptions, IngestReport, Progress, _Plan
from pipeline.scan import ScannedFile
from pipeline.sources import is_uri
from pipeline.workers import DecodePool, default_workers
from storage import Failure, FileState, Moved, records_table

if TYPE_CHECKING:
    from models import Encoder
    from storage import Collection

CHUNK_FILES = 20_000  # files per Ray job, and so per commit: what an interrupted run can lose
DECODE_BATCH = 16  # files per decode task
DECODE_CPUS = 0.5  # a decode task's CPU share: tasks must fit beside the encoder actors
DECODE_MEMORY = 256 * 2**20  # bytes a decode task may need (one large photo at a time)
# Credentials and endpoints the workers need to read sources and write the collection.
FORWARDED_ENV = ("AWS_", "GOOGLE_", "AZURE_", "CLIPDEX_", "HF_")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs."""

    address: str | None = None  # a running cluster ("auto", "ray://head:10001"); None: a local Ray here
    workers: int = 1  # encoder actors
    gpus_per_worker: float = 0.0  # 0: the actors run on CPUs
    cpus_per_worker: float | None = None  # None: 1 with GPUs, else half the cluster's CPUs split between actors


def start_ray(options: RayOptions) -> None:
    """Connect to the cluster at options.address, or start a local Ray on this machine's cores."""
    try:
        import ray  # noqa: PLC0415 - an optional dependency, loaded for --engine ray only
    except ImportError as exc:
        raise ClipdexError("--engine ray needs Ray and lance-ray: pip install 'clipdex[ray]'") from exc
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    # ray.init starts its processes with fork+exec, which LanceDB warns about; nothing is shared.
    warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message="lance is not fork-safe", category=UserWarning)
    # clipdex shows its own progress; Ray Data's bars and per-job logs would bury it.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    try:
        if options.address:
            ray.init(address=options.address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(
                num_cpus=default_workers(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClipdexError(
            f"--ray-address {options.address}: cannot connect ({str(exc).splitlines()[0]}); "
            "check that the cluster is up (ray status) and the address"
        ) from exc
    logging.getLogger("ray").setLevel(logging.WARNING)  # configured by ray.init: quiet it after
    logging.getLogger("ray.data").setLevel(logging.ERROR)


class RayIngester(Ingester):
    """An Ingester whose decoding, embedding and writing run on Ray."""

    def __init__(
        self,
        collection: Collection,
        encoder: Encoder,
        options: IngestOptions,
        spec: EncoderSpec,
        ray_options: RayOptions,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(collection, encoder, options, stop)
        self.spec = spec
        self.ray_options = ray_options

    def _embed_all(
        self,
        pool: DecodePool,
        files: list[ScannedFile],
        states: dict[str, FileState],
        plan: _Plan,
        report: IngestReport,
    ) -> None:
        if not files:
            return
        start_ray(self.ray_options)
        for start in range(0, len(files), CHUNK_FILES):
            chunk = files[start : start + CHUNK_FILES]
            self._run_chunk(chunk, states, report)
            self._progress(Progress("embed", start + len(chunk), len(files)))
            if self.stop.is_set():
                break

    def _run_chunk(self, files: list[ScannedFile], states: dict[str, FileState], report: IngestReport) -> None:
        """Embed a chunk on Ray, then write it: its rows in one append, moves, deletions, failures."""
        items = []
        for f in files:
            stored = states.get(f.path)
            caption, source = self._caption(f, None, stored)  # the image's own description comes later
            image_id = stored.id if stored else secrets.token_hex(8)  # a changed file keeps its id
            items.append({"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "id": image_id,
                          "caption": caption or "", "caption_source": source or ""})  # fmt: skip
        try:
            done = self._embedded(items)
            outcome = done.select_columns(["path", "hash", "failure"]).take_all()
        except ClipdexError:
            raise
        except Exception as exc:  # Ray's, Ray Data's or a worker's: one line, not a traceback
            raise ClipdexError(
                f"the Ray job failed ({first_line(exc)}); nothing of this chunk was written; run again, "
                "or --engine local, which records a file that crashes its decoder as a failure"
            ) from exc
        by_path = {f.path: f for f in files}
        failures, embedded, touched, stale = [], [], [], []
        for row in outcome:
            f, stored = by_path[row["path"]], states.get(row["path"])
            if row["failure"] and not is_uri(f.path) and not os.path.lexists(f.path):
                report.vanished += 1  # deleted since the scan
            elif row["failure"]:
                failures.append(Failure(f.path, row["failure"], f.size, f.mtime_ns, datetime.now(UTC)))
            elif stored is not None and stored.hash == row["hash"]:
                touched.append(Moved(stored.id, f.path, f.size, f.mtime_ns))  # mtime changed only: keep the row
                continue
            else:
                embedded.append(f.path)
                report.added += stored is None
                report.updated += stored is not None
            if stored is not None:
                stale.append(stored.id)  # its row shows content that is gone, or is replaced below
                report.removed += bool(row["failure"])
        # Old rows go right before their replacements: a kill between the two commits loses no
        # file (the next run embeds it again, as new) and never leaves two rows for a path.
        self.collection.delete(stale)
        skip = {t.path for t in touched}
        self.collection.append_dataset(done.map_batches(_stored_rows, fn_kwargs={"skip": skip}, batch_format="pyarrow"))
        self.collection.move(touched)
        report.unchanged += len(touched)
        self.collection.clear_failures(embedded + [t.path for t in touched])
        self._fail(report, failures)

    def _embedded(self, items: list[dict[str, Any]]) -> Any:
        """Decode in tasks, embed in actors: the materialized rows (and failures) of these files."""
        import ray  # noqa: PLC0415 - optional dependency

        opts = self.ray_options
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)  # type: ignore[no-untyped-call]
        blocks = max(1, math.ceil(len(items) / DECODE_BATCH))  # one decode task per block
        with warnings.catch_warnings():
            # A small change (fewer files than actors) leaves actors idle; Ray warns about that.
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            return (
                ray.data.from_items(items, override_num_blocks=blocks)
                .map_batches(
                    _decode_batch,  # type: ignore[arg-type]
                    batch_size=DECODE_BATCH,
                    fn_kwargs={"transform": self.encoder.transform, "max_pixels": self.options.max_pixels},
                    num_cpus=DECODE_CPUS,
                    # A decoded 12 MP photo takes ~36 MB. Resources unlike the actors' also keep Ray
                    # Data from fusing decoding into the encoder actors (which would decode serially).
                    memory=DECODE_MEMORY,
                )
                .map_batches(
                    _Embedder,
                    batch_size=self.encoder.batch_size,
                    fn_constructor_kwargs={"spec": self.spec, "fingerprint": self.encoder.fingerprint.to_json()},
                    compute=ray.data.ActorPoolStrategy(size=opts.workers),
                    num_cpus=opts.cpus_per_worker or _default_actor_cpus(opts, cluster_cpus),
                    num_gpus=opts.gpus_per_worker or None,
                    batch_format="numpy",
                )
                .materialize()  # vectors only (a few KB per image): the pixels were streamed
            )


def _default_actor_cpus(opts: RayOptions, cluster_cpus: float) -> float:
    """With GPUs one CPU feeds each actor; on CPUs, half the cluster encodes and half decodes.

    Whole CPUs where there are enough (torch gets that many threads), else a share: actors that
    ask for more than the cluster has beside the decode tasks would starve them and hang the job.
    """
    if opts.gpus_per_worker:
        return 1.0
    share = cluster_cpus / 2 / opts.workers
    return float(int(share)) if share >= 1 else max(0.1, share)


def _decode_batch(batch: dict[str, np.ndarray], transform: ImageTransform, max_pixels: int) -> dict[str, Any]:
    """Decode a batch of files in a Ray task: the planned columns plus the image facts and pixels."""
    results = [decode_file(str(p), transform, max_pixels) for p in batch["path"]]
    shape = (*transform.size, 3)
    out: dict[str, Any] = dict(batch)
    out["failure"] = np.array([r.reason if isinstance(r, DecodeFailed) else "" for r in results], dtype=object)
    ok = [r if isinstance(r, Decoded) else None for r in results]
    out["hash"] = np.array([r.hash if r else "" for r in ok], dtype=object)
    out["width"] = np.array([r.width if r else 0 for r in ok], dtype=np.int32)
    out["height"] = np.array([r.height if r else 0 for r in ok], dtype=np.int32)
    out["format"] = np.array([r.format if r else "" for r in ok], dtype=object)
    out["taken_at"] = np.array([r.taken_at.isoformat() if r and r.taken_at else "" for r in ok], dtype=object)
    out["description"] = np.array([(r.description or "") if r else "" for r in ok], dtype=object)
    zeros = np.zeros(shape, np.uint8)  # what ImageTransform.to_pixels makes
    out["pixels"] = np.stack([r.pixels if r and r.pixels is not None else zeros for r in ok])
    return out


class _Embedder:
    """A Ray actor holding one encoder; turns decoded batches into image rows (or failures)."""

    def __init__(self, spec: EncoderSpec, fingerprint: str) -> None:
        self.encoder = models.load_encoder(spec)
        if self.encoder.fingerprint.to_json() != fingerprint:
            # Every actor must embed with the collection's model: never mix vectors.
            raise ClipdexError(f"a worker loaded {self.encoder.fingerprint.label}, not the collection's model")
        self.dimension = self.encoder.dimension

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = [i for i, failure in enumerate(batch["failure"]) if not failure]
        vectors = self.encoder.embed_pixels(batch["pixels"][ok]) if ok else np.zeros((0, self.dimension))
        captions = [_caption(batch, i) for i in ok]
        texts = [c for c, _ in captions if c]
        text_vectors = iter(self.encoder.embed_texts(texts)) if texts else iter(())
        records = []
        for i, vector, (caption, source) in zip(ok, vectors, captions, strict=True):
            taken_at = batch["taken_at"][i]
            decoded = Decoded(
                path=str(batch["path"][i]),
                hash=str(batch["hash"][i]),
                size=int(batch["size"][i]),
                width=int(batch["width"][i]),
                height=int(batch["height"][i]),
                format=str(batch["format"][i]),
                taken_at=datetime.fromisoformat(taken_at) if taken_at else None,
                description=str(batch["description"][i]) or None,
                pixels=None,
            )
            caption_vector = next(text_vectors) if caption else None
            records.append(
                decoded.record(
                    str(batch["id"][i]),
                    size=int(batch["size"][i]),
                    mtime_ns=int(batch["mtime_ns"][i]),
                    vector=vector,
                    caption=(caption, source, caption_vector),
                )
            )
        table = _loose(records_table(records, self.dimension))
        failed = [i for i in range(len(batch["path"])) if batch["failure"][i]]
        failures = pa.Table.from_pylist(
            [{"path": str(batch["path"][i]), "failure": str(batch["failure"][i])} for i in failed],
            schema=pa.schema([pa.field("path", pa.string()), pa.field("failure", pa.string())]),
        )
        return pa.concat_tables([table.append_column("failure", pa.nulls(len(table), pa.string())), failures],
                                promote_options="default")  # fmt: skip


def _caption(batch: dict[str, np.ndarray], i: int) -> tuple[str | None, str | None]:
    """The planned caption (manifest, sidecar), else the image's own description."""
    if batch["caption"][i]:
        return str(batch["caption"][i]), str(batch["caption_source"][i])
    if batch["description"][i]:
        return str(batch["description"][i]), "embedded"
    return None, None


def _loose(table: pa.Table) -> pa.Table:
    """The same columns, all nullable, so that failure rows (no vector) fit beside image rows."""
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


def _stored_rows(batch: pa.Table, skip: set[str]) -> pa.Table:
    """The embedded rows of a batch to store (not those in skip), without the failure column."""
    keep = pc.and_(
        pc.is_null(batch["failure"]), pc.invert(pc.is_in(batch["path"], pa.array(sorted(skip), pa.string())))
    )
    return batch.filter(keep).drop_columns(["failure"])
