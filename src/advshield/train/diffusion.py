"""Training the DDPM denoiser DiffPure runs (Ho et al. 2020): ε-prediction on unlabelled training images.

Each step: a batch x₀ (images in [0,1] mapped to [-1,1], a random horizontal flip), timesteps t ~ U{0…T−1}
(or U{0…t_max−1}: DiffPure only runs the reverse process from t*, so a purifier needs no larger t),
noise ε ~ N(0, I), x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε; loss = mean (ε̂(x_t, t) − ε)²; Adam; an exponential moving
average of the weights (``ema``) is what the checkpoint ships. All randomness of step k is drawn from (seed, k)
for the whole batch (torchrun ranks take their rows), so a resumed or sharded run repeats the same steps.
"""
from __future__ import annotations

import copy
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import distributed
from ..data import load_dataset
from ..data.tensors import to_float
from ..defenses.diffusion import DENOISERS, SCHEDULES, DiffPure, Schedule, UNet
from ..errors import AdvshieldError
from ..models.checkpoint import save_checkpoint
from ..utils import seed_everything
from . import runtime
from .loop import check_accum, run_steps, step_generator
from .purifier import psnr

_DATA, _NOISE, _EVAL = 0, 1, 2


@dataclass
class DiffusionConfig:
    """Settings of one DDPM training run."""

    name: str
    data: str = "fashion-mnist"  # a registered dataset (train split) or an image folder (same-size images)
    base: int = 32
    mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    attention: bool = True
    dropout: float = 0.0  # 0 keeps torchrun runs equal to one process (dropout masks are per rank)
    schedule: str = "linear"
    timesteps: int = 1000
    t_max: int | None = None  # train on t < t_max only (DiffPure never goes above t*; None: all T steps)
    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    ema: float = 0.999
    flip: bool = True
    eval_images: int = 128
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    threads: int | None = None
    amp: str | None = None
    accum: int = 1


_RUNTIME_KEYS = ("device", "data_root", "threads", "save_every", "log_every", "eval_images", "amp", "accum", "steps")


def _config_key(cfg: DiffusionConfig) -> str:
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}, sort_keys=True)


def check_config(cfg: DiffusionConfig) -> None:
    """One-line errors for settings that cannot work."""
    check_accum(cfg.accum, cfg.batch_size, cfg.amp)
    if cfg.schedule not in SCHEDULES:
        raise AdvshieldError(f"schedule must be one of {', '.join(SCHEDULES)}, not {cfg.schedule!r}")
    for key in ("base", "timesteps", "steps", "batch_size", "save_every", "log_every"):
        if int(getattr(cfg, key)) < 1:
            raise AdvshieldError(f"{key} must be a positive integer, not {getattr(cfg, key)!r}")
    if not cfg.mults or any(int(m) < 1 for m in cfg.mults):
        raise AdvshieldError(f"mults must be positive integers, not {cfg.mults!r}")
    if cfg.t_max is not None and not 1 <= cfg.t_max <= cfg.timesteps:
        raise AdvshieldError(f"t_max must be in [1, timesteps = {cfg.timesteps}], not {cfg.t_max!r}")
    if not 0 <= cfg.ema < 1 or not 0 <= cfg.dropout < 1:
        raise AdvshieldError("ema and dropout must be in [0, 1)")


class DiffusionTrainer:
    """The denoiser, its EMA copy, the optimiser and one step. Under torchrun the denoiser is DDP-wrapped and each
    rank trains on its rows of every batch."""

    def __init__(self, cfg: DiffusionConfig, net: UNet, images: torch.Tensor, device: torch.device) -> None:
        self.cfg, self.device, self.images = cfg, device, images
        self.net = net.to(device)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.schedule = Schedule(cfg.schedule, cfg.timesteps)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.scaler = runtime.grad_scaler(cfg.amp, device)
        self.model = runtime.data_parallel(self.net, device)
        self.rows = distributed.rows(cfg.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x₀ in [-1,1], t, ε) of step ``step``: drawn for the whole batch, this rank's rows returned."""
        cfg = self.cfg
        gen = step_generator(cfg.seed, step, _DATA)
        idx = torch.randint(len(self.images), (cfg.batch_size,), generator=gen)
        x0 = to_float(self.images[idx]) * 2 - 1
        if cfg.flip:
            flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
            x0[flip] = x0[flip].flip(-1)
        noise_gen = step_generator(cfg.seed, step, _NOISE)
        t = torch.randint(cfg.t_max or cfg.timesteps, (cfg.batch_size,), generator=noise_gen)
        eps = torch.randn(x0.shape, generator=noise_gen)
        r = self.rows
        return x0[r].to(self.device), t[r].to(self.device), eps[r].to(self.device)

    def step(self, step: int) -> dict[str, float]:
        """One Adam update and EMA update; returns {"loss"} (this rank's)."""
        x0, t, eps = self.batch(step)
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        k = self.cfg.accum
        total = 0.0
        for i, (xp, tp, ep) in enumerate(zip(x0.tensor_split(k), t.tensor_split(k), eps.tensor_split(k))):
            a = self.schedule.at(tp, xp)
            xt = a.sqrt() * xp + (1 - a).sqrt() * ep
            with runtime.no_sync(self.model, i == k - 1), runtime.autocast(self.cfg.amp, self.device):
                loss = F.mse_loss(self.model(xt, tp).float(), ep)
                self.scaler.scale(loss / k).backward()
            total += float(loss.detach()) / k
        self.scaler.step(self.opt)
        self.scaler.update()
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters()):
                e.mul_(self.cfg.ema).add_(p.detach(), alpha=1 - self.cfg.ema)
        return {"loss": total}


