"""Zero-shot tags: the best of a set of labels for every image, by the text tower, storable."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models import Encoder
from pipeline.errors import BadOption

if TYPE_CHECKING:
    from storage import Collection

DEFAULT_PROMPT = "a photo of a {}"


@dataclass(frozen=True)
class Tag:
    """The best label for one image, with its cosine score."""

    id: str
    path: str
    label: str
    score: float


RESERVED = {
    "cluster",
    "cluster_name",
    "select",
    "where",
    "from",
    "and",
    "or",
    "not",
    "null",
    "true",
    "false",
    "in",
    "like",
}


def _check_column(collection: Collection, name: str) -> None:
    """A tag column: a new or earlier tag column, never a built-in one; checked before anything is written."""
    builtin = set(collection.column_names()) - collection.extra_columns()
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name) or name in RESERVED or name.endswith("_score"):
        raise BadOption(f"--store {name!r}: use lowercase letters, digits and _ (not a SQL word), e.g. --store tag")
    if name in builtin or f"{name}_score" in builtin:
        raise BadOption(f"--store {name!r} is a built-in column; choose another name, e.g. --store tag")


def classify(
    collection: Collection,
    encoder: Encoder,
    labels: Sequence[str],
    *,
    prompt: str = DEFAULT_PROMPT,
    store: str | None = None,
) -> list[Tag]:
    """Label every image with the best-matching label; with store=COLUMN, keep them in the collection
    (COLUMN and COLUMN_score, usable in --where)."""
    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) < 2:
        raise BadOption("--labels needs at least two labels, e.g. --labels 'cat,dog,car'")
    if prompt.count("{}") != 1:
        raise BadOption(f"--prompt {prompt!r} needs exactly one {{}} for the label, e.g. 'a photo of a {{}}'")
    if len(set(labels)) != len(labels):
        raise BadOption("--labels has a label twice; give each once")
    if store is not None:
        _check_column(collection, store)
    texts = encoder.embed_texts([prompt.replace("{}", label) for label in labels])
    ids, vectors = collection.vectors()
    paths = {r["id"]: r["path"] for r in collection.columns(["id", "path"])}
    scores = vectors @ texts.T if len(ids) else np.zeros((0, len(labels)), np.float32)
    best = scores.argmax(axis=1) if len(ids) else np.zeros(0, int)
    tags = [
        Tag(image_id, paths[image_id], labels[int(b)], round(float(scores[i, b]), 4))
        for i, (image_id, b) in enumerate(zip(ids, best, strict=True))
    ]
    if store is not None and tags:
        with collection.writer("classify --store"):
            collection.set_labels(store, {t.id: (t.label, t.score) for t in tags})
    return sorted(tags, key=lambda t: t.path)
