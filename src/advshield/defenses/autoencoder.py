"""Convolutional autoencoder and VAE purifiers (seed 003: "autoencoder against FGSM/PGD").

Architectures (registered in :data:`advshield.registry.PURIFIERS`), float N×C×H×W in [0,1] → same shape in (0,1)
(sigmoid output):

- ``ae``: :class:`ConvAutoencoder`, a deterministic conv encoder → latent → mirrored decoder, with optional
  Gaussian noise σ·N(0, I) added to the latent (``latent_noise`` σ > 0: the seed's "noisy" model, noise kept at
  inference; σ = 0: "vanilla").
- ``vae``: :class:`ConvVAE`, a variational autoencoder (reparameterised Gaussian posterior, KL term); as a
  purifier it decodes the posterior mean (default, deterministic) or a posterior sample (``sample=True``).

Both are built for one image size (they have linear layers); other H×W are resized (bilinear) to
``image_size`` and back. Encoder: stride-2 3×3 convs (padding 1, the last one padding 0), batch norm after all
but the first, then linear → ``hidden`` → latent; the decoder mirrors it with transposed convs.
:data:`AE_CONFIGS` names the seed's MNIST-sized model (``ae-mnist``: 1→8→16→32, 288→128→10, GELU,
88,731 parameters), a wider one for Fashion-MNIST and CIFAR-sized RGB ones.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import global_like
from ..errors import AdvshieldError
from ..registry import PURIFIERS
from ..utils import mix

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU,
                                                   "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def _activation(name: str) -> Callable[[], nn.Module]:
    if name not in ACTIVATIONS:
        raise AdvshieldError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def conv_sizes(image_size: int, n: int) -> list[int]:
    """Spatial sizes [S, S1, …, Sn] after n stride-2 3×3 convs (padding 1, the last padding 0)."""
    sizes = [int(image_size)]
    for i in range(n):
        pad = 0 if i == n - 1 else 1
        sizes.append((sizes[-1] + 2 * pad - 3) // 2 + 1)
    if sizes[-1] < 1:
        raise AdvshieldError(f"image_size {image_size} is too small for {n} stride-2 convs")
    return sizes


class ConvEncoder(nn.Module):
    """N×C×S×S → N×hidden: stride-2 3×3 convs of ``widths`` (BN after all but the first), flatten, linear."""

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int], hidden: int, act: str,
                 batch_norm: bool = True) -> None:
        super().__init__()
        make = _activation(act)
        sizes = conv_sizes(image_size, len(widths))
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(c, w, 3, stride=2, padding=0 if i == len(widths) - 1 else 1))
            if batch_norm and i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers.append(make())
            c = w
        self.flat = c * sizes[-1] ** 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(self.flat, hidden), make())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """N×latent → N×C×S×S in (0,1): linear → hidden → flat, mirrored stride-2 transposed convs, sigmoid."""

    def __init__(self, out_channels: int, image_size: int, widths: Sequence[int], hidden: int, latent_dim: int,
                 act: str, batch_norm: bool = True) -> None:
        super().__init__()
        make = _activation(act)
        sizes = conv_sizes(image_size, len(widths))
        widths = list(widths)
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden), make(),
                                   nn.Linear(hidden, widths[-1] * sizes[-1] ** 2), make(),
                                   nn.Unflatten(1, (widths[-1], sizes[-1], sizes[-1]))]
        n = len(widths)
        for i in range(n - 1, -1, -1):  # mirror conv i: sizes[i+1] → sizes[i], widths[i] → widths[i-1]
            pad = 0 if i == n - 1 else 1
            out_pad = sizes[i] - ((sizes[i + 1] - 1) * 2 - 2 * pad + 3)
            cout = widths[i - 1] if i > 0 else out_channels
            layers.append(nn.ConvTranspose2d(widths[i], cout, 3, stride=2, padding=pad, output_padding=out_pad))
            if i > 0:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(make())
        self.net = nn.Sequential(*layers, nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class _SeededNoise:
    """Standard normal draws from, in order of preference: a generator passed per call (CPU, e.g. training's
    per-step generator), a private per-device generator seeded once with ``seed`` (reproducible sequence,
    restart with :meth:`reseed`), or torch's global RNG."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.stream: int | None = None
        self._gens: dict[str, torch.Generator] = {}
        # (offset, rows of the whole batch) when training on a shard: a passed generator then draws for the
        # whole batch and this shard's rows are kept (torchrun gives the noise of one process)
        self.shard: tuple[int, int] | None = None

    def reseed(self, seed: int | None = None) -> None:
        if seed is not None:
            self.seed = int(seed)
        self.stream = None
        self._gens.clear()

    def restart(self, stream: int) -> None:
        """Restart the seeded sequence at the stream (own seed, ``stream``); unseeded: nothing (global RNG)."""
        self._gens.clear()
        self.stream = None if self.seed is None else mix(self.seed, stream)

    def randn(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None:
            return global_like(like, lambda sh: torch.randn(sh, generator=generator), self.shard).to(
                like.device, like.dtype)
        gen = None
        if self.seed is not None:
            key = str(like.device)
            if key not in self._gens:
                start = self.seed if self.stream is None else self.stream
                self._gens[key] = torch.Generator(device=like.device).manual_seed(start)
            gen = self._gens[key]
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


class _Coder(nn.Module):
    """Shared plumbing: the fixed ``image_size`` (other sizes resized and back) and the noise source."""

    in_channels: int
    out_channels: int
    image_size: int

    def __init__(self) -> None:
        super().__init__()
        self.noise = _SeededNoise()

    def restart_noise(self, stream: int) -> None:
        """Restart the seeded noise at the stream (own seed, ``stream``); unseeded: nothing (global RNG)."""
        self.noise.restart(stream)

    def seed_noise(self, seed: int | None) -> None:
        """Draw the model's noise from a private generator seeded with ``seed`` (None: torch's global RNG)."""
        self.noise.seed = None if seed is None else int(seed)
        self.noise.reseed()

    def _run(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) == (s, s):
            return fn(x)
        out = fn(F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False))
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


