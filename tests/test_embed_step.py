"""The one embed step and what the layout promises around it: a vector the model botched is a
failure on every path (local ingest, reembed; Ray in test_ray.py), the index state is read again
when the table changes, honest search judges caption hits by their captions, errors in one line
(or with the traceback under CLIPDEX_DEBUG=1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import models
from pipeline import Clipdex
from pipeline.cli import cli
from pipeline.errors import FilesUnreadable
from pipeline.ingest.decode import Decoded, decode_file
from pipeline.ingest.embed import NON_FINITE, Target, embed_decoded
from pipeline.library import GENERIC_CAPTIONS
from pipeline.maintain.reembed import reembed
from pipeline.query import Term
from storage import BadFilter, Collection
from tests.conftest import open_library, run


def good_paths(photos: Path) -> set[str]:
    return {str(p) for p in (photos / "good").rglob("*") if p.is_file() and p.suffix != ".txt"}


def test_local_ingest_records_nan_vectors_as_failures(photos: Path, db: str, nan_model: str) -> None:
    lib = open_library(db, nan_model)
    report = lib.ingest([photos / "good"])
    assert (report.added, lib.collection.count()) == (0, 0)
    failed = {f.path: f.reason for f in lib.collection.failures()}
    assert set(failed) == good_paths(photos)
    assert set(failed.values()) == {NON_FINITE}
    assert lib.ingest([photos / "good"]).changed is False  # known failures: not decoded again


def test_reembed_with_a_nan_model_refuses_to_switch(photos: Path, db: str, tiny_model: str, nan_model: str) -> None:
    old = open_library(db, tiny_model)
    old.ingest([photos / "good"])
    before = old.collection.count()
    encoder = models.load_encoder(models.EncoderSpec(model=nan_model, device="cpu"))
    with pytest.raises(FilesUnreadable, match=r"stored files could not be read again .*NaN or infinity"):
        reembed(Collection.open(db), encoder)
    after = Collection.open(db)
    assert (after.model, after.count()) == (old.collection.model, before)  # still the old model, every row


class HalfNaN:
    """The tiny encoder, with the image vectors of every other image NaN."""

    def __init__(self, encoder: models.Encoder) -> None:
        self._encoder = encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        vectors = self._encoder.embed_pixels(pixels)
        vectors[::2] = np.nan
        return vectors


def test_one_bad_vector_does_not_sink_the_batch(photos: Path, tiny_model: str) -> None:
    encoder = models.load_encoder(models.EncoderSpec(model=tiny_model, device="cpu"))
    paths = sorted(good_paths(photos))[:6]
    images = []
    for i, path in enumerate(paths):
        decoded = decode_file(path, encoder.transform, 10**9)
        assert isinstance(decoded, Decoded)
        images.append((decoded, Target(f"id{i}", decoded.size, 1, ("a caption", "manifest"))))
    out = embed_decoded(HalfNaN(encoder), images)  # type: ignore[arg-type]
    assert [f.path for f in out.failures] == paths[::2]
    assert [r.path for r in out.records] == paths[1::2]
    assert [r.id for r in out.records] == ["id1", "id3", "id5"]
    assert all(r.caption == "a caption" and r.caption_vector is not None for r in out.records)
    assert all(np.isfinite(r.vector).all() for r in out.records)


def test_a_reader_sees_an_index_built_after_it_opened(lib: Clipdex, db: str) -> None:
    reader = Collection.open(db)
    assert reader.has_index() is False
    assert Collection.open(db).ensure_index(1) == "built"
    assert reader.has_index() is True


def test_honest_judges_caption_hits_by_their_captions(lib: Clipdex, photos: Path) -> None:
    photo = str(photos / "good" / "photo.jpg")
    (photos / "good" / "photo.txt").write_text("a dog on the beach")
    lib.ingest([photos / "good"])
    query = lib.embed_text("a dog on the beach")
    generic = np.stack([lib.embed_text(t) for t in GENERIC_CAPTIONS])
    ids, captions = lib.collection.vectors(column="caption_vector")
    beats = {i for i, v in zip(ids, captions, strict=True) if v @ query > (v @ generic.T).max()}
    hits = lib.query([Term("a dog on the beach")], target="caption", k=50, honest=True)
    assert (hits[0].path, hits[0].matched, hits[0].score) == (photo, "caption", 1.0)  # its caption is the query
    assert {h.id for h in hits} == beats


def test_user_errors_are_one_line_unless_debugging(lib: Clipdex, db: str) -> None:
    result = run("search", "x", "--where", "widht > 3", "--db", db, ok=False)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    debug = CliRunner().invoke(cli, ["search", "x", "--where", "widht > 3", "--db", db], env={"CLIPDEX_DEBUG": "1"})
    assert isinstance(debug.exception, BadFilter)  # raised, traceback and all
