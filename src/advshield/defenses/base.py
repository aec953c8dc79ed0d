"""Defenses that need no retraining: ``nn.Module``s mapping [0,1] images to [0,1] images of the same shape
(input purifiers and transforms), plus the wrapper that puts one in front of a classifier.

Each defense declares whether it is differentiable and whether it is randomized, and offers a gradient
substitute for BPDA (:meth:`Defense.bpda`): by default the identity (straight-through).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ..registry import DEFENSES


class Defense(nn.Module):
    """Base class. ``forward(x)``: N×C×H×W in [0,1] → same shape in [0,1]."""

    name = "defense"
    differentiable = True  # does autograd through forward() give useful gradients?
    randomized = False  # does forward() draw random numbers (attack with EOT)?

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        """Forward as :meth:`forward`, backward through :meth:`substitute` (BPDA, Athalye et al. 2018)."""
        with torch.no_grad():
            out = self(x)
        sub = self.substitute(x)
        return sub + (out - sub).detach()

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of the defense used by BPDA; the identity by default."""
        return x


@DEFENSES.register("none", "no defense (identity)")
class Identity(Defense):
    """Returns its input unchanged."""

    name = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Defended(nn.Module):
    """A classifier with a defense in front: ``model(defense(x))``. ``bpda=True`` makes backward
    straight-through the defense's substitute (for adaptive attacks)."""

    def __init__(self, model: nn.Module, defense: nn.Module, bpda: bool = False) -> None:
        super().__init__()
        self.defense = defense
        self.model = model
        self.use_bpda = bpda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_bpda and isinstance(self.defense, Defense):
            return self.model(self.defense.bpda(x))
        return self.model(self.defense(x))


def defend(model: nn.Module, defense: nn.Module | None, bpda: bool = False) -> nn.Module:
    """The defended classifier as an ``nn.Module`` (``model`` itself when ``defense`` is None/identity)."""
    if defense is None or isinstance(defense, Identity):
        return model
    return Defended(model, defense, bpda=bpda).eval()


def build_defense(name: str, seed: int | None = None) -> nn.Module:
    """Registry defense ``name`` at its defaults; randomized ones (a ``seed`` argument) get ``seed`` when it is
    not None, so a run repeats exactly."""
    cls = DEFENSES.get(name)
    seeded = seed is not None and "seed" in inspect.signature(cls).parameters
    return cls(seed=seed) if seeded else cls()
