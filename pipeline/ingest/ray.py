"""Ingest on a Ray cluster (``--engine ray``): local ingest's plan, with the heavy work in Ray Data jobs.

The driver scans, compares with the collection and finds moved files exactly as local ingest
does (pipeline.ingest.plan, .sync). Then each chunk of files to embed is one Ray Data job: decode tasks
(Pillow, PyAV and numpy, no torch; DECODE_BATCH photos or one video each) feed a fixed pool of
encoder actors (one per GPU, or a share of the CPUs each), and lance-ray writes the rows from the
workers and commits them once per chunk, so an interrupted run keeps every finished chunk.
A photo is one row through the job, a video one row per moment: its moments go to the actors in
the same batches as photos. Outcomes come back to the driver (a path, a hash, a reason for a
failure) and are settled as local ingest settles them.

Files are read where the tasks run: s3:// and gs:// sources work anywhere, local paths only where
every node sees them at the same path (a shared mount).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import models
from models import EncoderSpec, ImageTransform
from pipeline.config import default_workers
from pipeline.errors import ClipdexError, EngineError, first_line
from pipeline.ingest.decode import Decoded, DecodeFailed, decode_file
from pipeline.ingest.embed import Target, embed_decoded
from pipeline.ingest.local import LocalEngine
from pipeline.ingest.pool import DecodePool
from pipeline.ingest.progress import Progress
from pipeline.ingest.scan import ScannedFile
from pipeline.ingest.sync import Sync, finish_writes
from pipeline.ingest.video import DecodedVideo, Moment, Sampling, decode_media, is_video
from storage import IndexSpec, conform, records_table

if TYPE_CHECKING:
    from storage import Collection

# Rows per Ray job, and so per commit (what an interrupted run can lose): a photo is one row, a
# video counts as --video-max-frames rows (its moments at most), so that the job's vectors held
# until the commit, and its outcome rows, stay bounded whatever the mix.
CHUNK_ROWS = 20_000
DECODE_BATCH = 16  # photos per decode task (a video has a task of its own)
DECODE_CPUS = 0.5  # a decode task's CPU share: tasks must fit beside the encoder actors
# Bytes a decode task may need: one large photo at a time, or one video's decoder (a 4K frame
# pool) and its moments (held twice briefly, as they come back from the decode process; at the
# default 300 moments of 224 x 224 x 3 bytes, 45 MB each time).
DECODE_MEMORY = 512 * 2**20
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
        raise EngineError("--engine ray needs Ray and lance-ray: pip install 'clipdex[ray]'") from exc
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
        raise EngineError(
            f"--ray-address {options.address}: cannot connect ({first_line(exc)}); "
            "check that the cluster is up (ray status) and the address"
        ) from exc
    logging.getLogger("ray").setLevel(logging.WARNING)  # configured by ray.init: quiet it after
    logging.getLogger("ray.data").setLevel(logging.ERROR)


class RayEngine:
    """Embeds a plan's files in Ray Data jobs, one commit per chunk of CHUNK_FILES."""

    def __init__(self, spec: EncoderSpec, options: RayOptions) -> None:
        self.spec = spec
        self.options = options

    def embed(self, files: list[ScannedFile], sync: Sync) -> None:
        """Each chunk: decode in tasks, embed in actors, write from the workers, settle on the driver."""
        if not files or sync.stop.is_set():
            return
        start_ray(self.options)
        done = 0
        for chunk in chunks(files, sync.options.video.max_frames):
            self._run_chunk(chunk, sync)
            done += len(chunk)
            sync.progress(Progress("embed", done, len(files)))
            if sync.stop.is_set():
                break

    def finish(self, collection: Collection, index_threshold: int, changed: bool) -> str:
        """The index built and the fragments compacted by Ray tasks."""
        workers = self.options.workers
        return finish_writes(
            collection,
            index_threshold,
            changed,
            build=lambda uri, spec: build_index(uri, spec, workers),
            compact=lambda uri: lance_ray().compact_files(uri, num_workers=workers),
        )

    def _run_chunk(self, files: list[ScannedFile], sync: Sync) -> None:
        """Embed a chunk on Ray, then write it: its rows in one append, then touched rows and failures."""
        items = []
        for f in files:
            target = sync.target(f)
            caption, source = target.caption if target.caption is not None else ("", "")
            items.append({"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "id": target.id,
                          "caption": caption or "", "caption_source": source or "",
                          "planned": target.caption is not None, "stamp": target.stamp or ""})  # fmt: skip
        try:
            done = self._embedded(sync, items)
            # One row per file and block (a video's moments counted), not per moment, to the driver.
            outcome = done.map_batches(_file_outcomes, batch_format="pyarrow").take_all()
        except ClipdexError:
            raise
        except Exception as exc:  # Ray's, Ray Data's or a worker's (a decode task that died on a file)
            # The chunk is not lost: this machine's decode pool, which tells a file that crashes its
            # decoder from its bystanders, does it instead (the driver has read every file to scan it).
            sync.report.notes.append(
                f"the Ray job of {len(files)} files failed ({first_line(exc)}); they were ingested on this "
                "machine instead, where a file that crashes its decoder is recorded as a failure"
            )
            LocalEngine().embed(files, sync)
            return
        by_path = {f.path: f for f in files}
        outcomes = _merged_outcomes(outcome)
        embedded, skip = [], set()
        for path, file in outcomes.items():
            if sync.settle(by_path[path], file.failure, file.hash):
                embedded.append(path)
            else:
                skip.add(path)  # touched (mtime only): the stored rows stay; failed: no row is stored
        # Old rows go right before their replacements: a kill between the two commits loses no
        # file (the next run embeds it again, as new) and never leaves two rows (or two sets of a
        # video's moments) for a path.
        sync.collection.delete(sync.states[p].id for p in embedded if p in sync.states)
        append(sync.collection, done.map_batches(_stored_rows, fn_kwargs={"skip": skip}, batch_format="pyarrow"))
        sync.count_stored(embedded, {p: outcomes[p].moments for p in embedded})
        sync.commit()  # touched rows and failures

    def _embedded(self, sync: Sync, items: list[dict[str, Any]]) -> Any:
        """Decode in tasks, embed in actors: the materialized rows (and failures) of these files."""
        import ray  # noqa: PLC0415 - optional dependency

        engine = self.options
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)  # type: ignore[no-untyped-call]
        encoder = sync.encoder
        ingest = sync.options
        with warnings.catch_warnings():
            # A small change (fewer files than actors) leaves actors idle; Ray warns about that.
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            return (
                ray.data.from_arrow(decode_blocks(items))
                .map_batches(
                    _decode_batch,  # type: ignore[arg-type]
                    batch_size=None,  # a block each: DECODE_BATCH photos, or one video
                    fn_kwargs={
                        "transform": encoder.transform,
                        "max_pixels": ingest.max_pixels,
                        "sampling": ingest.video,
                    },
                    num_cpus=DECODE_CPUS,
                    # A decoded 12 MP photo takes ~36 MB. Resources unlike the actors' also keep Ray
                    # Data from fusing decoding into the encoder actors (which would decode serially).
                    memory=DECODE_MEMORY,
                )
                .map_batches(
                    _Embedder,
                    batch_size=encoder.batch_size,
                    fn_constructor_kwargs={"spec": self.spec, "fingerprint": encoder.fingerprint.to_json()},
                    compute=ray.data.ActorPoolStrategy(size=engine.workers),
                    num_cpus=engine.cpus_per_worker or _default_actor_cpus(engine, cluster_cpus),
                    num_gpus=engine.gpus_per_worker or None,
                    batch_format="numpy",
                )
                .materialize()  # vectors only (a few KB per row, CHUNK_ROWS at most): the pixels were streamed
            )