@PURIFIERS.register("ae", "convolutional autoencoder purifier, optional Gaussian latent noise (noisy/vanilla)")
class ConvAutoencoder(_Coder):
    """``ConvAutoencoder(in_channels=1, image_size=28, widths=(8, 16, 32), hidden=128, latent_dim=10,
    activation="gelu", latent_noise=0.0, batch_norm=True)``: N×C×H×W in [0,1] → same shape in (0,1).

    x → encoder → z (N×latent_dim) → z + latent_noise·N(0, I) → decoder → sigmoid. The noise is drawn in
    train and eval mode alike (set ``latent_noise`` to 0 for the deterministic "vanilla" model); see
    :meth:`seed_noise` for a reproducible sequence. Randomized iff ``latent_noise`` > 0."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, widths: Sequence[int] = (8, 16, 32),
                 hidden: int = 128, latent_dim: int = 10, activation: str = "gelu", latent_noise: float = 0.0,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if latent_noise < 0:
            raise AdvshieldError(f"latent_noise must be non-negative, not {latent_noise}")
        self.in_channels = self.out_channels = int(in_channels)
        self.image_size, self.latent_dim = int(image_size), int(latent_dim)
        self.latent_noise = float(latent_noise)
        self.encoder = nn.Sequential(ConvEncoder(in_channels, image_size, widths, hidden, activation, batch_norm),
                                     nn.Linear(hidden, latent_dim))
        self.decoder = ConvDecoder(in_channels, image_size, widths, hidden, latent_dim, activation, batch_norm)

    @property
    def randomized(self) -> bool:
        return self.latent_noise > 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×S×S → N×latent_dim (before the noise)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """N×latent_dim → N×C×S×S in (0,1)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator``: a CPU generator for the latent noise (default: :meth:`seed_noise`'s or the global)."""

        def fn(v: torch.Tensor) -> torch.Tensor:
            z = self.encode(v)
            if self.latent_noise > 0:
                z = z + self.latent_noise * self.noise.randn(z, generator)
            return self.decode(z)

        return self._run(x, fn)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, latent_dim={self.latent_dim}, latent_noise={self.latent_noise:g}"


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per sample (summed over the latent dims): N×D → N, ≥ 0."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


@PURIFIERS.register("vae", "convolutional VAE purifier: reconstructs from the posterior mean (or a sample)")
class ConvVAE(_Coder):
    """``ConvVAE(in_channels=1, image_size=28, widths=(8, 16, 32), hidden=128, latent_dim=10,
    activation="gelu", batch_norm=True, sample=False)``: N×C×H×W in [0,1] → same shape in (0,1).

    Encoder → (mu, logvar) of a diagonal Gaussian posterior (logvar clamped to [-10, 10]); training uses
    z = mu + exp(logvar/2)·ε (:meth:`elbo_terms`). As a purifier, forward decodes mu (deterministic), or a
    posterior sample when ``sample`` is True (then randomized)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, widths: Sequence[int] = (8, 16, 32),
                 hidden: int = 128, latent_dim: int = 10, activation: str = "gelu", batch_norm: bool = True,
                 sample: bool = False) -> None:
        super().__init__()
        self.in_channels = self.out_channels = int(in_channels)
        self.image_size, self.latent_dim = int(image_size), int(latent_dim)
        self.sample = bool(sample)
        self.encoder = ConvEncoder(in_channels, image_size, widths, hidden, activation, batch_norm)
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.decoder = ConvDecoder(in_channels, image_size, widths, hidden, latent_dim, activation, batch_norm)

    @property
    def randomized(self) -> bool:
        return self.sample

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N×C×S×S → (mu, logvar), each N×latent_dim."""
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        return mu + (0.5 * logvar).exp() * self.noise.randn(mu, generator)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction from a posterior sample N×C×S×S, KL per sample N) for x of size image_size."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, generator)), kl_divergence(mu, logvar)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, elbo: bool = False) -> Any:
        """The reconstruction (the posterior mean decoded unless ``sample``); ``elbo=True``: :meth:`elbo_terms`
        (training calls it through forward so that DistributedDataParallel sees the pass)."""
        if elbo:
            return self.elbo_terms(x, generator)

        def fn(v: torch.Tensor) -> torch.Tensor:
            mu, logvar = self.encode(v)
            return self.decode(self.reparameterize(mu, logvar, generator) if self.sample else mu)

        return self._run(x, fn)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, latent_dim={self.latent_dim}, sample={self.sample}"


