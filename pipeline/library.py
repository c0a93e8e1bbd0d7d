"""The Python API: a collection and the encoder that fills and queries it."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import models
from models import DEFAULT_MODEL, DEFAULT_PRETRAINED, Encoder, EncoderSpec, Fingerprint
from pipeline.analyse.duplicates import BURST_SECONDS, NEAR, SIMILAR, DuplicateGroup, find_duplicates
from pipeline.config import TARGETS, Settings, load_settings
from pipeline.errors import BadOption, BadQuery, BadQueryImage, EngineError, InputNotFound, ModelMismatch
from pipeline.ingest.captions import read_manifest
from pipeline.ingest.decode import DecodeFailed, decode_file
from pipeline.ingest.local import LocalEngine
from pipeline.ingest.plan import IngestOptions
from pipeline.ingest.progress import Progress, ProgressFn
from pipeline.ingest.sources import is_uri
from pipeline.ingest.sync import Engine, Ingester, IngestReport
from pipeline.ingest.video import DEFAULT_INTERVAL_S, DEFAULT_MAX_FRAMES, Sampling
from pipeline.maintain.export import ExportReport
from pipeline.maintain.export import export as export_rows
from pipeline.maintain.verify import VerifyReport, verify
from pipeline.maintain.verify import repair as run_repair
from pipeline.query import Term, parse_terms
from storage import Collection, CollectionNotFound, Hit, Moment, Stats
from storage.collection import IndexState
from storage.filters import sql_str

TEXT_CACHE_SIZE = 1024
KINDS = ("image", "video")  # --kind
MOMENTS_PER_VIDEO = 20  # other matching moments listed per video hit (--moments)
MAX_FETCH = 10_000  # rows a search reads at most while gathering k distinct files
# Captions that fit any picture: a result must match the query better than these to count.
GENERIC_CAPTIONS = ("a photo", "an image", "a picture", "a photo of something", "a blurry photo")
_COLUMNS = {"image": ("vector",), "caption": ("caption_vector",), "both": ("vector", "caption_vector")}


class Clipdex:
    """Ingest folders into a collection and search it by text or image.

    >>> lib = Clipdex.open("~/photos.clipdex", model="local-dir:/models/tiny", create=True)
    >>> lib.ingest(["~/Pictures"]).added
    >>> [hit.path for hit in lib.search("a dog on the beach", k=5)]
    """

    def __init__(
        self,
        collection: Collection,
        encoder: Encoder | EncoderSpec,
        settings: Settings | None = None,
    ) -> None:
        """encoder: a loaded encoder, or the spec of one, loaded the first time a vector is needed
        (so a bad filter or a missing file is answered before any model loads)."""
        self.collection = collection
        self.settings = settings or Settings()
        self._encoder: Encoder | None = None
        self._spec: EncoderSpec | None = None
        self._encoder_lock = threading.Lock()
        if isinstance(encoder, EncoderSpec):
            self._spec = encoder
        else:
            self._adopt(encoder)
        # A long-lived process (a server, a notebook) asks the same words again and again.
        self._text_vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def encoder(self) -> Encoder:
        """The collection's encoder, loaded on first use."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    assert self._spec is not None
                    self._adopt(models.load_encoder(self._spec))
        assert self._encoder is not None
        return self._encoder

    def _adopt(self, encoder: Encoder) -> None:
        stored = Fingerprint.from_json(self.collection.model)
        if stored != encoder.fingerprint:
            raise ModelMismatch(_mismatch(self.collection.uri, stored, _asked(stored, encoder.fingerprint)))
        self._encoder = encoder

    @classmethod
    def open(
        cls,
        db: str | Path | None = None,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        runtime: str | None = None,
        create: bool = False,
        settings: Settings | None = None,
    ) -> Clipdex:
        """Open the collection at db (created when create=True) with its model, or the one named.

        Arguments left as None come from ``settings`` (default: config file and CLIPDEX_* variables).
        """
        settings = (settings or load_settings()).override(
            db=str(db) if db is not None else None,
            model=model,
            pretrained=pretrained,
            device=device,
            precision=precision,
            batch_size=batch_size,
            runtime=runtime,
        )
        uri = settings.db_uri
        try:
            collection: Collection | None = Collection.open(uri)
        except CollectionNotFound:
            if not create:
                raise
            collection = None
        stored = Fingerprint.from_json(collection.model) if collection else None
        spec = encoder_spec(settings, stored)
        if stored and (spec.model, spec.pretrained) != (stored.model, stored.pretrained):
            # Refuse before loading (or downloading) a model the collection cannot use.
            raise ModelMismatch(_mismatch(uri, stored, spec.label))
        if collection is not None:
            return cls(collection, spec, settings)  # the model loads when a vector is needed
        encoder = models.load_encoder(spec)  # torch and open_clip only where the runtime is torch
        fingerprint = encoder.fingerprint
        collection = Collection.create(uri, model=fingerprint.to_json(), dimension=fingerprint.dimension)
        return cls(collection, encoder, settings)

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        captions: str | Path | Mapping[str, str] | None = None,
        retry_failed: bool = False,
        prune_empty: bool = False,
        progress: ProgressFn | None = None,
        stop: threading.Event | None = None,
        video_interval: float | None = None,
        video_max_frames: int | None = None,
        command: str = "ingest",
    ) -> IngestReport:
        """Bring the collection in line with these folders and files (new, changed, moved, deleted).

        captions: a CSV / JSON Lines manifest (or its parsed form, from read_manifest).
        prune_empty: remove stored rows under a root that yields no images at all, which is
        otherwise taken for an unmounted drive.
        stop: set it (from a signal handler, another thread) to stop after the batch being written;
        the report then says interrupted, and the next run does the rest.
        video_interval: a video moment at least every this many seconds (default 2); video_max_frames:
        moments per video at most (default 300), spread over the whole video.
        command: what holds the collection's lock meanwhile, as another writer is told ("watch").
        Raises CollectionBusy when another process is writing to the collection.
        """
        roots = []
        for path in paths:
            if is_uri(str(path)):
                roots.append(str(path).rstrip("/"))
                continue
            root = os.path.abspath(os.path.expanduser(str(path)))
            if not os.path.lexists(root):
                raise InputNotFound(f"{root} does not exist; check the path to ingest")
            # One spelling per file: a symlinked root is stored under its real path.
            roots.append(os.path.realpath(root))
        manifest = read_manifest(captions) if isinstance(captions, (str, Path)) else captions
        sampling = video_sampling(video_interval, video_max_frames)
        s = self.settings
        options = IngestOptions(
            include=s.include,
            exclude=s.exclude,
            max_pixels=s.max_pixels,
            workers=s.decode_workers,
            captions=manifest,
            retry_failed=retry_failed,
            prune_empty=prune_empty,
            commit_rows=s.commit_rows,
            follow_links=s.follow_links,
            video=sampling,
        )
        engine: Engine = LocalEngine()
        if s.engine == "ray":
            engine = self._ray_engine()
            # Hashing files to find moves stays here, in this machine's decode processes.
            options = dataclasses.replace(options, workers=Settings().decode_workers)
        ingester = Ingester(self.collection, lambda: self.loaded_encoder(progress), options, engine, stop)
        with self.collection.writer(command):
            report = ingester.run(roots, progress)
            if not report.interrupted:
                ingester.finish(s.index_threshold, report)
                self.collection.record_ingest(roots, datetime.now(UTC), report.changed)
        return report

    def loaded_encoder(self, progress: ProgressFn | None = None) -> Encoder:
        """The encoder, loaded now if it is not yet, said to progress (phase 'model') while it loads:
        seconds, even minutes for a first download, that would otherwise look like a hang."""
        if self._encoder is not None or self._spec is None or progress is None:
            return self.encoder
        progress(Progress("model", 0, 1, self._spec.label))
        encoder = self.encoder
        progress(Progress("model", 1, 1, self._spec.label))
        return encoder

    def _ray_engine(self) -> Engine:
        from pipeline.ingest.ray import RayEngine, RayOptions, start_ray  # noqa: PLC0415 - Ray is optional

        s = self.settings
        if s.ray_address and not is_uri(self.collection.uri):
            # lance-ray writes data files on whichever node holds the rows: a folder on this
            # machine would end up with files on other machines' disks.
            raise EngineError(
                f"--db {self.collection.uri}: on a Ray cluster the collection must be on object storage "
                "(--db s3://bucket/prefix); leave out --ray-address to use a local Ray with a local folder"
            )
        ray_options = RayOptions(s.ray_address, s.encoder_actors, s.gpus_per_worker, s.cpus_per_worker)
        start_ray(ray_options)  # before any lance-ray call, which would start a Ray of its own
        return RayEngine(encoder_spec(s, self.encoder.fingerprint), ray_options)

    def verify(self, *, repair: bool = False, progress: ProgressFn | None = None) -> VerifyReport:
        """Check every row against its file and every vector (pipeline.maintain.verify); with repair, fix
        what is off: rows of deleted files go, files whose rows are off are ingested again."""
        workers = self.settings.decode_workers
        if not repair:
            return verify(self.collection, workers=workers, progress=progress)

        def reingest(paths: list[str]) -> int:
            # Read again even when size and mtime match (the bytes changed under them); a stored
            # row keeps its id and caption, a removed one comes back as new.
            options = IngestOptions(
                workers=workers, max_pixels=self.settings.max_pixels, prune=False, force=frozenset(paths)
            )
            report = Ingester(self.collection, lambda: self.encoder, options, LocalEngine()).run(paths, progress)
            return report.added + report.updated

        with self.collection.writer("verify --repair"):  # before reading: the report must stay true
            report = verify(self.collection, workers=workers, progress=progress)
            rolled_back = []
            if any(p.kind == "damaged" for p in report.problems):
                # Back to versions that read; then the files tell what those versions lack.
                rolled_back = self.collection.repair_damage()
                damaged = [p for p in report.problems if p.kind == "damaged"]
                report = verify(self.collection, workers=workers, progress=progress)
                report.problems[:0] = damaged
            report.rolled_back = rolled_back
            return report if report.ok else run_repair(self.collection, report, reingest)

    def search(
        self,
        text: str,
        *,
        k: int | None = None,
        where: str | None = None,
        min_score: float | None = None,
        target: str = "image",
        kind: str | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """Images (and video moments) that match a text, best first; target 'image', 'caption' or
        'both' vectors; kind 'image' or 'video' keeps only those; see search_vector for videos."""
        if not text.strip():
            raise BadQuery("the search text is empty; give some words, e.g. clipdex search 'a dog'")
        self.check_request(where, target, kind)
        vector = self.embed_text(text)
        return self.search_vector(
            vector, k=k, where=where, min_score=min_score, target=target, kind=kind, moments=moments
        )

    def query(
        self,
        terms: Sequence[Term | str | Path] | str,
        *,
        k: int | None = None,
        where: str | None = None,
        min_score: float | None = None,
        target: str = "image",
        within: float | None = None,
        honest: bool = False,
        kind: str | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """Images that match a weighted mix of texts, image files and stored images, best first.

        >>> lib.query([Term("beach"), Term("photo.jpg", kind="image"), Term("crowd", -1.0)])

        Stored images named by id are left out of the results. within keeps hits scoring at most
        that much below the best one; honest drops images that match a generic caption ("a photo")
        at least as well as the query's texts, so an unrelated result is not shown as a match.
        terms may also be plain strings, parsed as the CLI parses its arguments ("beach", "+",
        "./photo.jpg", "-", "crowd", or one string "beach + ./photo.jpg"), and Paths (images).
        """
        terms = as_terms(terms)
        self.check_request(where, target, kind)
        for term in terms:
            if term.kind == "image":
                _check_image_file(term.value)
        vector = self.query_vector(terms)
        files = [self._file_of(t.value) for t in terms if t.kind == "id"]
        hits = self.search_vector(
            vector,
            k=k,
            where=where,
            min_score=min_score,
            target=target,
            exclude_files=files,
            kind=kind,
            moments=moments,
        )
        if within is not None and hits:
            hits = [h for h in hits if h.score >= hits[0].score - within]
        if honest and hits and any(t.kind == "text" and t.weight > 0 for t in terms):
            hits = self._beat_the_baseline(hits, vector)
        return hits

    def _beat_the_baseline(self, hits: list[Hit], vector: np.ndarray) -> list[Hit]:
        """Hits closer to the query than to any generic caption: the query says something about them.

        Each hit is judged by the vectors that scored it (its image's, or its caption's).
        """
        generic = np.stack([self.embed_text(text) for text in GENERIC_CAPTIONS])
        column = {"image": "vector", "caption": "caption_vector"}
        keep = set()
        for matched, name in column.items():
            wanted = [h.id for h in hits if h.matched == matched]
            if not wanted:
                continue
            ids, vectors = self.collection.vectors(wanted, column=name)
            beats = vectors @ vector > (vectors @ generic.T).max(axis=1)
            keep |= {(i, matched) for i, ok in zip(ids, beats, strict=True) if ok}
        return [h for h in hits if (h.id, h.matched) in keep]

    def query_vector(self, terms: Sequence[Term]) -> np.ndarray:
        """The unit vector of a weighted sum of the terms' vectors."""
        if not terms:
            raise BadQuery("the query has no terms; give some words or an image")
        total = np.zeros(self.encoder.dimension, np.float32)
        for term in terms:
            total += term.weight * self._term_vector(term)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise BadQuery("the query's terms cancel each other out; change a weight or drop a term")
        result: np.ndarray = total / norm
        return result

    def _term_vector(self, term: Term) -> np.ndarray:
        if term.kind == "image":
            return self.embed_image(term.value)
        if term.kind == "id":
            record = self.collection.get(term.value)
            if record is None:
                raise InputNotFound(f"--id {term.value}: no image with this id; ids are in search --json output")
            return record.vector
        return self.embed_text(term.value)

    def similar(
        self,
        image: str | Path,
        *,
        k: int | None = None,
        where: str | None = None,
        min_score: float | None = None,
        kind: str | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """Images and video moments like an image file anywhere on disk, best first."""
        self.check_request(where, kind=kind)
        vector = self.embed_image(image)
        return self.search_vector(vector, k=k, where=where, min_score=min_score, kind=kind, moments=moments)

    def similar_to(
        self,
        image_id: str,
        *,
        k: int | None = None,
        where: str | None = None,
        min_score: float | None = None,
        kind: str | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """Images and moments like a stored image or video moment, best first; the file it belongs
        to (a moment's whole video) is left out of the results."""
        self.check_request(where, kind=kind)
        record = self.collection.get(image_id)
        if record is None:
            raise InputNotFound(f"--id {image_id}: no image with this id; ids are in the output of search --json")
        return self.search_vector(
            record.vector,
            k=k,
            where=where,
            min_score=min_score,
            exclude_files=[record.file_id or record.id],
            kind=kind,
            moments=moments,
        )

    def _file_of(self, row_id: str) -> str:
        """The file a stored row belongs to (an image's own id; a moment's video)."""
        record = self.collection.get(row_id, vectors=False)
        return (record.file_id or record.id) if record is not None else row_id

    def check_request(self, where: str | None, target: str = "image", kind: str | None = None) -> None:
        """Refuse a bad target, kind or filter before any vector is computed (BadQuery, BadFilter)."""
        if target not in TARGETS:
            raise BadQuery(f"--target {target}: choose one of {', '.join(TARGETS)}")
        if kind is not None and kind not in KINDS:
            raise BadQuery(f"--kind {kind}: choose one of {', '.join(KINDS)}")
        if where:
            self.collection.check_filter(where)

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int | None = None,
        where: str | None = None,
        min_score: float | None = None,
        target: str = "image",
        exclude_ids: Sequence[str] = (),
        exclude_files: Sequence[str] = (),
        kind: str | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """The nearest images to a query vector, best first.

        A video counts once, at its best moment (the hit's timestamp); moments=True adds its other
        matching moments (up to MOMENTS_PER_VIDEO, by time) as hit.moments. kind 'image' or 'video'
        keeps only those rows; exclude_files leaves out whole files (a video's every moment).
        """
        if target not in TARGETS:
            raise BadQuery(f"--target {target}: choose one of {', '.join(TARGETS)}")
        k = k or self.settings.k
        min_score = self.settings.min_score if min_score is None else min_score
        where = _with_kind(where, kind)
        fetch = k
        while True:
            best: dict[str, Hit] = {}  # the best hit per file
            full = False  # a search gave all it was asked for: there may be more files beyond
            for column in _COLUMNS[target]:
                hits = self.collection.search(
                    vector,
                    column=column,
                    k=fetch,
                    where=where,
                    min_score=min_score,
                    exclude_ids=exclude_ids,
                    exclude_files=exclude_files,
                )
                full = full or len(hits) == fetch
                for hit in hits:
                    key = hit.file_id or hit.id
                    if key not in best or hit.score > best[key].score:
                        best[key] = hit
            # A video's moments can fill the first k rows: ask for more until k files are found.
            if len(best) >= k or not full or fetch >= MAX_FETCH:
                break
            fetch = min(fetch * 4, MAX_FETCH)
        ranked = sorted(best.values(), key=lambda h: -h.score)[:k]
        if moments:
            ranked = [self._with_moments(h, vector, where, min_score, target) for h in ranked]
        return ranked

    def _with_moments(
        self, hit: Hit, vector: np.ndarray, where: str | None, min_score: float | None, target: str
    ) -> Hit:
        """A video hit with its other matching moments, by time (an image hit as it is)."""
        if hit.kind != "video":
            return hit
        own = f"file_id = {sql_str(hit.file_id)}"
        scoped = f"({where}) AND {own}" if where else own
        found: dict[str, Moment] = {}
        for column in _COLUMNS[target]:
            for m in self.collection.search(
                vector, column=column, k=MOMENTS_PER_VIDEO, where=scoped, min_score=min_score
            ):
                if m.id != hit.id and m.timestamp is not None and (m.id not in found or m.score > found[m.id].score):
                    found[m.id] = Moment(m.id, m.timestamp, m.score)
        return dataclasses.replace(hit, moments=tuple(sorted(found.values(), key=lambda m: m.timestamp)))

    def embed_text(self, text: str) -> np.ndarray:
        """The vector of a text (the last TEXT_CACHE_SIZE texts are remembered)."""
        vector = self._text_vectors.get(text)
        if vector is None:
            vector = self.encoder.embed_texts([text])[0]
            self._text_vectors[text] = vector
            if len(self._text_vectors) > TEXT_CACHE_SIZE:
                self._text_vectors.popitem(last=False)
        else:
            self._text_vectors.move_to_end(text)
        return vector.copy()

    def embed_image(self, path: str | Path) -> np.ndarray:
        """The vector of an image file, decoded exactly as ingest decodes it."""
        _check_image_file(path)  # before the model loads
        return embed_image_file(self.encoder, path, self.settings.max_pixels)

    def stats(self) -> Stats:
        """Counts and facts about the collection."""
        return self.collection.stats()

    def details(self) -> Details:
        """What `clipdex info` tells beyond the counts: size on disk, roots, last ingest, indexes."""
        return _details(self.collection)

    def export(
        self,
        out: str | Path,
        *,
        format: str | None = None,
        where: str | None = None,
        force: bool = False,
    ) -> ExportReport:
        """Write every row (or those matching where) with its metadata and vectors to out, as
        parquet, csv or npy (pipeline.maintain.export; format None: from out's suffix), streamed
        so memory stays flat. An existing out is replaced only with force."""
        return export_rows(self.collection, out, format=format, where=where, force=force)

    def duplicates(
        self, *, near: float = NEAR, similar: float = SIMILAR, burst_seconds: float = BURST_SECONDS
    ) -> list[DuplicateGroup]:
        """Groups of duplicates with their keepers (pipeline.analyse.duplicates.find_duplicates)."""
        return find_duplicates(self.collection, near=near, similar=similar, burst_seconds=burst_seconds)


def video_sampling(interval: float | None, max_frames: int | None) -> Sampling:
    """How moments are taken from videos; BadOption for values that cannot work."""
    if interval is not None and not (math.isfinite(interval) and interval > 0):
        raise BadOption(f"--video-interval {interval:g}: give seconds above 0, e.g. --video-interval 2")
    if max_frames is not None and max_frames < 1:
        raise BadOption(f"--video-max-frames {max_frames}: give at least 1, e.g. --video-max-frames 300")
    return Sampling(
        interval=DEFAULT_INTERVAL_S if interval is None else float(interval),
        max_frames=DEFAULT_MAX_FRAMES if max_frames is None else int(max_frames),
    )


def as_terms(terms: Sequence[Term | str | Path] | str) -> list[Term]:
    """Terms from Term objects, Paths (images) and strings in the CLI's query syntax ("beach",
    "2:beach", "+", "-", or one string "a dog + ./photo.jpg - crowd")."""
    items: list[Term | str | Path] = []
    for item in [terms] if isinstance(terms, str) else terms:
        if isinstance(item, str):
            items += [w for w in re.split(r"\s+([+-])\s+", item.strip()) if w]
        else:
            items.append(item)
    out: list[Term] = []
    sign = 1.0
    for item in items:
        if item in ("+", "-"):
            sign = -1.0 if item == "-" else 1.0
            continue
        if isinstance(item, Term):
            term = item
        elif isinstance(item, Path):
            term = Term(str(item), 1.0, "image")
        else:
            (term,) = parse_terms([item])
        out.append(dataclasses.replace(term, weight=sign * term.weight))
        sign = 1.0
    if not out:
        raise BadQuery("the query has no terms; give some words or an image")
    return out


def _with_kind(where: str | None, kind: str | None) -> str | None:
    """The filter, narrowed to one kind of row (image, or video moments)."""
    if kind is None:
        return where
    clause = f"kind = {sql_str(kind)}"
    return f"({where}) AND {clause}" if where else clause


def _check_image_file(path: str | Path) -> str:
    """The absolute path of an existing file, or InputNotFound."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise InputNotFound(f"{path} does not exist; give the path of an image file")
    return path


def embed_image_file(encoder: Encoder, path: str | Path, max_pixels: int) -> np.ndarray:
    """Decode an image file as ingest does and embed it."""
    path = _check_image_file(path)
    result = decode_file(path, encoder.transform, max_pixels)
    if isinstance(result, DecodeFailed) or result.pixels is None:
        reason = result.reason if isinstance(result, DecodeFailed) else "no pixels"
        raise BadQueryImage(f"{path}: {reason}")
    vector: np.ndarray = encoder.embed_pixels(result.pixels[None])[0]
    return vector


def encoder_spec(settings: Settings, stored: Fingerprint | None = None) -> EncoderSpec:
    """The model to load: the one named, else the collection's own, else the default."""
    model = settings.model or (stored.model if stored else DEFAULT_MODEL)
    if model.startswith("local-dir:"):
        model = "local-dir:" + os.path.abspath(os.path.expanduser(model.removeprefix("local-dir:")))
    pretrained = settings.pretrained
    if not pretrained:
        if stored and stored.model == model:
            pretrained = stored.pretrained
        elif model == DEFAULT_MODEL:
            pretrained = DEFAULT_PRETRAINED
    if pretrained and os.path.exists(os.path.expanduser(pretrained)):
        pretrained = os.path.abspath(os.path.expanduser(pretrained))  # a checkpoint file
    return EncoderSpec(
        model=model,
        pretrained=pretrained or "",
        device=settings.device,
        precision=settings.precision,
        batch_size=settings.batch_size,
        runtime=settings.runtime,
    )


def collection_info(db: str | None = None, settings: Settings | None = None) -> Stats:
    """Stats of a collection, without loading a model."""
    settings = (settings or load_settings()).override(db=db)
    return Collection.open(settings.db_uri).stats()


@dataclasses.dataclass(frozen=True)
class Details:
    """What `clipdex info` tells beyond the counts."""

    disk_bytes: int | None  # the collection folder, every kept version included; None on object storage
    roots: tuple[str, ...]  # the folders and prefixes ever ingested
    last_ingest: datetime | None  # when the last complete ingest finished (UTC)
    indexes: tuple[IndexState, ...]  # none until index_threshold images: exact search


def collection_details(db: str | None = None, settings: Settings | None = None) -> tuple[Stats, Details]:
    """Stats of a collection and the details `clipdex info` shows, without loading a model."""
    settings = (settings or load_settings()).override(db=db)
    collection = Collection.open(settings.db_uri)
    return collection.stats(), _details(collection)


def _details(collection: Collection) -> Details:
    roots, last = collection.ingest_history()
    return Details(collection.disk_bytes(), tuple(roots), last, tuple(collection.index_states()))


def _asked(stored: Fingerprint, asked: Fingerprint) -> str:
    if (stored.model, stored.pretrained, stored.dimension) == (
        asked.model,
        asked.pretrained,
        asked.dimension,
    ):
        return f"{asked.label} with other preprocessing ({asked.preprocess})"
    return asked.label


def _mismatch(uri: str, stored: Fingerprint, what: str) -> str:
    flags = f"--model {stored.model}" + (f" --pretrained {stored.pretrained}" if stored.pretrained else "")
    return (
        f"--db {uri} holds vectors of {stored.label}, not {what}; "
        f"use {flags} (or leave --model out), or a new --db for the other model"
    )