def lance_ray() -> Any:
    """The lance_ray module (an optional dependency, loaded for --engine ray only)."""
    import lance_ray as module  # noqa: PLC0415

    return module


def build_index(uri: str, spec: IndexSpec, workers: int) -> None:
    """Build the collection's vector index (storage's IndexSpec) in Ray tasks."""
    lance_ray().create_index(
        uri,
        spec.column,
        spec.kind,
        name=spec.name,
        metric=spec.metric,
        num_partitions=spec.num_partitions,
        num_workers=workers,
        sample_rate=spec.sample_rate,
    )


def append(collection: Collection, rows: Any, *, workers: int | None = None) -> None:
    """Append a Ray dataset of image rows (records_table's columns) to the images table, one commit.

    lance-ray writes the fragments in Ray tasks where the rows are, and the driver commits them:
    the rows never pass through this process. Columns added later (classify --store) are null.
    """
    schema = collection.table_schema()
    rows = rows.map_batches(conform, fn_kwargs={"schema": schema}, batch_format="pyarrow")
    with collection.writing():
        lance_ray().write_lance(rows, collection.dataset_uri(), mode="append", schema=schema, concurrency=workers)


def _default_actor_cpus(opts: RayOptions, cluster_cpus: float) -> float:
    """With GPUs one CPU feeds each actor; on CPUs, half the cluster encodes and half decodes.

    Whole CPUs where there are enough (torch gets that many threads), else a share: actors that
    ask for more than the cluster has beside the decode tasks would starve them and hang the job.
    """
    if opts.gpus_per_worker:
        return 1.0
    share = cluster_cpus / 2 / opts.workers
    return float(int(share)) if share >= 1 else max(0.1, share)


