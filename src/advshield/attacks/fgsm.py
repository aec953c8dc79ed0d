"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps."""
from __future__ import annotations

from torch import nn

from ..registry import ATTACKS
from .base import GradientAttack


@ATTACKS.register("fgsm", "one signed-gradient step of size eps (Goodfellow et al. 2015)")
class FGSM(GradientAttack):
    """``FGSM(model, eps=8/255, eot_iter=1)``: x + eps·sign(∇x CE), clipped to [0,1]; with ``eot_iter`` > 1 the
    gradient is averaged over that many forward passes of a randomized model."""

    name = "fgsm"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=eps, steps=1, random_start=False, norm="linf", seed=seed,
                         eot_iter=eot_iter)

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "FGSM":
        return cls(model, eps=eps, **kw)
