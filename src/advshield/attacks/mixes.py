"""Momentum + input-diversity (+ translation-invariance) mixes, as used for transfer attacks (NRP's "DIM", "DIM-TI").

Both default to decay 1.0 and diversity probability 0.7; every other argument (``eot_iter`` too) is as in DIFGSM /
TIFGSM."""
from __future__ import annotations

from torch import nn

from ..registry import ATTACKS
from .difgsm import DIFGSM
from .tifgsm import TIFGSM


@ATTACKS.register("mi-di", "momentum + input diversity (M-DI²-FGSM, 'DIM'): decay 1.0, diversity probability 0.7")
class MIDIFGSM(DIFGSM):
    """``MIDIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0, resize_rate=0.9, diversity_prob=0.7,
    random_start=False, eot_iter=1)``: :class:`DIFGSM` with momentum on."""

    name = "mi-di"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 1.0, resize_rate: float = 0.9, diversity_prob: float = 0.7,
                 random_start: bool = False, seed: int | None = None, resize_mode: str = "bilinear",
                 eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, resize_rate=resize_rate,
                         diversity_prob=diversity_prob, random_start=random_start, seed=seed,
                         resize_mode=resize_mode, eot_iter=eot_iter)


@ATTACKS.register("mi-di-ti", "momentum + input diversity + TI Gaussian smoothing ('DIM-TI'): decay 1.0, prob 0.7")
class MIDITIFGSM(TIFGSM):
    """``MIDITIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0, kernel_name="gaussian", len_kernel=15,
    nsig=3, resize_rate=0.9, diversity_prob=0.7, random_start=False, eot_iter=1)``: :class:`TIFGSM` with momentum
    on."""

    name = "mi-di-ti"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 1.0, kernel_name: str = "gaussian", len_kernel: int = 15, nsig: float = 3,
                 resize_rate: float = 0.9, diversity_prob: float = 0.7, random_start: bool = False,
                 seed: int | None = None, resize_mode: str = "bilinear", eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, kernel_name=kernel_name,
                         len_kernel=len_kernel, nsig=nsig, resize_rate=resize_rate,
                         diversity_prob=diversity_prob, random_start=random_start, seed=seed,
                         resize_mode=resize_mode, eot_iter=eot_iter)


DIM, DIMTI = MIDIFGSM, MIDITIFGSM

# The NRP paper's names; aliases resolve but are not listed (so "all attacks" runs each mix once).
ATTACKS.alias("dim", "mi-di")
ATTACKS.alias("dim-ti", "mi-di-ti")