def chunks(files: list[ScannedFile], max_frames: int) -> Iterator[list[ScannedFile]]:
    """The files in jobs of CHUNK_ROWS rows at most (a video counted as max_frames rows), in order."""
    chunk: list[ScannedFile] = []
    rows = 0
    for f in files:
        weight = max_frames if is_video(f.path) else 1
        if chunk and rows + weight > CHUNK_ROWS:
            yield chunk
            chunk, rows = [], 0
        chunk.append(f)
        rows += weight
    if chunk:
        yield chunk


def decode_blocks(items: list[dict[str, Any]]) -> list[pa.Table]:
    """The blocks of a job's decode tasks: each video alone, first (a video takes as long as many
    photos, and its moments are many rows), then DECODE_BATCH photos each."""
    groups = [[item] for item in items if is_video(item["path"])]
    photos = [item for item in items if not is_video(item["path"])]
    groups += [photos[i : i + DECODE_BATCH] for i in range(0, len(photos), DECODE_BATCH)]
    return [pa.Table.from_pylist(group) for group in groups]


_video_pool: DecodePool | None = None  # one decode process per Ray worker, kept between its tasks


def decode_video_apart(path: str, transform: ImageTransform, max_pixels: int, sampling: Sampling) -> Any:
    """A video decoded in a child process of this Ray worker, as the local decode pool does it: a
    decoder stuck inside FFmpeg past pool.VIDEO_TIMEOUT_S, or one that crashes, is a failure of
    this file (its process replaced), never a hung or failed job."""
    global _video_pool  # noqa: PLW0603 - a process-wide pool, started on first use
    if _video_pool is None:
        _video_pool = DecodePool(1)
    (result,) = _video_pool.map(decode_media, [path], transform, max_pixels, sampling)  # the map run to its end
    return result


def _decode_batch(
    batch: dict[str, np.ndarray], transform: ImageTransform, max_pixels: int, sampling: Sampling
) -> Iterator[dict[str, Any]]:
    """Decode a block's files in a Ray task: the planned columns plus the facts and pixels, one row
    per photo or failure and one per video moment. A video's rows are yielded as soon as it is
    decoded, so no more than one video's moments are held."""
    rows: list[tuple[int, Decoded | DecodedVideo | DecodeFailed, Moment | None]] = []
    for i, path in enumerate(batch["path"]):
        if is_video(str(path)):
            result = decode_video_apart(str(path), transform, max_pixels, sampling)
        else:
            result = decode_file(str(path), transform, max_pixels)
        if isinstance(result, DecodedVideo):
            yield _decoded_rows(batch, [(i, result, moment) for moment in result.moments], transform)
        else:
            rows.append((i, result, None))
    if rows:
        yield _decoded_rows(batch, rows, transform)


