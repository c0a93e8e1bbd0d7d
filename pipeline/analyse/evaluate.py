"""Evaluation on a captioned folder: text-to-image and image-to-text recall@K, to compare models."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import Encoder
from pipeline.config import Settings
from pipeline.errors import NothingToDo
from pipeline.library import Clipdex
from storage import Collection

KS = (1, 5, 10)
# Below this many captioned images recall says little: by chance alone R@K is K/n, and one
# image more or less moves R@1 by 1/n.
MIN_CAPTIONED = 20


@dataclass(frozen=True)
class EvalReport:
    """Recall@K both ways over the captioned images of a folder."""

    model: str
    images: int
    text_to_image: dict[int, float]  # K -> share of captions whose image ranks in the top K
    image_to_text: dict[int, float]  # K -> share of images whose caption ranks in the top K
    chance: dict[int, float]  # K -> what a random ranking scores: min(1, K / images)
    warning: str | None = None  # set when there are too few captioned images for the figures to mean much


def evaluate(
    encoder: Encoder,
    folder: str | Path,
    *,
    captions: str | Path | Mapping[str, str] | None = None,
    ks: Sequence[int] = KS,
    workers: int = 0,
) -> EvalReport:
    """Ingest the folder into a throw-away collection and measure how well captions find their images."""
    with tempfile.TemporaryDirectory(prefix="clipdex-eval-") as tmp:
        fp = encoder.fingerprint
        collection = Collection.create(f"{tmp}/db", model=fp.to_json(), dimension=fp.dimension)
        Clipdex(collection, encoder, Settings(workers=workers)).ingest([folder], captions=captions)
        pairs = [(r["id"], r["caption"]) for r in collection.columns(["id", "caption"]) if r["caption"]]
        if not pairs:
            raise NothingToDo(f"{folder}: no captioned images; add sidecar .txt files or give --captions FILE")
        ids, vectors = collection.vectors([image_id for image_id, _ in pairs])
        order = {image_id: i for i, image_id in enumerate(ids)}
        images = vectors[[order[image_id] for image_id, _ in pairs]]
    texts = encoder.embed_texts([caption for _, caption in pairs])
    scores = texts @ images.T  # caption i against image j; the right image is j == i
    chance = {k: round(min(1.0, k / len(pairs)), 4) for k in ks}
    return EvalReport(
        model=fp.label,
        images=len(pairs),
        text_to_image=_recall(scores, ks),
        image_to_text=_recall(scores.T, ks),
        chance=chance,
        warning=few_images_warning(len(pairs), chance),
    )


def few_images_warning(images: int, chance: Mapping[int, float]) -> str | None:
    """A sentence saying the figures are not meaningful when fewer than MIN_CAPTIONED images had captions."""
    if images >= MIN_CAPTIONED:
        return None
    by_chance = ", ".join(f"R@{k} {v:.3f}" for k, v in chance.items())
    noun = "image" if images == 1 else "images"
    return (
        f"only {images} captioned {noun}: the figures are not meaningful (a random ranking scores {by_chance}); "
        f"caption at least {MIN_CAPTIONED} images to compare models"
    )


def _recall(scores: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Share of rows whose diagonal entry is among the K largest of its row (ties in its favour)."""
    right = np.diag(scores)[:, None]
    rank = (scores > right).sum(axis=1)  # how many candidates beat the right one
    return {k: round(float(np.mean(rank < k)), 4) for k in ks}
