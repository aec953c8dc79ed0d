"""Carlini & Wagner (2017): the L2 attack (Adam in tanh space on ‖δ‖² + c·f, the smallest adversarial kept) and
the L∞ variant used in robustness evaluations (PGD on the CW margin loss, "CW∞")."""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from ..checks import check_eps, check_number, check_steps
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .base import Attack, GradientAttack
from .threat import ThreatModel

UNBOUNDED = sys.float_info.max  # the threat-model radius of a minimal-norm attack built without eps (ThreatModel
#                                 accepts finite radii only); settings() and the repr show it as eps=None


def margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """CW margin per sample, positive while the attack has not succeeded; N×K logits, N labels → N.

    Untargeted: z_y − max_{j≠y} z_j; targeted (``y`` the targets): max_{j≠y} z_j − z_y."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
    return others - own if targeted else own - others


def minimal_norm_threat(eps: float | None) -> ThreatModel:
    """The L2 threat model of a minimal-norm attack: radius ``eps`` (its result is projected into that ball), or
    :data:`UNBOUNDED` when ``eps`` is None."""
    return ThreatModel(norm="l2", eps=UNBOUNDED if eps is None else check_eps(eps, "eps", "l2"))


class MinimalNormAttack(Attack):
    """Base of the minimal-L2 attacks (CW-L2, DeepFool): they look for the smallest adversarial perturbation and
    have no fixed budget. Built with ``eps`` (as :meth:`for_budget` does) the result is projected into the L2 ball
    of that radius (a perturbation found larger than ``eps`` is scaled down to it), so ``threat.check`` holds; with
    ``eps=None`` the result is unbounded and ``threat.distance(x_adv, x)`` gives each sample's L2 distance."""

    norm = "l2"
    transfer = False

    def __init__(self, model: nn.Module, eps: float | None, eot_iter: int, seed: int | None) -> None:
        super().__init__(model, minimal_norm_threat(eps), seed)
        self.eot = check_steps(eot_iter, "eot_iter")  # read at run time; the engine raises it for randomized defenses

    @property
    def eps(self) -> float | None:
        """The L2 radius the result is projected into, or None (unbounded)."""
        return None if self.threat.eps == UNBOUNDED else self.threat.eps

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "eps": self.eps}

    def bound(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_adv`` projected into the eps-ball (unchanged when unbounded) and clipped to [0,1]."""
        return x_adv.clamp(*self.threat.bounds) if self.eps is None else self.threat.project(x_adv, x)

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "MinimalNormAttack":
        """The default settings with the result projected into the L2 ball of radius ``eps``."""
        return cls(model, eps=eps, **kw)


@ATTACKS.register("cw", "Carlini-Wagner L2: Adam in tanh space on L2² + c·margin, smallest adversarial kept")
class CW(MinimalNormAttack):
    """``CW(model, c=1, kappa=0, steps=50, lr=0.01, eps=None, eot_iter=1)`` (torchattacks' settings; no binary
    search over ``c``).

    Optimises w (x_adv = (tanh(w)+1)/2, so always in [0,1]) with Adam at learning rate ``lr`` for ``steps`` steps on
    Σ ‖x_adv − x‖₂² + c·max(margin, −kappa) (:func:`margin`), starting at x. Each sample returns its adversarial
    image of smallest L2 seen during the run, or x when none was found. Every ``steps // 10`` steps the run stops
    early if the batch's total cost went up. ``eot_iter``: the margin term averaged over that many forward passes
    (randomized models). Targeted modes: the margin toward the target class."""

    name = "cw"

    def __init__(self, model: nn.Module, c: float = 1.0, kappa: float = 0.0, steps: int = 50, lr: float = 0.01,
                 eps: float | None = None, eot_iter: int = 1, seed: int | None = None) -> None:
        super().__init__(model, eps, eot_iter, seed)
        self.c = check_number(c, "c", low=0.0, low_open=True)
        self.kappa = check_number(kappa, "kappa", low=0.0)
        self.steps = check_steps(steps)
        self.lr = check_number(lr, "lr", low=0.0, low_open=True)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lim = 1 - 1e-6  # atanh(±1) is infinite: start a hair inside the box
        w = torch.atanh((2 * x - 1).clamp(-lim, lim)).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        best, best_l2 = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        prev_cost, check_every = float("inf"), max(self.steps // 10, 1)
        for step in range(self.steps):
            with torch.enable_grad():
                x_adv = (torch.tanh(w) + 1) / 2
                l2 = (x_adv - x).pow(2).flatten(1).sum(1)
                f, logits = 0.0, 0.0
                for _ in range(self.eot):
                    out = self.model(x_adv)
                    f = f + margin(out, y, self.targeted).clamp_min(-self.kappa) / self.eot
                    logits = logits + out.detach() / self.eot
                cost = l2.sum() + self.c * f.sum()
                (w.grad,) = torch.autograd.grad(cost, w)
            opt.step()
            with torch.no_grad():
                pred = logits.argmax(1)
                success = pred == y if self.targeted else pred != y
                better = success & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best[better] = x_adv[better]
            if step % check_every == 0:
                if float(cost.detach()) > prev_cost:
                    break
                prev_cost = float(cost.detach())
        return self.bound(best.detach(), x)


@ATTACKS.register("cw-linf", "PGD on the Carlini-Wagner margin loss, L∞ (the CW∞ of robustness evaluations)")
class CWLinf(GradientAttack):
    """``CWLinf(model, eps=8/255, alpha=2/255, steps=20, kappa=0, random_start=True, eot_iter=1)``.

    Sign-gradient ascent of min(max_{j≠y} z_j − z_y, kappa) per sample (targeted: min(z_t − max_{j≠t} z_j, kappa)),
    projected to the L∞ ball; once a sample is past the margin kappa its gradient is zero and it stays put.
    ``eot_iter``: gradients averaged over that many forward passes (randomized models)."""

    name = "cw-linf"
    transfer = False

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20,
                 kappa: float = 0.0, random_start: bool = True, eot_iter: int = 1, seed: int | None = None) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="linf", seed=seed)
        self.kappa = check_number(kappa, "kappa", low=0.0)
        self.eot = check_steps(eot_iter, "eot_iter")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise AdvshieldError(f"model: cw-linf needs N×K logits, got shape {tuple(logits.shape)}")
        return (-margin(logits, y, self.targeted)).clamp_max(self.kappa).sum()

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "CWLinf":
        """20 steps of eps/4 from a uniform random start (PGD-20 with the CW loss)."""
        return cls(model, eps=eps, **{"alpha": eps / 4, "steps": 20, **kw})