def _decoded_rows(
    batch: dict[str, np.ndarray],
    rows: list[tuple[int, Decoded | DecodedVideo | DecodeFailed, Moment | None]],
    transform: ImageTransform,
) -> dict[str, Any]:
    """Columns of decoded rows: (row of the block, what decoding it gave, the moment of a video)."""
    out: dict[str, Any] = {name: column[[i for i, _, _ in rows]] for name, column in batch.items()}
    results = [r for _, r, _ in rows]
    out["failure"] = np.array([r.reason if isinstance(r, DecodeFailed) else "" for r in results], dtype=object)
    ok = [None if isinstance(r, DecodeFailed) else r for r in results]
    video = [r if isinstance(r, DecodedVideo) else None for r in results]
    out["hash"] = np.array([r.hash if r else "" for r in ok], dtype=object)
    out["width"] = np.array([r.width if r else 0 for r in ok], dtype=np.int32)
    out["height"] = np.array([r.height if r else 0 for r in ok], dtype=np.int32)
    out["format"] = np.array([r.format if r else "" for r in ok], dtype=object)
    out["taken_at"] = np.array([r.taken_at.isoformat() if r and r.taken_at else "" for r in ok], dtype=object)
    out["description"] = np.array(
        [r.description or "" if isinstance(r, Decoded) else "" for r in results], dtype=object
    )
    out["kind"] = np.array(["video" if is_video(str(p)) else "image" for p in out["path"]], dtype=object)
    out["timestamp"] = np.array([m.timestamp if m else np.nan for _, _, m in rows], dtype=np.float64)
    out["duration"] = np.array([v.duration if v else np.nan for v in video], dtype=np.float64)
    out["fps"] = np.array([v.fps if v and v.fps else np.nan for v in video], dtype=np.float64)
    out["codec"] = np.array([v.codec if v else "" for v in video], dtype=object)
    zeros = np.zeros((*transform.size, 3), np.uint8)  # what ImageTransform.to_pixels makes
    pixels = [m.pixels if m else r.pixels if isinstance(r, Decoded) else None for _, r, m in rows]
    out["pixels"] = np.stack([p if p is not None else zeros for p in pixels])
    return out


class _Embedder:
    """A Ray actor holding one encoder; turns decoded batches into image rows (or failures)."""

    def __init__(self, spec: EncoderSpec, fingerprint: str) -> None:
        self.encoder = models.load_encoder(spec)
        if self.encoder.fingerprint.to_json() != fingerprint:
            # Every actor must embed with the collection's model: never mix vectors.
            raise EngineError(f"a worker loaded {self.encoder.fingerprint.label}, not the collection's model")
        self.dimension = self.encoder.dimension

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = [i for i, failure in enumerate(batch["failure"]) if not failure]
        video_rows: dict[str, list[int]] = {}  # a video's rows in this batch (its other moments may be in others)
        for i in ok:
            if batch["kind"][i] == "video":
                video_rows.setdefault(str(batch["path"][i]), []).append(i)
        items: list[tuple[Decoded | DecodedVideo, Target]] = [
            (_decoded(batch, i), _target(batch, i)) for i in ok if batch["kind"][i] != "video"
        ]
        items += [(_video(batch, rows), _target(batch, rows[0])) for rows in video_rows.values()]
        embedded = embed_decoded(self.encoder, items)
        table = _loose(records_table(embedded.records, self.dimension))
        failed = [
            (str(batch["path"][i]), str(batch["failure"][i])) for i in range(len(batch["path"])) if batch["failure"][i]
        ]
        failed += [(f.path, f.reason) for f in embedded.failures]
        failures = pa.Table.from_pylist(
            [{"path": path, "hash": "", "failure": reason} for path, reason in failed],
            schema=pa.schema([pa.field("path", pa.string()), pa.field("hash", pa.string()),
                              pa.field("failure", pa.string())]),
        )  # fmt: skip
        return pa.concat_tables([table.append_column("failure", pa.nulls(len(table), pa.string())), failures],
                                promote_options="default")  # fmt: skip