def purification_psnr(denoiser: UNet, schedule: Schedule, images: torch.Tensor, t_stars: tuple[int, ...],
                      steps: int = 10, seed: int = 0) -> dict[str, float]:
    """Mean PSNR (dB) of DiffPure's output (DDIM, ``steps`` steps) against the clean ``images`` (N×C×H×W in [0,1])
    for each t* — how much of the image survives the noise: the clean cost side of choosing t*."""
    out = {}
    for t in t_stars:
        if t >= schedule.steps:
            continue
        pure = DiffPure(denoiser, schedule, t_star=t, steps=min(steps, t), seed=seed)
        with torch.no_grad():
            out[f"psnr_t{t}"] = round(float(psnr(pure(images), images).mean()), 3)
    return out


def train_diffusion(cfg: DiffusionConfig, out_dir: str | Path, work_dir: str | Path | None = None,
                    resume: bool = True, command: str | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (checkpoints under ``work_dir``, default OUT/.train/NAME; resumes), then write
    ``OUT/NAME.safetensors`` (the EMA weights) + card (kind "diffusion", architecture "unet"). Returns the card."""
    check_config(cfg)
    device, size, log = runtime.start(cfg, log)
    seed_everything(cfg.seed)
    train = load_dataset(cfg.data, "train", cfg.data_root)
    c, h, w = (int(v) for v in train.images.shape[1:])
    depth = 2 ** (len(cfg.mults) - 1)
    if h % depth or w % depth:
        raise AdvshieldError(f"images of {h}×{w} do not halve {len(cfg.mults) - 1} times; use fewer --mults")
    arch_args = {"in_channels": c, "base": cfg.base, "mults": list(cfg.mults), "attention": cfg.attention,
                 "dropout": cfg.dropout}
    net = UNet(**arch_args)
    trainer = DiffusionTrainer(cfg, net, train.images, device)
    work = Path(work_dir) if work_dir else Path(out_dir) / ".train" / cfg.name
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{cfg.name}: U-Net ({n_params:,} parameters) on {device}, {cfg.data} ({len(train)} images {c}×{h}×{w}), "
        f"{cfg.schedule} schedule, T = {cfg.timesteps}, {cfg.steps} steps of {cfg.batch_size}")
    result = run_steps(cfg.name, cfg.steps, trainer.step, work=work, config_key=_config_key(cfg),
                       state_fn=trainer.state_dict, load_fn=trainer.load_state_dict, resume=resume,
                       save_every=cfg.save_every, log_every=cfg.log_every, log=log)
    if not distributed.is_main():
        return distributed.broadcast(None)
    ema = trainer.ema.cpu().eval()
    metrics: dict[str, Any] = {f"final_{k}": round(v, 6) for k, v in result.last.items() if math.isfinite(v)}
    if cfg.eval_images:
        try:
            held = load_dataset(cfg.data, "test", cfg.data_root)
            images, desc = to_float(held.images[: cfg.eval_images]), f"{cfg.data} test[:{cfg.eval_images}]"
        except Exception:  # noqa: BLE001 - a folder has no test split: use training images
            images, desc = to_float(train.images[: cfg.eval_images]), f"{cfg.data} train[:{cfg.eval_images}]"
        ts = tuple(t for t in (25, 50, 100, 150, 200) if t < (cfg.t_max or cfg.timesteps))
        metrics.update(purification_psnr(ema, trainer.schedule, images, ts, seed=cfg.seed))
        metrics["psnr_set"] = f"{desc}, DiffPure DDIM 10 steps (or t* if fewer)"
        log(f"{cfg.name}: DiffPure PSNR by t*: " + ", ".join(f"{k[6:]} {v:.2f} dB" for k, v in metrics.items()
                                                             if k.startswith("psnr_t")))
    card = {
        "name": cfg.name, "kind": "diffusion", "dataset": cfg.data, "architecture": "unet", "arch_args": arch_args,
        "parameters": n_params, "input": {"channels": c, "size": [h, w], "range": [0, 1]},
        "metrics": metrics,
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("data_root", "device", "threads", "amp",
                                                                          "accum")},
                     "weights": f"EMA (decay {cfg.ema})", "train_time_s": round(result.elapsed, 1),
                     "device": str(device), "processes": size, "torch": torch.__version__},
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }
    return distributed.broadcast(save_checkpoint(ema, Path(out_dir) / f"{cfg.name}.safetensors", card, DENOISERS))

