"""NRP purifier networks (Naseer et al., CVPR 2020) and the defenses that wrap them.

Architectures (registered in :data:`advshield.registry.PURIFIERS`; fully convolutional, any H×W):

- ``nrp``: :class:`NRP`, a stack of residual-in-residual dense blocks (RRDB) without a global input skip
  and without a final activation (a skip from input to output would carry the adversarial noise through).
- ``resg``: :class:`NRPResG`, the paper's light alternative: plain residual blocks without batch norm.

:data:`NRP_CONFIGS` names the paper configurations (``nrp-paper``: 16,550,275 parameters, ``resg-paper``:
1,702,211) and small ones for 28×28 grayscale data (``nrp-small``, ``resg-small``).

Defenses: :class:`Purifier` (net → [0,1] clamp, channel adaptation) and :class:`DynamicPurifier` (the paper's
dynamic inference: bounded Gaussian noise before purification, against white-box attackers).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import PURIFIERS
from ..utils import mix
from .base import Defense


def _scaled_kaiming(convs: list[nn.Conv2d], scale: float = 0.1) -> None:
    """Kaiming-normal (fan-in) init scaled by ``scale``, zero bias: residual branches start near zero."""
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in")
        with torch.no_grad():
            conv.weight.mul_(scale)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


class DenseBlock(nn.Module):
    """Five 3×3 convs, each fed the concatenation of the block input and all earlier outputs
    (nf, nf+gc, …, nf+4gc channels in); the first four add ``gc`` channels and are followed by
    LeakyReLU(0.2); the fifth maps back to ``nf``. Output: 0.2·conv5 + input. N×nf×H×W → same."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(nf + i * gc, gc, 3, padding=1) for i in range(4)])
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        _scaled_kaiming([*self.convs, self.conv5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks in sequence; output 0.2·out + input."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.blocks = nn.Sequential(DenseBlock(nf, gc), DenseBlock(nf, gc), DenseBlock(nf, gc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * 0.2 + x


@PURIFIERS.register("nrp", "NRP purifier: conv, nb RRDB blocks, conv; no input skip, no output activation")
class NRP(nn.Module):
    """``NRP(in_channels=3, out_channels=None, nf=64, nb=23, gc=32)``: N×in×H×W → N×out×H×W (any H, W).

    conv in→nf (3×3), ``nb`` :class:`RRDB` blocks, conv nf→out (3×3). The output is not clamped here
    (:class:`Purifier` clamps to [0,1]). Dense-block convs use Kaiming init ×0.1."""

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, nf: int = 64, nb: int = 23,
                 gc: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.conv_first = nn.Conv2d(in_channels, nf, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.conv_last = nn.Conv2d(nf, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.body(self.conv_first(x)))


class ResidualBlockNoBN(nn.Module):
    """conv3×3 → ReLU → conv3×3, plus the identity; no batch norm. Kaiming init ×0.1."""

    def __init__(self, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        _scaled_kaiming([self.conv1, self.conv2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


@PURIFIERS.register("resg", "NRP_resG purifier: conv + LeakyReLU, nb residual blocks without BN, conv")
class NRPResG(nn.Module):
    """``NRPResG(in_channels=3, nf=64, nb=23, out_channels=None)``: N×in×H×W → N×out×H×W (any H, W).

    conv in→nf (3×3) + LeakyReLU(0.1), ``nb`` :class:`ResidualBlockNoBN`, conv nf→out (3×3). No input skip."""

    def __init__(self, in_channels: int = 3, nf: int = 64, nb: int = 23, out_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.conv_first = nn.Conv2d(in_channels, nf, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(nb)])
        self.conv_last = nn.Conv2d(nf, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.body(self.act(self.conv_first(x))))


# name -> (PURIFIERS architecture, arguments)
NRP_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "nrp-paper": ("nrp", {"in_channels": 3, "nf": 64, "nb": 23, "gc": 32}),  # 16,550,275 parameters
    "resg-paper": ("resg", {"in_channels": 3, "nf": 64, "nb": 23}),  # 1,702,211 parameters
    # 28×28 grayscale, sized for CPU training (one RRDB = 15 convs, receptive field 35 px)
    "nrp-small": ("nrp", {"in_channels": 1, "nf": 32, "nb": 1, "gc": 16}),  # 180,609 parameters
    "resg-small": ("resg", {"in_channels": 1, "nf": 32, "nb": 4}),  # 74,593 parameters
    # 4.5x the parameters of nrp-small, ~3x its time per step: for machines with more cores (or a GPU)
    "nrp-medium": ("nrp", {"in_channels": 1, "nf": 48, "nb": 2, "gc": 24}),  # 810,481 parameters
}


def build_purifier_net(config: str) -> tuple[nn.Module, str, dict[str, Any]]:
    """A named configuration (:data:`NRP_CONFIGS`) → (fresh net, architecture name, arguments)."""
    from ..errors import AdvshieldError

    if config not in NRP_CONFIGS:
        raise AdvshieldError(f"unknown purifier config {config!r} (known: {', '.join(sorted(NRP_CONFIGS))})")
    arch, args = NRP_CONFIGS[config]
    return PURIFIERS.get(arch)(**args), arch, dict(args)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Purifier(Defense):
    """A purifier network as a defense: N×C×H×W in [0,1] → same shape in [0,1] (any H×W).

    The net's output is clamped to [0,1]. Channels are adapted to the net's ``in_channels`` (default 3):
    C equal → as is; a 1-channel net given C channels purifies each channel on its own; a 3-channel net
    given 1 channel (grayscale) sees it replicated to RGB and returns the mean of its three output channels;
    given 2 (gray + alpha) or 4 (RGBA) channels it purifies the colour channels and passes the alpha
    channel through unchanged (the reference drops alpha; keeping it preserves the defense's same-shape
    contract). Other combinations raise ``ValueError``. Differentiable: attack it with plain autograd."""

    name = "nrp"
    differentiable = True

    def __init__(self, net: nn.Module, name: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.in_channels = int(getattr(net, "in_channels", 3))
        if name:
            self.name = name

    @property
    def randomized(self) -> bool:  # type: ignore[override]
        """True when the net draws random numbers at inference (e.g. an autoencoder with latent noise)."""
        return bool(getattr(self.net, "randomized", False))

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        """The net; on the CPU in channels-last layout (oneDNN runs these small-channel convolutions about 1.4×
        faster; values equal up to float rounding). Returns a standard-layout tensor."""
        if x.device.type != "cpu" or x.dim() != 4:
            return self.net(x)
        if not getattr(self, "_channels_last", False):
            self.net.to(memory_format=torch.channels_last)
            self._channels_last = True
        return self.net(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k = self.in_channels
        if c == k:
            return self._net(x).clamp(0.0, 1.0)
        if k == 1:
            return self._net(x.reshape(n * c, 1, h, w)).clamp(0.0, 1.0).reshape(n, c, h, w)
        if k == 3 and c in (1, 2):
            gray = self._net(x[:, :1].expand(n, 3, h, w)).clamp(0.0, 1.0).mean(1, keepdim=True)
            return torch.cat([gray, x[:, 1:]], 1)
        if k == 3 and c == 4:
            return torch.cat([self._net(x[:, :3]).clamp(0.0, 1.0), x[:, 3:]], 1)
        raise ValueError(f"purifier {self.name!r} takes {k}-channel images, got {c} channels")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_channels={self.in_channels}"


class DynamicPurifier(Defense):
    """The paper's dynamic inference: x → x + N(0, σ²) → projected to ±eps of x → clamped to [0,1] → purify.

    ``purifier``: any [0,1] → [0,1] module (usually a :class:`Purifier`); ``eps`` and ``sigma`` in [0,1]
    units (defaults 16/255 and 0.05). Randomized: attack it with EOT. With ``seed`` the noise comes from a
    private ``torch.Generator`` seeded once (per device) at the first call: two instances built with the
    same seed draw the same sequence of noise tensors over their successive calls (call :meth:`reseed` to
    restart the sequence); without a seed torch's global RNG is used."""

    name = "nrp-dynamic"
    differentiable = True
    randomized = True

    def __init__(self, purifier: nn.Module, eps: float = 16 / 255, sigma: float = 0.05,
                 seed: int | None = None) -> None:
        super().__init__()
        if eps < 0 or sigma < 0:
            raise ValueError("eps and sigma must be non-negative")
        self.purifier = purifier
        self.eps, self.sigma, self.seed = float(eps), float(sigma), seed
        self._gens: dict[str, torch.Generator] = {}

    def reseed(self) -> None:
        """Restart the seeded noise sequence."""
        self._gens.clear()
        self._stream = None

    def restart_noise(self, stream: int) -> None:
        """Restart the seeded noise at the stream (own seed, ``stream``); unseeded: nothing (global RNG)."""
        self._gens.clear()
        self._stream = None if self.seed is None else mix(self.seed, stream)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._gens:
            start = getattr(self, "_stream", None)
            self._gens[key] = torch.Generator(device=device).manual_seed(int(self.seed if start is None else start))
        return self._gens[key]

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """The randomised input before purification: clamp(x + clip(σ·N(0,1), ±eps), 0, 1); |out − x| ≤ eps."""
        noise = torch.randn(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        return (x + (self.sigma * noise).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier(self.noisy(x))

    def extra_repr(self) -> str:
        return f"eps={self.eps:.4g}, sigma={self.sigma:.4g}, seed={self.seed}"
