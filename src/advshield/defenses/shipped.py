"""The shipped purifiers as registered defenses, so the CLI, the demo and the contract tests enumerate them.

Each loads its zoo checkpoint (offline) when built; ``spec=`` points it at another trained purifier."""
from __future__ import annotations

import torch

from ..registry import DEFENSES
from .base import Defense
from .nrp import DynamicPurifier
from .purifier import load_purifier


class ZooPurifier(Defense):
    """A trained purifier ([0,1] → [0,1], same shape), static or in dynamic mode (noise σ projected to ±eps)."""

    spec = "zoo:nrp-fmnist"
    dynamic = False

    def __init__(self, spec: str | None = None, eps: float = 16 / 255, sigma: float = 0.05,
                 seed: int | None = None) -> None:
        super().__init__()
        purifier = load_purifier(spec or self.spec)
        self.inner = DynamicPurifier(purifier, eps=eps, sigma=sigma, seed=seed) if self.dynamic else purifier
        self.randomized = self.dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@DEFENSES.register("nrp", "NRP purifier (zoo:nrp-fmnist, RRDB trunk, SSP self-supervised training)")
class NRPDefense(ZooPurifier):
    """``zoo:nrp-fmnist`` in front of the model. Differentiable: white-box attacks go through it."""

    name = "nrp"


@DEFENSES.register("nrp-resg", "NRP-ResG purifier (zoo:nrp-resg-fmnist, residual generator)")
class NRPResGDefense(ZooPurifier):
    """``zoo:nrp-resg-fmnist`` in front of the model."""

    name = "nrp-resg"
    spec = "zoo:nrp-resg-fmnist"


@DEFENSES.register("nrp-dynamic", "NRP with dynamic inference: Gaussian noise σ=0.05 within ±16/255, then purify")
class NRPDynamicDefense(ZooPurifier):
    """``zoo:nrp-fmnist`` behind the paper's dynamic inference. Randomized: attack it with EOT."""

    name = "nrp-dynamic"
    dynamic = True
