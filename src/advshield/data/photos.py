"""A small pool of natural photos that ship inside the scikit-image and scikit-learn wheels (no download).

Used as clean, label-free training material for purifiers (via :func:`random_crops`) and for quick demos.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import DataError
from .folder import convert_channels, resize, size_pair, to_uint8
from .tensors import TensorDataset

# Natural photographs bundled with scikit-image (documents, drawings, masks and synthetic images left out).
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "moon", "rocket", "brick",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry")


def _skimage_photos() -> list[np.ndarray] | None:
    try:
        import skimage.data as skd
    except ImportError:
        return None
    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            out.append(np.asarray(getattr(skd, name)()))
        except Exception:  # absent from this version, or it would need a download: skip it
            continue
    return out


def _sklearn_photos() -> list[np.ndarray] | None:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return None
    try:
        return [np.asarray(a) for a in load_sample_images().images]  # china, flower
    except Exception:
        return []


@functools.lru_cache(maxsize=1)
def _raw_photos() -> tuple[np.ndarray, ...]:
    """uint8 H×W or H×W×3 arrays, scikit-image's first then scikit-learn's."""
    found = [_skimage_photos(), _sklearn_photos()]
    if all(f is None for f in found):
        raise DataError("the photo pool needs scikit-image or scikit-learn (pip install scikit-image)")
    photos = tuple(a for f in found if f for a in f if a.dtype == np.uint8 and a.ndim in (2, 3))
    if not photos:
        raise DataError("no bundled photos could be loaded from scikit-image or scikit-learn")
    return photos


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 H×W[×C] → float32 C×H×W in [0,1] (alpha, if any, dropped)."""
    a = a[:, :, None] if a.ndim == 2 else a[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def resize_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Scale float C×H×W (bilinear) so it covers ``size`` = (H, W), then take the centre crop of that size."""
    h, w = size_pair(size)
    scale = max(h / x.shape[1], w / x.shape[2])
    sh, sw = max(h, math.ceil(x.shape[1] * scale - 1e-6)), max(w, math.ceil(x.shape[2] * scale - 1e-6))
    x = resize(x, (sh, sw))
    top, left = (sh - h) // 2, (sw - w) // 2
    return x[:, top : top + h, left : left + w].contiguous()


def photo_pool(channels: int = 3, size: int | tuple[int, int] | None = None) -> list[torch.Tensor]:
    """The bundled photos as float32 C×H×W in [0,1]: native sizes, or resized and centre-cropped to ``size``."""
    out = []
    for a in _raw_photos():
        x = convert_channels(_to_tensor(a), channels)
        out.append(resize_crop(x, size) if size is not None else x)
    return out


def photo_pool_dataset(size: int | tuple[int, int] = (128, 128), channels: int = 3) -> TensorDataset:
    """The pool as a uint8 N×C×H×W :class:`TensorDataset` named "photos" (labels -1, no classes)."""
    images = torch.stack([to_uint8(x) for x in photo_pool(channels, size)])
    return TensorDataset(images, torch.full((len(images),), -1, dtype=torch.int64), classes=[], name="photos")


def random_crops(images: list[torch.Tensor] | torch.Tensor, size: int | tuple[int, int], n: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random crops (image chosen uniformly, then a uniform position) → n×C×size×size, same dtype.

    All images must have the same channel count and be at least ``size`` in both dimensions. The result
    depends only on ``generator``'s state.
    """
    h, w = size_pair(size)
    if len(images) == 0:
        raise DataError("random_crops needs at least one image")
    chans = {int(x.shape[0]) for x in images}
    if len(chans) > 1:
        raise DataError(f"random_crops needs images with one channel count, got {sorted(chans)}")
    for k, x in enumerate(images):
        if x.shape[1] < h or x.shape[2] < w:
            raise DataError(f"image {k} is {x.shape[1]}×{x.shape[2]}, smaller than the {h}×{w} crop")
    out = torch.empty(n, chans.pop(), h, w, dtype=images[0].dtype)
    idx = torch.randint(len(images), (n,), generator=generator)
    for j in range(n):
        x = images[int(idx[j])]
        top = int(torch.randint(x.shape[1] - h + 1, (1,), generator=generator))
        left = int(torch.randint(x.shape[2] - w + 1, (1,), generator=generator))
        out[j] = x[:, top : top + h, left : left + w]
    return out
