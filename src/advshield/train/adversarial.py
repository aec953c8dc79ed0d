"""Adversarial training of a classifier (the baselines purifiers are compared with): the inner maximisation.

Methods (L∞, eps in [0,1] units), each crafting on the model in eval mode (batch norms use their running
statistics, so the attack does not move them):

- ``pgd`` (Madry et al. 2018): PGD with a uniform random start, ``steps`` steps of ``alpha`` (default eps/4);
  the model trains on the adversarial batch alone;
- ``fgsm-rs`` (Wong et al. 2020, "fast" adversarial training): a uniform random start and one step of
  ``alpha`` (default 1.25·eps), projected back to the eps ball;
- ``trades`` (Zhang et al. 2019): PGD on KL(f(x) ‖ f(x')) from x + 0.001·N(0, I); the model trains on
  CE(f(x), y) + ``beta``·KL(f(x) ‖ f(x')) (beta default 6).

All random starts are drawn for the whole batch and sliced (``shard``), so torchrun ranks craft what one process
would (pgd and fgsm-rs to float rounding; TRADES starts where its KL is ~0, so the signs of its first gradients
follow float rounding and N processes agree with one only approximately).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import GradientAttack
from ..attacks.pgd import PGD
from ..distributed import global_like
from ..errors import AdvshieldError

METHODS = ("pgd", "fgsm-rs", "trades")


def check_adversarial(spec: dict[str, Any] | None) -> None:
    """One-line errors for an adversarial-training spec ({"method", "eps", ...} or None)."""
    if spec is None:
        return
    if spec.get("method") not in METHODS:
        raise AdvshieldError(f"adversarial training method must be one of {', '.join(METHODS)}, "
                             f"not {spec.get('method')!r}")
    eps = spec.get("eps")
    if not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise AdvshieldError(f"adversarial training eps must be in (0, 1] ([0,1] units), not {eps!r}")
    if int(spec.get("steps", 1)) < 1:
        raise AdvshieldError("adversarial training steps must be >= 1")
    unknown = set(spec) - {"method", "eps", "steps", "alpha", "beta"}
    if unknown:
        raise AdvshieldError(f"unknown adversarial training settings: {', '.join(sorted(unknown))}")


class _KL(GradientAttack):
    """TRADES' inner maximisation: ascend KL(p_clean ‖ softmax f(x')) from x + 0.001·N(0, I) (summed over the
    batch)."""

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=True, norm="linf")
        self.p_clean: torch.Tensor | None = None

    def init(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.p_clean = F.softmax(self.model(x), 1)
        noise = global_like(x, lambda s: torch.randn(s, device=x.device, dtype=x.dtype), self.shard)
        return (x + 0.001 * noise).clamp(0, 1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, 1), self.p_clean, reduction="sum")


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: dict[str, Any], seed: int,
          shard: tuple[int, int] | None) -> torch.Tensor:
    """The training adversaries of x (B×C×H×W in [0,1]) against ``model`` (put in eval mode for the attack and
    restored), seeded; ``shard``: (offset, rows of the whole batch) when x is one rank's part."""
    eps, method = float(spec["eps"]), spec["method"]
    if method == "pgd":
        atk: GradientAttack = PGD(model, eps=eps, alpha=float(spec.get("alpha", eps / 4)),
                                  steps=int(spec.get("steps", 7)), random_start=True)
    elif method == "fgsm-rs":
        atk = PGD(model, eps=eps, alpha=float(spec.get("alpha", 1.25 * eps)), steps=1, random_start=True)
    else:
        atk = _KL(model, eps, float(spec.get("alpha", eps / 4)), int(spec.get("steps", 7)))
    atk.seed, atk.shard = seed, shard
    was = model.training
    model.eval()
    try:
        return atk(x, y).detach()
    finally:
        model.train(was)


def loss(net: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, spec: dict[str, Any],
         label_smoothing: float = 0.0) -> torch.Tensor:
    """The summed training loss of one (part of a) batch: CE on x_adv (pgd, fgsm-rs) or TRADES'
    CE(f(x)) + beta·KL(f(x) ‖ f(x_adv))."""
    if spec["method"] != "trades":
        return F.cross_entropy(net(x_adv).float(), y, label_smoothing=label_smoothing, reduction="sum")
    logits = net(torch.cat([x, x_adv])).float()
    clean, adv = logits[: len(x)], logits[len(x):]
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="sum")
    return F.cross_entropy(clean, y, label_smoothing=label_smoothing, reduction="sum") + \
        float(spec.get("beta", 6.0)) * kl
