"""The model's image preprocessing, in Pillow and numpy so decode workers never import torch.

It reproduces open_clip's eval transform (resize, centre crop or pad) step for step, so the
pixels equal those of ``open_clip.create_model_and_transforms(...)[2]``; normalisation by
mean and std happens on the encoder side, in the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


MAX_ASPECT = 16  # resize_mode "shortest": crop images longer than this (relative to the input) first


@dataclass(frozen=True)
class ImageTransform:
    """Resize and crop an RGB image to the model's input, as open_clip's eval transform does."""

    size: tuple[int, int] = (224, 224)  # (height, width) of the model input
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # bicubic or bilinear
    resize_mode: str = "shortest"  # shortest (then crop), longest (then pad), squash
    fill_color: int = 0  # padding for resize_mode=longest

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> ImageTransform:
        """Build from open_clip's preprocess_cfg dict."""
        size = cfg.get("size", 224)
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
        mean = (mean,) * 3 if isinstance(mean, (int, float)) else mean
        std = (std,) * 3 if isinstance(std, (int, float)) else std
        interpolation = cfg.get("interpolation") or "bicubic"
        return cls(
            size=hw,
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            # open_clip treats 'random' as bicubic at inference.
            interpolation="bilinear" if interpolation == "bilinear" else "bicubic",
            resize_mode=cfg.get("resize_mode") or "shortest",
            fill_color=int(cfg.get("fill_color", 0)),
        )

    def describe(self) -> str:
        """A compact, stable description, part of the model fingerprint."""
        return ",".join(f"{k}={v}" for k, v in asdict(self).items())

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest (width, height) a JPEG may be draft-decoded to without changing the result."""
        th, tw = self.size
        if self.resize_mode == "squash":
            return min(width, tw), min(height, th)
        ratios = (th / height, tw / width)
        scale = min(ratios) if self.resize_mode == "longest" else max(ratios)
        return min(width, math.ceil(width * scale)), min(height, math.ceil(height * scale))

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        """Resize and crop to the model input: uint8 array of shape (height, width, 3)."""
        th, tw = self.size
        if self.resize_mode == "shortest":
            image = _crop_extreme(image, th, tw)
        w, h = image.size
        resample = _RESAMPLE[self.interpolation]
        if self.resize_mode == "squash":
            image = image.resize((tw, th), resample)
        elif self.resize_mode == "shortest" and th == tw:
            # torchvision Resize(int): the short side to size, the long side truncated.
            short, long = min(w, h), max(w, h)
            new_short, new_long = th, int(th * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample)
        else:
            # open_clip's ResizeKeepRatio: scale by the min (shortest) or max (longest) ratio.
            ratios = (h / th, w / tw)
            ratio = max(ratios) if self.resize_mode == "longest" else min(ratios)
            new_h, new_w = round(h / ratio), round(w / ratio)
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return _center_crop_or_pad(np.asarray(image), th, tw, self.fill_color)


def _crop_extreme(image: Image.Image, th: int, tw: int) -> Image.Image:
    """The centre of an image far longer than wide (or wider than high), at most MAX_ASPECT times the
    model's input aspect: resizing its short side to the input would otherwise make a long side of
    millions of pixels (a 1 x 20000 PNG of 121 bytes: 3 GB), of which the centre crop keeps a sliver.
    The kept centre is the same; only images beyond MAX_ASPECT take this path."""
    w, h = image.size
    if w * th > MAX_ASPECT * h * tw:  # too wide
        keep = max(1, round(h * tw / th * MAX_ASPECT))
        left = (w - keep) // 2
        return image.crop((left, 0, left + keep, h))
    if h * tw > MAX_ASPECT * w * th:  # too tall
        keep = max(1, round(w * th / tw * MAX_ASPECT))
        top = (h - keep) // 2
        return image.crop((0, top, w, top + keep))
    return image


def _center_crop_or_pad(pixels: np.ndarray, th: int, tw: int, fill: int) -> np.ndarray:
    """torchvision's center_crop (and open_clip's CenterCropOrPad): pad short sides, then crop."""
    h, w = pixels.shape[:2]
    if th > h or tw > w:
        top, left = max(th - h, 0) // 2, max(tw - w, 0) // 2
        padded = np.full((max(h, th), max(w, tw), 3), fill, dtype=np.uint8)
        padded[top : top + h, left : left + w] = pixels
        pixels, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)
    return np.array(pixels[top : top + th, left : left + tw])  # a writable copy
