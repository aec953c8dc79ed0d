"""DiffPure with the shipped denoiser as a registered defense (``diffpure``), so ``defend``, ``purify``, ``audit``,
the CLI listings and the contract tests pick it up. It loads ``zoo:ddpm-fmnist`` (offline) when built; ``spec=``
points it at another trained diffusion checkpoint (card kind "diffusion")."""
from __future__ import annotations

import torch

from ..registry import DEFENSES
from .base import Defense
from .diffusion import SAMPLERS, DiffPure, load_diffpure
from .purifier import card_channels, fit_channels, purifier_card
from .shipped import check_flag, check_seed


@DEFENSES.register("diffpure", "DiffPure: diffuse to t*, then reverse DDIM/DDPM steps (zoo:ddpm-fmnist; randomized)")
class DiffPureDefense(Defense):
    """Diffusion purification ([0,1] → [0,1], same shape) in front of the model. Randomized (audit applies EOT and
    repeated draws); differentiable end to end (checkpointed reverse steps); BPDA substitute: the identity.

    ``spec``: the denoiser (``zoo:NAME`` or ``PATH.safetensors`` with its card; default ``zoo:ddpm-fmnist``);
    ``t_star``: diffusion timestep the input is noised to (of the card's T; default the card's tuned value);
    ``steps``: reverse steps from t* to 0 (default the card's); ``sampler``: ``ddim`` (deterministic after the
    first noise) or ``ddpm`` (ancestral; default the card's, else ddim); ``seed``: private noise generator (a
    reproducible sequence), else torch's global RNG; ``adapt_channels``: a 1-channel denoiser purifies each
    channel of RGB images on its own (else such images are refused)."""

    name = "diffpure"
    spec = "zoo:ddpm-fmnist"
    randomized = True
    differentiable = True
    not_default = "slow on a CPU (a U-Net pass per reverse step, per EOT sample); name it in --defenses to include it"

    def __init__(self, spec: str | None = None, t_star: int | None = None, steps: int | None = None,
                 sampler: str | None = None, seed: int | None = None, adapt_channels: bool = False) -> None:
        super().__init__()
        if sampler is not None and sampler not in SAMPLERS:
            from ..errors import AdvshieldError

            raise AdvshieldError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        self.seed = check_seed(seed)
        self.adapt_channels = check_flag(adapt_channels, "adapt_channels")
        self.spec = str(spec or type(self).spec)
        self.inner: DiffPure = load_diffpure(self.spec, t_star=t_star, steps=steps, sampler=sampler, seed=self.seed)
        self.card = self.inner.card
        self.t_star, self.steps, self.sampler = self.inner.t_star, self.inner.steps, self.inner.sampler
        self.channels = card_channels(self.card)
        self.body = fit_channels(self.inner, self.channels, self.spec, self.adapt_channels)

    @classmethod
    def input_channels(cls) -> int | None:
        """Channels on the card of the class's zoo entry (no weights loaded)."""
        return card_channels(purifier_card(cls.spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.substitute(x)  # the identity; also checks the channel count
