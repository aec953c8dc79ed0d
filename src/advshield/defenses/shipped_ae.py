"""The shipped autoencoder purifiers as registered defenses (``ae``: noisy latent, ``vae``: posterior mean), so
the CLI, the demo and the contract tests enumerate them. Each loads its zoo checkpoint (offline) when built."""
from __future__ import annotations

import torch

from ..registry import DEFENSES
from .autoencoder import ConvAutoencoder, ConvVAE  # noqa: F401  (registers the ae/vae purifier architectures)
from .base import Defense
from .purifier import load_purifier


class ZooAutoencoder(Defense):
    """A trained autoencoder purifier ([0,1] → [0,1], same shape; 28×28 nets resize other sizes and back).

    ``spec``: another trained purifier (default the class's zoo entry); ``seed``: draw its noise from a private
    generator seeded once (a reproducible sequence); ``latent_noise``: override the AE's latent σ (0: the
    deterministic "vanilla" model with the same weights); ``sample``: VAE decodes a posterior sample."""

    spec = "zoo:ae-fmnist"

    def __init__(self, spec: str | None = None, seed: int | None = None, latent_noise: float | None = None,
                 sample: bool | None = None) -> None:
        super().__init__()
        self.inner = load_purifier(spec or self.spec)
        net = self.inner.net
        if latent_noise is not None and hasattr(net, "latent_noise"):
            net.latent_noise = float(latent_noise)
        if sample is not None and hasattr(net, "sample"):
            net.sample = bool(sample)
        if seed is not None and hasattr(net, "seed_noise"):
            net.seed_noise(seed)
        self.randomized = self.inner.randomized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@DEFENSES.register("ae", "autoencoder purifier with Gaussian latent noise (zoo:ae-fmnist, seed 003)")
class AEDefense(ZooAutoencoder):
    """``zoo:ae-fmnist``: conv autoencoder trained against FGSM/PGD on fmnist-lenet, noisy latent kept at
    inference. Randomized: attack it with EOT."""

    name = "ae"
    randomized = True


@DEFENSES.register("vae", "VAE purifier decoding the posterior mean (zoo:vae-fmnist)")
class VAEDefense(ZooAutoencoder):
    """``zoo:vae-fmnist``: conv VAE trained against FGSM/PGD on fmnist-lenet; deterministic (posterior mean)."""

    name = "vae"
    spec = "zoo:vae-fmnist"
