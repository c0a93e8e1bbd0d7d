"""What the pipeline needs from an encoder: a Protocol, and the fingerprint a collection records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from models.transform import ImageTransform


@dataclass(frozen=True)
class Fingerprint:
    """Everything that makes two encoders' vectors comparable; a collection stores one."""

    model: str  # architecture name, hf-hub: or local-dir: id
    pretrained: str  # tag or checkpoint path; empty for hf-hub:/local-dir:
    dimension: int
    preprocess: str  # ImageTransform.describe()

    @property
    def label(self) -> str:
        """'ViT-B-32 (laion2b_s34b_b79k), 512-d'."""
        name = f"{self.model} ({self.pretrained})" if self.pretrained else self.model
        return f"{name}, {self.dimension}-d"

    def to_json(self) -> str:
        """A stable JSON form, stored in the collection."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        """Parse what to_json wrote."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            model=str(data["model"]),
            pretrained=str(data["pretrained"]),
            dimension=int(data["dimension"]),
            preprocess=str(data["preprocess"]),
        )


class Encoder(Protocol):
    """Embeds images and texts into one space: L2-normalised float32 rows."""

    @property
    def fingerprint(self) -> Fingerprint: ...

    @property
    def transform(self) -> ImageTransform: ...

    @property
    def dimension(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed uint8 pixels of shape (n, height, width, 3), already resized by ``transform``."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images of any size."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts."""
        ...
