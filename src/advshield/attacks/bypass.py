"""The white-box bypass attack of NRP's ``bypass_nrp.py``: targeted PGD without random start toward a random class
that is never the true label, through a defended model (purifier + classifier)."""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_steps
from .pgd import PGD


class BypassPGD(PGD):
    """The bypass attack: :class:`~advshield.attacks.pgd.PGD` without random start, in ``"random"`` target mode
    (a uniformly random class ≠ the label), keeping the targets of each call in :attr:`targets` (one N-tensor per
    call, on the CPU) so the targeted success rate can be measured. eps, alpha in [0,1] units; ``eot_iter``: each
    step's gradient averaged over that many forward passes (for a randomized defense)."""

    name = "bypass-pgd"

    def __init__(self, model: nn.Module, eps: float = 16 / 255, alpha: float = 2 / 255, steps: int = 10,
                 seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=False, seed=seed, eot_iter=eot_iter)
        self.set_target_mode("random")
        self.targets: list[torch.Tensor] = []

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.targets.append(y.detach().cpu())
        return super().perturb(x, y)


def bypass_attack(defended: nn.Module, eps: float = 16 / 255, alpha: float = 2 / 255, steps: int = 10,
                  eot: int = 1) -> BypassPGD:
    """:class:`BypassPGD` on ``defended`` (a classifier with its defense in front, [0,1] images → logits); ``eot``
    gradient samples per step when its defense is randomized (``defended.defense.randomized``), else 1.
    eps, alpha in [0,1] units; ``eot``: an integer >= 1."""
    eot = check_steps(eot, "eot")
    randomized = getattr(getattr(defended, "defense", None), "randomized", False)
    return BypassPGD(defended, eps=eps, alpha=alpha, steps=steps, eot_iter=eot if randomized else 1)
