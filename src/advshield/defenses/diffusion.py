"""Diffusion purification (DiffPure, Nie et al. ICML 2022) and the denoiser it needs.

- :class:`UNet`: a small ε-prediction U-Net (sinusoidal time embedding, one residual block per level with
  GroupNorm and SiLU, two stride-2 downsamplings, one self-attention block at the lowest resolution).
  N×C×H×W (H, W divisible by :attr:`UNet.multiple`, values in [-1, 1]) and timesteps N → predicted noise N×C×H×W.
- :class:`Schedule`: DDPM variance schedules (linear 1e-4…0.02 over T steps, or the cosine one of Nichol &
  Dhariwal) and the cumulative products ᾱ_t.
- :class:`DiffPure`: x in [0,1] → x₀ = 2x − 1 → x_{t*} = √ᾱ x₀ + √(1 − ᾱ) ε (ε ~ N(0, I), seeded) → ``steps``
  reverse steps to t = 0 (DDIM, η = 0, or DDPM ancestral sampling) → (x̂₀ + 1)/2 clamped to [0,1]. Images whose
  sides the denoiser cannot take are edge-padded to its multiple and cropped back.
  Randomized (attack it with EOT); differentiable end to end, each reverse step under gradient checkpointing so
  the memory of a backward pass stays flat in the number of steps; BPDA substitute: the identity.

Training (ε-prediction MSE, EMA weights) lives in :mod:`advshield.train.diffusion`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import Registry
from ..utils import mix
from .base import Defense

SCHEDULES = ("linear", "cosine")
DENOISERS: Registry = Registry("denoiser")  # architectures of diffusion checkpoints (card kind "diffusion")
SAMPLERS = ("ddim", "ddpm")


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps t (N, float or int) → N×dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], 1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 (+ time projection) → GroupNorm → SiLU → dropout → conv3×3, plus a (1×1) skip."""

    def __init__(self, cin: int, cout: int, tdim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(_groups(c), c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(a.transpose(1, 2).reshape(n, c, h, w))


@DENOISERS.register("unet", "ε-prediction U-Net of a DDPM (the denoiser DiffPure runs)")
class UNet(nn.Module):
    """``UNet(in_channels=1, base=32, mults=(1, 2, 2), attention=True, dropout=0.1)``: (x N×C×H×W in [-1,1],
    t N timesteps) → ε̂ N×C×H×W. H and W must be divisible by 2^(len(mults) − 1)."""

    def __init__(self, in_channels: int = 1, base: int = 32, mults: tuple[int, ...] | list[int] = (1, 2, 2),
                 attention: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels, self.base = in_channels, base
        widths = [base * m for m in mults]
        self.tdim = 4 * base
        self.time = nn.Sequential(nn.Linear(base, self.tdim), nn.SiLU(), nn.Linear(self.tdim, self.tdim))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(c, w, self.tdim, dropout))
            c = w
            if i < len(widths) - 1:
                self.pools.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1, self.mid2 = ResBlock(c, c, self.tdim, dropout), ResBlock(c, c, self.tdim, dropout)
        self.attn = Attention(c) if attention else nn.Identity()
        self.up = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(c + w, w, self.tdim, dropout))
            c = w
            if i > 0:
                self.ups.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out, self.conv_out = nn.GroupNorm(_groups(c), c), nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (2 per downsampling)."""
        return 2 ** len(self.pools)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(timestep_embedding(t, self.base).to(x.dtype))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            skips.append(h)
            if i < len(self.pools):
                h = self.pools[i](h)
        h = self.mid2(self.attn(self.mid1(h, temb)), temb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], 1), temb)
            if i < len(self.ups):
                h = self.ups[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class Schedule:
    """β_t and ᾱ_t = Π(1 − β) for t = 0 … T−1 (float64 on the CPU; :meth:`at` gathers them for a batch)."""

    def __init__(self, kind: str = "linear", steps: int = 1000) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {kind!r}")
        self.kind, self.steps = kind, int(steps)
        if kind == "linear":
            betas = torch.linspace(1e-4 * 1000 / steps, 0.02 * 1000 / steps, steps, dtype=torch.float64)
        else:
            s = 0.008
            f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alpha_bar = torch.cumprod(1 - betas, 0)

    def at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for timesteps t (N) shaped N×1×1×1 like ``like``."""
        return self.alpha_bar.to(like.device)[t.long()].to(like.dtype).view(-1, 1, 1, 1)


class DiffPure(Defense):
    """``DiffPure(denoiser, schedule, t_star=100, steps=10, sampler="ddim", seed=None, checkpoint_steps=True)``.

    ``t_star``: the diffusion timestep the input is noised to (out of ``schedule.steps``); ``steps``: reverse
    steps from t* to 0 (evenly spaced timesteps). Noise comes from a private generator seeded with ``seed`` (the
    same sequence over successive calls; :meth:`restart_noise` restarts it per batch) or torch's global RNG."""

    name = "diffpure"
    differentiable = True
    randomized = True

    def __init__(self, denoiser: nn.Module, schedule: Schedule, t_star: int = 100, steps: int = 10,
                 sampler: str = "ddim", seed: int | None = None, checkpoint_steps: bool = True) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        if not 1 <= int(t_star) < schedule.steps:
            raise ValueError(f"t_star must be in [1, {schedule.steps - 1}], not {t_star}")
        if not 1 <= int(steps) <= int(t_star):
            raise ValueError(f"steps must be in [1, t_star = {t_star}], not {steps}")
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.schedule, self.t_star, self.steps, self.sampler = schedule, int(t_star), int(steps), sampler
        self.seed, self.checkpoint_steps = seed, bool(checkpoint_steps)
        self._gens: dict[str, torch.Generator] = {}
        self._stream: int | None = None

    def restart_noise(self, stream: int) -> None:
        """Restart the seeded noise at the stream (own seed, ``stream``); unseeded: nothing (global RNG)."""
        self._gens.clear()
        self._stream = None if self.seed is None else mix(self.seed, stream)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        gen = None
        if self.seed is not None:
            key = str(like.device)
            if key not in self._gens:
                start = self.seed if self._stream is None else self._stream
                self._gens[key] = torch.Generator(device=like.device).manual_seed(int(start))
            gen = self._gens[key]
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)

    def timesteps(self) -> list[int]:
        """The reverse chain's timesteps, from t* down to its last step (> 0), evenly spaced."""
        return sorted({int(round(v)) for v in torch.linspace(self.t_star, 0, self.steps + 1)[:-1].tolist()},
                      reverse=True)

    def _step(self, x: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor | None) -> torch.Tensor:
        n = len(x)
        a_t = self.schedule.at(torch.full((n,), t), x)
        a_prev = self.schedule.at(torch.full((n,), t_prev), x) if t_prev >= 0 else torch.ones_like(a_t)
        eps = self.denoiser(x, torch.full((n,), t, device=x.device))
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        if self.sampler == "ddim" or noise is None:
            return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        # DDPM posterior q(x_{t'} | x_t, x0) for the (possibly strided) step t → t'
        beta = 1 - a_t / a_prev
        mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x) / (1 - a_t)
        var = beta * (1 - a_prev) / (1 - a_t)
        return mean + var.clamp_min(0).sqrt() * noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        m = int(getattr(self.denoiser, "multiple", 1))
        pad_h, pad_w = -h_in % m, -w_in % m
        x0 = x * 2 - 1
        if pad_h or pad_w:
            x0 = F.pad(x0, (0, pad_w, 0, pad_h), mode="replicate")
        a = self.schedule.at(torch.full((len(x),), self.t_star), x0)
        h = a.sqrt() * x0 + (1 - a).sqrt() * self._noise(x0)
        ts = self.timesteps()
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            noise = self._noise(h) if (self.sampler == "ddpm" and t_prev >= 0) else None
            if self.checkpoint_steps and torch.is_grad_enabled() and h.requires_grad:
                h = checkpoint(self._step, h, t, t_prev, noise, use_reentrant=False)
            else:
                h = self._step(h, t, t_prev, noise)
        return ((h[..., :h_in, :w_in] + 1) / 2).clamp(0, 1)

    def extra_repr(self) -> str:
        return (f"t_star={self.t_star}/{self.schedule.steps}, steps={self.steps}, sampler={self.sampler!r}, "
                f"schedule={self.schedule.kind!r}, seed={self.seed}")


