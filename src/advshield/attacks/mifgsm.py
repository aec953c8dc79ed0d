"""MI-FGSM (Dong et al. 2018): signed steps along an accumulated, L1-normalised gradient."""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_number
from ..registry import ATTACKS
from .base import GradientAttack


def mean_abs_normalise(grad: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    """``grad`` N×… divided per sample by its mean absolute value (over all non-batch dims)."""
    scale = grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True)
    return grad / scale.clamp_min(tiny)


@ATTACKS.register("mifgsm", "momentum iterative FGSM: L1-normalised gradients accumulated with `decay` (Dong 2018)")
class MIFGSM(GradientAttack):
    """``MIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0, eot_iter=1)``; images N×C×H×W in [0,1],
    ``decay`` in [0,1].

    g ← ∇x CE / mean|∇x CE| (per sample); momentum ← decay·momentum + g; x ← x + alpha·sign(momentum), projected.
    The momentum buffer (one N×C×H×W tensor) lives only during a call. ``decay=0`` is plain I-FGSM.
    ``random_start`` (off, as in the paper): uniform in the L∞ ball. ``eot_iter``: ∇x CE averaged over that many
    forward passes of a randomized model, before the normalisation."""

    name = "mifgsm"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 1.0, seed: int | None = None, random_start: bool = False, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="linf",
                         seed=seed, eot_iter=eot_iter)
        self.decay = check_number(decay, "decay", low=0.0, high=1.0)
        self._momentum: torch.Tensor | None = None

    def reset(self) -> None:
        self._momentum = None

    def grad_transform(self, grad: torch.Tensor) -> torch.Tensor:
        return self.accumulate(grad)

    def accumulate(self, grad: torch.Tensor) -> torch.Tensor:
        """Momentum update; the identity when ``decay`` is 0 (only the sign of the result is used)."""
        if self.decay == 0:
            return grad
        g = mean_abs_normalise(grad)
        if self._momentum is not None:
            g = g + self._momentum * self.decay
        self._momentum = g
        return g

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "MIFGSM":
        """NRP supplement F: 10 steps of eps/10, decay 1.0."""
        return cls(model, eps=eps, **{"alpha": eps / 10, "steps": 10, "decay": 1.0, **kw})
