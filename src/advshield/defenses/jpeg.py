"""JPEG compression defense: a real Pillow encode/decode, with a differentiable JPEG (kornia) as BPDA substitute."""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..checks import check_number
from ..registry import DEFENSES
from .base import Defense

_KORNIA_JPEG: Callable | None | bool = False  # False: not looked up yet


def kornia_jpeg() -> Callable | None:
    """``kornia.enhance.jpeg_codec_differentiable`` if kornia (extra ``transforms``) is importable, else None."""
    global _KORNIA_JPEG
    if _KORNIA_JPEG is False:
        try:
            from kornia.enhance import jpeg_codec_differentiable
        except Exception:  # ImportError, or a kornia incompatible with this torch
            _KORNIA_JPEG = None
        else:
            _KORNIA_JPEG = jpeg_codec_differentiable
    return _KORNIA_JPEG  # type: ignore[return-value]


def pillow_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of one uint8 image (H×W grayscale or H×W×3 RGB) with Pillow's default settings."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(  # uint8 H×W → "L", H×W×3 → "RGB"
        buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L" if image.ndim == 2 else "RGB"))


@DEFENSES.register("jpeg", "JPEG compression at a given quality (Pillow)")
class JPEG(Defense):
    """JPEG encode/decode per image with Pillow after quantising to 8 bits (``round(255·x)``).

    3 channels are coded as an RGB image (Pillow's default 4:2:0 chroma subsampling), any other channel count as
    separate grayscale ("L") images per channel. Runs on the CPU; the result returns to the input's device and
    dtype, in multiples of 1/255.

    Args: ``quality`` (1–100, default 75). Not differentiable (no autograd through Pillow); not randomized.
    BPDA substitute: kornia's differentiable JPEG (``jpeg_codec_differentiable``, Reich et al. 2024) at the same
    quality when kornia is installed (extra ``transforms``, kornia ≥ 0.7.3; a single channel is replicated to
    RGB and the first channel taken back), else the identity.
    """

    name = "jpeg"
    differentiable = False
    randomized = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        self.quality = int(check_number(quality, "quality", low=1, high=100, integer=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        u8 = torch.round(x.detach().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        if c == 3:
            out = np.stack([pillow_jpeg(im.transpose(1, 2, 0), self.quality).transpose(2, 0, 1) for im in u8])
        else:
            out = np.stack([[pillow_jpeg(ch, self.quality) for ch in im] for im in u8])
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        codec = kornia_jpeg()
        if codec is None:
            return x
        quality = torch.tensor([float(self.quality)], dtype=x.dtype, device=x.device)
        n, c, h, w = x.shape
        if c == 3:
            return codec(x.clamp(0, 1), quality)
        gray = x.clamp(0, 1).reshape(n * c, 1, h, w).expand(-1, 3, -1, -1)
        return codec(gray, quality)[:, :1].reshape(n, c, h, w)
