"""R+FGSM (Tramèr et al. 2018): a random signed step of size alpha, then signed-gradient steps of eps − alpha."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import AdvshieldError
from ..registry import ATTACKS
from .base import GradientAttack


@ATTACKS.register("rfgsm", "random signed step of alpha, then `steps` signed-gradient steps of eps−alpha (Tramèr 2018)")
class RFGSM(GradientAttack):
    """``RFGSM(model, eps=8/255, alpha=2/255, steps=10, eot_iter=1)``; images N×C×H×W in [0,1], eps/alpha in [0,1]
    units.

    Start: x + alpha·sign(N(0,1)) clipped to [0,1]; each step adds (eps − alpha)·sign(∇x CE) and projects onto
    the eps-ball. With ``steps=1`` this is the original R+FGSM. (torchattacks 3.5 steps by ``alpha`` instead.)
    ``eot_iter``: each step's gradient averaged over that many forward passes of a randomized model."""

    name = "rfgsm"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=True, norm="linf", seed=seed,
                         eot_iter=eot_iter)
        if self.alpha > self.eps:
            raise AdvshieldError(f"alpha must be <= eps ({self.eps:.4g}) for RFGSM, not {alpha!r}")

    def init(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.alpha * torch.randn_like(x).sign()).clamp(*self.threat.bounds)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return x_adv + (self.eps - self.alpha) * grad.sign()

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "RFGSM":
        """NRP supplement F: random step eps/3, then one step of eps − eps/3."""
        return cls(model, eps=eps, **{"alpha": eps / 3, "steps": 1, **kw})
