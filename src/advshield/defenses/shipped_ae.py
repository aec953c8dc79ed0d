"""The shipped autoencoder purifiers as registered defenses (``ae``: noisy latent, ``vae``: posterior mean), so
the CLI, the demo and the contract tests enumerate them. Each loads its zoo checkpoint (offline) when built."""
from __future__ import annotations

import torch

from ..checks import check_number
from ..registry import DEFENSES
from .autoencoder import ConvAutoencoder, ConvVAE  # noqa: F401  (registers the ae/vae purifier architectures)
from .base import Defense
from .purifier import card_channels, fit_channels, load_purifier, purifier_card
from .shipped import check_flag, check_seed


class ZooAutoencoder(Defense):
    """A trained autoencoder purifier ([0,1] → [0,1], same shape; 28×28 nets resize other sizes and back).

    ``spec``: another trained purifier (default the class's zoo entry); ``seed``: draw its noise from a private
    generator seeded once (a reproducible sequence); ``latent_noise``: override the AE's latent σ (0: the
    deterministic "vanilla" model with the same weights); ``sample``: VAE decodes a posterior sample;
    ``adapt_channels``: allow images whose channel count differs from the card's (a 1-channel purifier then
    purifies each channel on its own), else such images are refused. ``inner``: the loaded purifier (``.card``)."""

    spec = "zoo:ae-fmnist"

    def __init__(self, spec: str | None = None, seed: int | None = None, latent_noise: float | None = None,
                 sample: bool | None = None, adapt_channels: bool = False) -> None:
        super().__init__()
        self.seed = check_seed(seed)
        self.latent_noise = None if latent_noise is None else check_number(latent_noise, "latent_noise", low=0.0)
        self.sample = None if sample is None else check_flag(sample, "sample")
        self.adapt_channels = check_flag(adapt_channels, "adapt_channels")
        self.spec = str(spec or type(self).spec)
        self.inner = load_purifier(self.spec)
        self.card = self.inner.card
        net = self.inner.net
        if self.latent_noise is not None and hasattr(net, "latent_noise"):
            net.latent_noise = self.latent_noise
        if self.sample is not None and hasattr(net, "sample"):
            net.sample = self.sample
        if self.seed is not None and hasattr(net, "seed_noise"):
            net.seed_noise(self.seed)
        self.channels = card_channels(self.card)
        self.body = fit_channels(self.inner, self.channels, self.spec, self.adapt_channels)
        self.randomized = self.inner.randomized

    @classmethod
    def input_channels(cls) -> int | None:
        """Channels on the card of the class's zoo entry (no weights loaded)."""
        return card_channels(purifier_card(cls.spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.substitute(x)  # the identity for a purifier; also checks the channel count


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