def card_schedule(card: dict[str, Any]) -> Schedule:
    """The schedule a diffusion checkpoint's card states (``training.schedule``, ``training.timesteps``)."""
    t = card.get("training", {})
    return Schedule(t.get("schedule", "linear"), int(t.get("timesteps", 1000)))


def load_diffpure(spec: str = "zoo:ddpm-fmnist", t_star: int | None = None, steps: int | None = None,
                  sampler: str | None = None, seed: int | None = None) -> DiffPure:
    """:class:`DiffPure` with a trained denoiser: ``spec`` is ``zoo:NAME`` or a ``.safetensors`` file with its card
    (kind "diffusion"). ``t_star`` / ``steps`` / ``sampler`` default to the card's ``diffpure`` settings (100, 10 and
    ddim when it states none)."""
    from ..errors import ModelError
    from ..models.checkpoint import load_checkpoint
    from .purifier import purifier_path

    net, card = load_checkpoint(purifier_path(spec), DENOISERS)
    if card["kind"] != "diffusion":
        raise ModelError(f"{card['name']!r} is a {card['kind']}, not a diffusion denoiser")
    chosen = card.get("diffpure", {})
    t_star = int(chosen.get("t_star", 100) if t_star is None else t_star)
    steps = int(min(chosen.get("steps", 10), t_star) if steps is None else steps)
    sampler = str(chosen.get("sampler", "ddim") if sampler is None else sampler)
    pure = DiffPure(net, card_schedule(card), t_star=t_star, steps=steps, sampler=sampler, seed=seed)
    pure.card = card  # type: ignore[assignment]
    return pure