_MNIST = {"in_channels": 1, "image_size": 28, "widths": [8, 16, 32], "hidden": 128, "activation": "gelu"}
_CIFAR = {"in_channels": 3, "image_size": 32, "widths": [32, 64, 128], "hidden": 256, "activation": "gelu"}

# name -> (PURIFIERS architecture, arguments)
AE_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "ae-mnist": ("ae", {**_MNIST, "latent_dim": 10}),  # the seed's model: 88,731 parameters
    "ae-fmnist": ("ae", {**_MNIST, "widths": [16, 32, 64], "hidden": 256, "latent_dim": 64}),
    "ae-cifar": ("ae", {**_CIFAR, "latent_dim": 128}),
    "vae-mnist": ("vae", {**_MNIST, "latent_dim": 10}),
    "vae-fmnist": ("vae", {**_MNIST, "widths": [16, 32, 64], "hidden": 256, "latent_dim": 64}),
    "vae-cifar": ("vae", {**_CIFAR, "latent_dim": 128}),
}


def build_autoencoder(config: str, **overrides: Any) -> tuple[nn.Module, str, dict[str, Any]]:
    """A named configuration (:data:`AE_CONFIGS`) with argument ``overrides`` (None values ignored) →
    (fresh net, architecture name, arguments)."""
    if config not in AE_CONFIGS:
        raise AdvshieldError(f"unknown autoencoder config {config!r} (known: {', '.join(sorted(AE_CONFIGS))})")
    arch, args = AE_CONFIGS[config]
    args = {**args, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return PURIFIERS.get(arch)(**args), arch, args
    except TypeError as e:
        raise AdvshieldError(f"bad arguments for {arch}: {e}") from None
