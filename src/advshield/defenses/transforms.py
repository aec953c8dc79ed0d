"""Cheap input-transform baselines: bit-depth reduction, median filter, Gaussian blur, random resize & pad.

All map N×C×H×W images in [0,1] (any C, H, W, device, float dtype) to the same shape in [0,1]. JPEG and TVM
live in :mod:`.jpeg` and :mod:`.tvm`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import check_number
from ..errors import AdvshieldError
from ..registry import DEFENSES
from ..utils import mix
from .base import Defense


def _pad_reflect(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two dims by ``r`` on every side: mirror padding without repeating the edge (torch "reflect",
    scipy "mirror") when the image is larger than ``r``, edge replication otherwise (tiny images)."""
    if r == 0:
        return x
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (r, r, r, r), mode=mode)


MAX_WINDOW = 101  # largest median window / blur kernel (pixels): bigger ones only burn memory


class _SelfSubstitute(Defense):
    """For defenses whose own forward is differentiable: BPDA is plain autograd through forward
    (one call, so a randomized defense uses the same random draw for value and gradient)."""

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


@DEFENSES.register("bit-depth", "feature squeezing: reduce colour depth to b bits (Xu et al. 2018)")
class BitDepth(Defense):
    """Bit-depth reduction (Xu et al. 2018): ``round(x·(2^b−1)) / (2^b−1)``.

    Args: ``bits`` (1–8, default 4). Not differentiable (the gradient is zero almost everywhere); not
    randomized; BPDA substitute: identity.
    """

    name = "bit-depth"
    differentiable = False
    randomized = False

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        self.bits = int(check_number(bits, "bits", low=1, high=8, integer=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels


@DEFENSES.register("median", "per-channel median filter (feature squeezing, Xu et al. 2018)")
class Median(Defense):
    """Per-channel median filter over a ``window``×``window`` neighbourhood with reflect padding (the edge pixel
    is not repeated; scipy's ``mode="mirror"``), vectorised with ``unfold``.

    Args: ``window`` (odd, 1–101, default 3). Differentiable (autograd routes the gradient to the selected pixel, so it
    is sparse); not randomized; BPDA substitute: identity.
    """

    name = "median"
    differentiable = True
    randomized = False

    def __init__(self, window: int = 3) -> None:
        super().__init__()
        self.window = int(check_number(window, "window", low=1, high=MAX_WINDOW, integer=True))
        if self.window % 2 == 0:
            raise AdvshieldError(f"window must be a positive odd integer, not {window!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.window
        if k == 1:
            return x
        n, c, h, w = x.shape
        patches = _pad_reflect(x, k // 2).unfold(2, k, 1).unfold(3, k, 1)  # N×C×H×W×k×k
        return patches.reshape(n, c, h, w, k * k).median(dim=-1).values


def gaussian_kernel1d(sigma: float, size: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Sampled Gaussian of standard deviation ``sigma`` pixels on ``size`` (odd) taps, normalised to sum 1."""
    if sigma == 0:
        k = torch.zeros(size, dtype=dtype, device=device)
        k[size // 2] = 1
        return k
    t = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


@DEFENSES.register("gaussian-blur", "Gaussian blur with reflect padding")
class GaussianBlur(_SelfSubstitute):
    """Separable Gaussian blur per channel (depthwise conv), reflect padding (scipy ``mode="mirror"``).

    Args: ``sigma`` in pixels (0–16.7, default 1.0; 0 = identity), ``kernel_size`` (odd, ≤ 101; default
    ``2·ceil(3σ)+1``).
    Differentiable; not randomized; BPDA substitute: the blur itself (BPDA = plain autograd).
    """

    name = "gaussian-blur"
    differentiable = True
    randomized = False

    def __init__(self, sigma: float = 1.0, kernel_size: int | None = None) -> None:
        super().__init__()
        sigma = check_number(sigma, "sigma", low=0.0, high=(MAX_WINDOW - 1) / 6)
        if kernel_size is None:
            size = 2 * math.ceil(3 * sigma) + 1
        else:
            size = int(check_number(kernel_size, "kernel_size", low=1, high=MAX_WINDOW, integer=True))
            if size % 2 == 0:
                raise AdvshieldError(f"kernel_size must be a positive odd integer, not {kernel_size!r}")
        self.sigma = float(sigma)
        self.kernel_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if k == 1:
            return x
        n, c, h, w = x.shape
        g = gaussian_kernel1d(self.sigma, k, dtype=x.dtype, device=x.device)
        y = _pad_reflect(x, k // 2).reshape(n * c, 1, h + k - 1, w + k - 1)
        y = F.conv2d(F.conv2d(y, g.view(1, 1, 1, k)), g.view(1, 1, k, 1))
        return y.reshape(n, c, h, w).clamp(0, 1)


@DEFENSES.register("resize-pad", "random resize and zero-pad, resized back (Xie et al. 2018)")
class RandomResizePad(_SelfSubstitute):
    """Random resizing and padding (R&P, Xie et al. 2018), with the output resized back to the input size.

    Per image: draw ``s`` uniformly from the integers in ``[H, round(H·max_scale)]``, resize to ``s × s_w``
    (``s_w = round(W·s/H)``, same aspect ratio) with nearest-neighbour interpolation (as Xie et al.), zero-pad at a
    uniformly random offset to ``round(H·max_scale) × round(W·max_scale)``, then resize back to H×W (bilinear).
    Adaptation: Xie et al. feed the larger padded image to the network; advshield keeps the shape so the defense
    fits in front of any classifier. Each image of a batch gets its own size and offset.

    Args: ``max_scale`` (1–8, default 1.15), ``seed`` (None: torch's global RNG; an int: a private
    ``torch.Generator``, so two instances with the same seed produce the same sequence of draws).
    Differentiable (interpolation and padding); randomized (attack with EOT); BPDA substitute: itself.
    """

    name = "resize-pad"
    differentiable = True
    randomized = True

    def __init__(self, max_scale: float = 1.15, seed: int | None = None) -> None:
        super().__init__()
        self.max_scale = check_number(max_scale, "max_scale", low=1.0, high=8.0)
        self.seed = None if seed is None else int(check_number(seed, "seed", integer=True))
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def restart_noise(self, stream: int) -> None:
        """Restart the seeded draws at the stream (own seed, ``stream``); unseeded: nothing (global RNG)."""
        if self.generator is not None:
            self.generator.manual_seed(mix(self.seed, stream))

    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (inclusive), drawn on the CPU."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        big_h, big_w = round(h * self.max_scale), round(w * self.max_scale)
        outs = []
        for i in range(n):
            sh = self._randint(h, big_h)
            sw = min(big_w, max(w, round(w * sh / h)))
            top, left = self._randint(0, big_h - sh), self._randint(0, big_w - sw)
            y = F.interpolate(x[i : i + 1], size=(sh, sw), mode="nearest-exact")
            y = F.pad(y, (left, big_w - sw - left, top, big_h - sh - top))
            outs.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(outs).clamp(0, 1)
