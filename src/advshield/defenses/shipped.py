"""The shipped purifiers as registered defenses, so the CLI, the demo and the contract tests enumerate them.

Each loads its zoo checkpoint (offline) when built; ``spec=`` points it at another trained purifier. A purifier
runs only on images with the channel count on its card unless built with ``adapt_channels=True``."""
from __future__ import annotations

from typing import Any

import torch

from ..checks import check_number
from ..registry import DEFENSES
from .base import Defense
from .nrp import DynamicPurifier
from .purifier import card_channels, fit_channels, load_purifier, purifier_card


def check_seed(seed: Any) -> int | None:
    """None or an integer seed (one-line error naming ``seed`` otherwise)."""
    return None if seed is None else int(check_number(seed, "seed", integer=True))


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        from ..errors import AdvshieldError

        raise AdvshieldError(f"{name} must be true or false, not {value!r}")
    return value


class ZooPurifier(Defense):
    """A trained purifier ([0,1] → [0,1], same shape), static or in dynamic mode (noise σ projected to ±eps).

    ``spec``: the trained purifier (``zoo:NAME`` or ``PATH.safetensors``; default the class's zoo entry);
    ``dynamic``: dynamic inference (default: the class's); ``eps``, ``sigma`` in [0,1] units; ``seed``: noise
    seed; ``adapt_channels``: allow images whose channel count differs from the card's (a 1-channel purifier
    then purifies each channel on its own), else such images are refused."""

    spec = "zoo:nrp-fmnist"
    dynamic = False

    def __init__(self, spec: str | None = None, eps: float = 16 / 255, sigma: float = 0.05,
                 seed: int | None = None, adapt_channels: bool = False, dynamic: bool | None = None) -> None:
        super().__init__()
        self.eps = check_number(eps, "eps", low=0.0, high=1.0)
        self.sigma = check_number(sigma, "sigma", low=0.0)
        self.seed = check_seed(seed)
        self.adapt_channels = check_flag(adapt_channels, "adapt_channels")
        self.dynamic = type(self).dynamic if dynamic is None else check_flag(dynamic, "dynamic")
        self.spec = str(spec or type(self).spec)
        purifier = load_purifier(self.spec)
        self.card = purifier.card
        self.channels = card_channels(self.card)
        fitted = fit_channels(purifier, self.channels, self.spec, self.adapt_channels)
        self.inner = DynamicPurifier(fitted, eps=self.eps, sigma=self.sigma, seed=self.seed) if self.dynamic else fitted
        self.randomized = self.dynamic

    @classmethod
    def input_channels(cls) -> int | None:
        """Channels on the card of the class's zoo entry (no weights loaded)."""
        return card_channels(purifier_card(cls.spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.substitute(x)  # the identity for a purifier; also checks the channel count


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
