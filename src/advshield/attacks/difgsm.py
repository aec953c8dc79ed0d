"""DI-FGSM (Xie et al. 2019): gradients taken through a random resize-and-pad of the image (input diversity)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .mifgsm import MIFGSM

RESIZE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def _cpu_randint(low: int, high: int) -> int:
    """A uniform int in [low, high) from torch's CPU generator (seeded by the attack; no device sync)."""
    return int(torch.randint(low, high, (1,)))


def input_diversity(x: torch.Tensor, resize_rate: float = 0.9, diversity_prob: float = 0.5,
                    mode: str = "bilinear") -> torch.Tensor:
    """With probability ``diversity_prob``: resize ``x`` (N×C×H×W) to a random size, then zero-pad it at a
    random offset; otherwise return ``x`` unchanged. The whole batch shares one draw.

    ``resize_rate < 1``: new side in [int(side·rate), side), padded back to ``side`` (output shape = input).
    ``resize_rate > 1``: new side in [side, int(side·rate)), padded to int(side·rate) (output larger).
    Offsets are drawn in [0, remainder) per axis. A square image uses one size for both sides. Random numbers
    come from torch's CPU generator (no host-device copies) in torchattacks' order: size, top, left, then the
    apply-or-not draw, so a seeded run consumes the generator as torchattacks' DI does."""
    if diversity_prob <= 0 or resize_rate == 1:
        return x
    h, w = x.shape[-2:]

    def bounds(side: int) -> tuple[int, int]:
        scaled = int(side * resize_rate)
        return (max(scaled, 1), side) if resize_rate < 1 else (side, scaled)

    (lo_h, out_h), (lo_w, out_w) = bounds(h), bounds(w)
    if lo_h >= out_h or lo_w >= out_w:  # image too small for any size change
        return x
    new_w = _cpu_randint(lo_w, out_w)
    new_h = new_w if (lo_h, out_h) == (lo_w, out_w) else _cpu_randint(lo_h, out_h)
    top, left = _cpu_randint(0, out_h - new_h), _cpu_randint(0, out_w - new_w)
    if float(torch.rand(1)) >= diversity_prob:
        return x
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(x, size=(new_h, new_w), mode=mode, **kw)
    return F.pad(resized, (left, out_w - new_w - left, top, out_h - new_h - top), value=0.0)


@ATTACKS.register("difgsm", "iterative FGSM through random resize+pad of the input (input diversity, Xie 2019)")
class DIFGSM(MIFGSM):
    """``DIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=0.0, resize_rate=0.9, diversity_prob=0.5,
    random_start=False, eot_iter=1)``; images N×C×H×W in [0,1], eps/alpha in [0,1] units; ``resize_rate`` > 0
    (< 1 shrinks, > 1 enlarges), ``diversity_prob`` in [0,1].

    Each step's gradient is taken through :func:`input_diversity`; momentum as MI-FGSM when ``decay`` > 0;
    ``random_start``: uniform in the L∞ ball. ``resize_mode`` is the interpolation (torchattacks 3.5 uses
    bilinear; older releases nearest). With ``resize_rate > 1`` the model must accept the larger size.
    ``eot_iter``: each step's gradient averaged over that many draws (a fresh input diversity and model draw each)."""

    name = "difgsm"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 0.0, resize_rate: float = 0.9, diversity_prob: float = 0.5,
                 random_start: bool = False, seed: int | None = None, resize_mode: str = "bilinear",
                 eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, seed=seed, random_start=random_start,
                         eot_iter=eot_iter)
        self.resize_rate = check_number(resize_rate, "resize_rate", low=0.0, low_open=True)
        self.diversity_prob = check_number(diversity_prob, "diversity_prob", low=0.0, high=1.0)
        if resize_mode not in RESIZE_MODES:
            raise AdvshieldError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, not {resize_mode!r}")
        self.resize_mode = resize_mode

    def input_transform(self, x_adv: torch.Tensor) -> torch.Tensor:
        return input_diversity(x_adv, self.resize_rate, self.diversity_prob, self.resize_mode)

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "DIFGSM":
        """NRP supplement F: 10 steps of eps/10, diversity probability 0.7 (decay: the class default)."""
        return cls(model, eps=eps, **{"alpha": eps / 10, "steps": 10, "diversity_prob": 0.7, **kw})