def _facts(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """The file facts of row i of a decoded batch, as Decoded and DecodedVideo take them."""
    taken_at = batch["taken_at"][i]
    return {
        "path": str(batch["path"][i]),
        "hash": str(batch["hash"][i]),
        "size": int(batch["size"][i]),
        "width": int(batch["width"][i]),
        "height": int(batch["height"][i]),
        "format": str(batch["format"][i]),
        "taken_at": datetime.fromisoformat(taken_at) if taken_at else None,
    }


def _decoded(batch: dict[str, np.ndarray], i: int) -> Decoded:
    """Row i of a decoded batch as the Decoded that decode_file made in the task."""
    return Decoded(**_facts(batch, i), description=str(batch["description"][i]) or None, pixels=batch["pixels"][i])


def _video(batch: dict[str, np.ndarray], rows: list[int]) -> DecodedVideo:
    """A video's moments among a decoded batch's rows, as a DecodedVideo of those moments (whether a
    moment was taken at a cut is not carried through the job: nothing after decoding uses it)."""
    i = rows[0]
    fps = float(batch["fps"][i])
    return DecodedVideo(
        **_facts(batch, i),
        codec=str(batch["codec"][i]),
        duration=float(batch["duration"][i]),
        fps=None if math.isnan(fps) else fps,
        moments=tuple(Moment(float(batch["timestamp"][j]), batch["pixels"][j], scene=False) for j in rows),
    )


def _target(batch: dict[str, np.ndarray], i: int) -> Target:
    """Row i's planned Target (the driver's sync.target), carried through the job as columns."""
    caption = (str(batch["caption"][i]) or None, str(batch["caption_source"][i]) or None)
    return Target(
        id=str(batch["id"][i]),
        size=int(batch["size"][i]),
        mtime_ns=int(batch["mtime_ns"][i]),
        caption=caption if batch["planned"][i] else None,
        stamp=str(batch["stamp"][i]) or None,
    )


@dataclass
class _FileOutcome:
    """What a Ray job did with one file: its failure (None: embedded), its content hash, and the
    moments embedded (a video's)."""

    failure: str | None
    hash: str
    moments: int


OUTCOME_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("hash", pa.string()),
                            pa.field("failure", pa.string()), pa.field("moments", pa.int64())])  # fmt: skip


def _file_outcomes(block: pa.Table) -> pa.Table:
    """A block of the job's rows (photos, video moments, failures) as one row per file in it."""
    rows = block.select(["path", "hash", "failure", "kind"]).to_pylist()
    for row in rows:
        row["moments"] = int(row.pop("kind") == "video" and not row["failure"])
    merged = _merged_outcomes(rows)
    return pa.Table.from_pylist(
        [{"path": p, "hash": o.hash, "failure": o.failure, "moments": o.moments} for p, o in merged.items()],
        schema=OUTCOME_SCHEMA,
    )


def _merged_outcomes(rows: list[dict[str, Any]]) -> dict[str, _FileOutcome]:
    """Outcome rows (path, hash, failure, moments) by file: a video whose moments reached several
    actor batches has a row from each, and fails whole if any of them failed (a botched vector)."""
    merged: dict[str, _FileOutcome] = {}
    for row in rows:
        failure = row["failure"] or None
        known = merged.get(row["path"])
        if known is None:
            merged[row["path"]] = _FileOutcome(failure, row["hash"] or "", row["moments"])
            continue
        known.failure = known.failure or failure
        known.hash = known.hash or row["hash"] or ""
        known.moments += row["moments"]
    return merged


def _loose(table: pa.Table) -> pa.Table:
    """The same columns, all nullable, so that failure rows (no vector) fit beside image rows."""
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


def _stored_rows(batch: pa.Table, skip: set[str]) -> pa.Table:
    """The embedded rows of a batch to store (not those in skip), without the failure column."""
    keep = pc.and_(
        pc.is_null(batch["failure"]), pc.invert(pc.is_in(batch["path"], pa.array(sorted(skip), pa.string())))
    )
    return batch.filter(keep).drop_columns(["failure"])
