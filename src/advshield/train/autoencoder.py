"""Training an autoencoder / VAE purifier against FGSM and PGD (seed 003).

Each step: a labelled batch x of the training split; the first ``clean_fraction`` of it stays clean, the rest is
attacked against the frozen classifier with one attack from ``attacks`` (FGSM, or PGD with ``pgd_steps`` steps of
2.5·eps/pgd_steps and a random start) at one eps drawn uniformly from [eps_min, eps_max]; then

- AE:  loss = MSE(x, AE(x_in))   (latent noise drawn as at inference);
- VAE: loss = MSE(x, D(z)) + β·KL / (C·H·W),  z ~ q(z | x_in) reparameterised (KL per sample, averaged over the
  batch; dividing by the pixel count puts it on the per-pixel MSE's scale, so β = 1 is the ELBO of a Gaussian
  decoder with variance ½).

Optional ``guide`` > 0 adds a classifier-guided term (in the spirit of HGD, Liao et al. 2018; not in the seed):
``guide · KL(softmax f(x) ‖ softmax f(purified))`` with f the frozen classifier, averaged over the batch — the
reconstruction keeps what the classifier reads from the clean image. The seed's loss is ``guide = 0`` (default).

Adam; the shared loop :func:`advshield.train.loop.run_steps` checkpoints and resumes. All randomness of step k
(batch indices, attack choice, eps, PGD start, latent noise) comes from generators seeded by (seed, k), so a
resumed run equals the uninterrupted one.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..attacks.base import Attack
from ..attacks.fgsm import FGSM
from ..attacks.pgd import PGD
from ..data import DATASETS, load_dataset
from ..data.tensors import TensorDataset, to_float
from ..defenses.autoencoder import AE_CONFIGS, build_autoencoder
from ..defenses.nrp import Purifier, count_parameters
from ..errors import AdvshieldError
from ..models import load_model
from ..models.checkpoint import save_checkpoint
from ..utils import seed_everything
from . import runtime
from .loop import check_accum, run_steps, step_generator, step_seed

KINDS = ("ae", "vae")
TRAIN_ATTACKS = ("fgsm", "pgd")
_DATA, _ADV, _NOISE, _EVAL = 0, 1, 2, 3  # streams of per-step randomness


@dataclass
class AutoencoderConfig:
    """Settings of one run. eps in [0,1] units; ``steps`` wins unless ``epochs`` is set."""

    name: str
    kind: str = "ae"  # "ae" or "vae"
    arch: str | None = None  # an AE_CONFIGS name of that kind (default "<kind>-fmnist")
    latent_dim: int | None = None  # overrides the config's
    latent_noise: float | None = None  # AE only: σ of the latent noise (0: vanilla; None: 1.0)
    model: str = "zoo:fmnist-lenet"  # the frozen classifier the adversaries are made against
    data: str = "fashion-mnist"  # a labelled dataset name (train split; test split for the final metrics)
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    eps_min: float = 5 / 255
    eps_max: float = 51 / 255
    pgd_steps: int = 3
    clean_fraction: float = 0.67
    steps: int = 7000
    epochs: int | None = None
    batch_size: int = 96
    lr: float = 1e-3
    beta: float = 0.1  # VAE only: weight of the per-pixel KL
    guide: float = 0.0  # weight of the classifier-guided KL term (0: the seed's pure reconstruction loss)
    eval_eps: float = 0.1
    eval_images: int = 500
    save_every: int = 200
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    threads: int | None = None
    amp: str | None = None  # "bf16" / "fp16" autocast on CUDA; ignored elsewhere
    accum: int = 1  # gradient accumulation: each process's rows of a batch run as this many parts
    arch_args: dict[str, Any] = field(default_factory=dict)  # filled in from AE_CONFIGS


# settings that may change between a run and its resume without changing the result (``accum`` and the process
# count change only batch-norm statistics of a micro-batch)
_RUNTIME_KEYS = ("device", "data_root", "threads", "save_every", "eval_images", "arch_args", "log_every", "amp",
                 "accum")


def _config_key(cfg: AutoencoderConfig) -> str:
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}, sort_keys=True)


def default_arch(kind: str) -> str:
    return f"{kind}-fmnist"


def check_config(cfg: AutoencoderConfig) -> None:
    """One-line errors for settings that cannot work."""
    check_accum(cfg.accum, cfg.batch_size, cfg.amp)
    if cfg.kind not in KINDS:
        raise AdvshieldError(f"unknown autoencoder kind {cfg.kind!r} (known: {', '.join(KINDS)})")
    arch = cfg.arch or default_arch(cfg.kind)
    if arch not in AE_CONFIGS:
        raise AdvshieldError(f"unknown autoencoder config {arch!r} (known: {', '.join(sorted(AE_CONFIGS))})")
    if AE_CONFIGS[arch][0] != cfg.kind:
        raise AdvshieldError(f"config {arch!r} is for --kind {AE_CONFIGS[arch][0]}, not {cfg.kind}")
    bad = [a for a in cfg.attacks if a not in TRAIN_ATTACKS]
    if bad or not cfg.attacks:
        raise AdvshieldError(f"unknown training attack {bad[0] if bad else ''!r} (known: {', '.join(TRAIN_ATTACKS)})")
    if not 0 <= cfg.eps_min <= cfg.eps_max <= 1:
        raise AdvshieldError(f"need 0 ≤ eps-min ≤ eps-max ≤ 255 (0-255 units), got {cfg.eps_min * 255:g} and "
                             f"{cfg.eps_max * 255:g}")
    if not 0 <= cfg.clean_fraction <= 1:
        raise AdvshieldError(f"clean fraction must be in [0, 1], not {cfg.clean_fraction}")
    for key in ("steps", "batch_size", "pgd_steps", "save_every", "log_every"):
        if int(getattr(cfg, key)) < 1:
            raise AdvshieldError(f"{key} must be a positive integer, not {getattr(cfg, key)!r}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise AdvshieldError(f"epochs must be a positive integer, not {cfg.epochs!r}")
    if cfg.latent_dim is not None and cfg.latent_dim < 1:
        raise AdvshieldError(f"latent dim must be a positive integer, not {cfg.latent_dim!r}")
    if (cfg.latent_noise or 0) < 0 or cfg.beta < 0 or cfg.guide < 0 or not cfg.lr > 0:
        raise AdvshieldError("latent noise, beta and guide must be non-negative and the learning rate positive")
    if cfg.kind == "vae" and cfg.latent_noise is not None:
        raise AdvshieldError("--latent-noise is for --kind ae (a VAE samples its latent by design)")
    if cfg.data not in DATASETS or cfg.data == "photos":
        known = ", ".join(sorted(n for n in DATASETS if n != "photos"))
        raise AdvshieldError(f"unknown labelled dataset {cfg.data!r} (known: {known})")


def build_net(cfg: AutoencoderConfig) -> tuple[nn.Module, str]:
    """The fresh purifier net of ``cfg`` (seeded by the caller); fills ``cfg.arch_args``; returns (net, arch)."""
    extra: dict[str, Any] = {"latent_dim": cfg.latent_dim}
    if cfg.kind == "ae":
        extra["latent_noise"] = 1.0 if cfg.latent_noise is None else cfg.latent_noise
    net, arch, args = build_autoencoder(cfg.arch or default_arch(cfg.kind), **extra)
    cfg.arch_args = args
    return net, arch


def make_attack(name: str, model: nn.Module, eps: float, pgd_steps: int) -> Attack:
    """FGSM at eps, or PGD (random start, ``pgd_steps`` steps of 2.5·eps/pgd_steps) against ``model``."""
    if name == "fgsm":
        return FGSM(model, eps=eps)
    return PGD(model, eps=eps, alpha=2.5 * eps / pgd_steps, steps=pgd_steps, random_start=True)


class BatchSource:
    """``source.indices(step)`` → the batch's indices: epoch e = step // (N // B) visits a permutation of the
    training set drawn from (seed, e); the last partial batch of an epoch is dropped."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise AdvshieldError(f"the training set has {n} images, fewer than the batch size {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=step_generator(self.seed, epoch, _DATA))
            self._epoch = epoch
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


class AutoencoderTrainer:
    """The purifier net, its optimiser, the frozen classifier and one training step.

    Under torchrun each rank trains on its rows of every batch (DistributedDataParallel, batch norms over the global
    batch); the clean/adversarial split, the attack's random start and the latent noise are drawn for the whole
    batch and sliced, so N processes take the same steps as one."""

    def __init__(self, cfg: AutoencoderConfig, net: nn.Module, classifier: nn.Module, train: TensorDataset,
                 device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.net = net.to(device)
        self.classifier = classifier.to(device).eval().requires_grad_(False)
        self.parallel = distributed.world()[1] > 1
        self.model = runtime.data_parallel(self.net, device)  # what the step calls
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.scaler = runtime.grad_scaler(cfg.amp, device)
        self.train_set = train
        self.source = BatchSource(len(train), cfg.batch_size, cfg.seed)
        self.rows = distributed.rows(cfg.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of step ``step``'s batch (all of it in one process)."""
        idx = self.source.indices(step)[self.rows]
        return to_float(self.train_set.images[idx]).to(self.device), self.train_set.labels[idx].to(self.device)

    def inputs(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The net's input for step ``step``: clean head, adversarial tail of the whole batch (x: this process's
        rows of it). Returns it and {"eps": …}."""
        cfg = self.cfg
        gen = step_generator(cfg.seed, step, _ADV)
        eps = cfg.eps_min + (cfg.eps_max - cfg.eps_min) * float(torch.rand(1, generator=gen))
        name = cfg.attacks[int(torch.randint(len(cfg.attacks), (1,), generator=gen))]
        total, lo = cfg.batch_size, self.rows.start
        n_clean = int(round(cfg.clean_fraction * total))
        head = min(len(x), max(0, n_clean - lo))  # this shard's clean rows
        if head >= len(x) or eps == 0:
            return x, {"eps": eps * 255}
        atk = make_attack(name, self.classifier, eps, cfg.pgd_steps)
        atk.seed = step_seed(cfg.seed, step, _ADV)
        if self.parallel:
            atk.shard = (lo + head - n_clean, total - n_clean)
        return torch.cat([x[:head], atk(x[head:], y[head:])]), {"eps": eps * 255}

    def guide_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """KL(softmax f(x) ‖ softmax f(recon)) averaged over the batch (f frozen; gradient flows to recon)."""
        with torch.no_grad():
            target = F.log_softmax(self.classifier(x), 1)
        return F.kl_div(F.log_softmax(self.classifier(recon), 1), target, log_target=True, reduction="batchmean")

    def step(self, step: int) -> dict[str, float]:
        """One Adam update on step ``step``'s batch; returns {"loss", "mse", ("kl"), "eps" (0-255)}."""
        x, y = self.batch(step)
        x_in, info = self.inputs(x, y, step)
        self.net.train()
        parts = list(zip(x.tensor_split(max(1, min(self.cfg.accum, len(x)))),
                         x_in.tensor_split(max(1, min(self.cfg.accum, len(x))))))
        sums: dict[str, float] = {}
        self.opt.zero_grad(set_to_none=True)
        at = self.rows.start
        for i, (xc, xi) in enumerate(parts):
            noise = getattr(self.net, "noise", None)
            if noise is not None:
                noise.shard = None if len(xc) == self.cfg.batch_size else (at, self.cfg.batch_size)
            with runtime.no_sync(self.model, i == len(parts) - 1), runtime.autocast(self.cfg.amp, self.device):
                loss, out = self._loss(xc, xi, step_generator(self.cfg.seed, step, _NOISE))
                self.scaler.scale(loss / len(parts)).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v / len(parts)
            at += len(xc)
        self.scaler.step(self.opt)
        self.scaler.update()
        return {**sums, **info}

    def _loss(self, x: torch.Tensor, x_in: torch.Tensor, noise: torch.Generator
              ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on one micro-batch (clean x, net input x_in) and its logged terms."""
        out: dict[str, float] = {}
        if self.cfg.kind == "vae":
            recon, kl = self.model(x_in, generator=noise, elbo=True)
            mse = F.mse_loss(recon.float(), x)
            loss = mse + self.cfg.beta * kl.float().mean() / x[0].numel()
            out["kl"] = float(kl.float().mean().detach())
        else:
            recon = self.model(x_in, generator=noise)
            mse = F.mse_loss(recon.float(), x)
            loss = mse
        if self.cfg.guide > 0:
            guide = self.guide_loss(x, recon)
            loss = loss + self.cfg.guide * guide
            out["guide"] = float(guide.detach())
        return loss, {"loss": float(loss.detach()), "mse": float(mse.detach()), **out}


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def evaluate_autoencoder(net: nn.Module, classifier: nn.Module, data: TensorDataset, eps: float, seed: int,
                         device: torch.device, batch_size: int = 250) -> dict[str, float]:
    """Top-1 of ``classifier`` on ``data`` clean and under FGSM / PGD-40 (step 0.01, random start) at ``eps``
    crafted on the bare classifier (purifier-unaware), without and with the purifier (eval mode, noise seeded
    with ``seed``); plus the clean reconstruction MSE. Accuracies in [0,1]."""
    net.eval()
    if hasattr(net, "seed_noise"):
        net.seed_noise(seed)
    purifier = Purifier(net).to(device).eval()
    sums = {k: 0 for k in ("clean_accuracy_undefended", "clean_accuracy", "fgsm_accuracy_undefended",
                           "fgsm_accuracy", "pgd_accuracy_undefended", "pgd_accuracy")}
    mse = 0.0
    attacks = {"fgsm": FGSM(classifier, eps=eps),
               "pgd": PGD(classifier, eps=eps, alpha=0.01, steps=40, random_start=True)}
    for i, (x, y) in enumerate(data.batches(batch_size)):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            px = purifier(x)
        mse += float((px - x).pow(2).flatten(1).mean(1).sum())
        sums["clean_accuracy_undefended"] += _correct(classifier, x, y)
        sums["clean_accuracy"] += _correct(classifier, px, y)
        for name, atk in attacks.items():
            atk.seed = step_seed(seed, i, _EVAL)
            x_adv = atk(x, y)
            sums[f"{name}_accuracy_undefended"] += _correct(classifier, x_adv, y)
            sums[f"{name}_accuracy"] += _correct(classifier, purifier(x_adv), y)
    n = max(len(data), 1)
    out = {k: round(v / n, 4) for k, v in sums.items()}
    out["clean_mse"] = round(mse / n, 6)
    return out


def _load_data(cfg: AutoencoderConfig, channels: int, size: int) -> tuple[TensorDataset, TensorDataset]:
    train = load_dataset(cfg.data, "train", cfg.data_root)
    test = load_dataset(cfg.data, "test", cfg.data_root)
    shape = tuple(train.images.shape[1:])
    if shape != (channels, size, size):
        raise AdvshieldError(f"{cfg.arch or default_arch(cfg.kind)} takes {channels}×{size}×{size} images but "
                             f"{cfg.data} has {'×'.join(map(str, shape))}; pick another --arch")
    return train, test


def _loss_text(cfg: AutoencoderConfig) -> str:
    recon = "AE(x_in)" if cfg.kind == "ae" else "D(z)"
    text = f"MSE(x, {recon})" + (" + beta * KL / (C*H*W)" if cfg.kind == "vae" else "")
    return text + (f" + guide * KL(softmax f(x) || softmax f({recon}))" if cfg.guide > 0 else "")


def train_autoencoder(cfg: AutoencoderConfig, out_dir: str | Path, work_dir: str | Path | None = None,
                      resume: bool = True, command: str | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (checkpoints under ``work_dir``, default OUT/.train/NAME, resumed from there), evaluate on the
    first ``eval_images`` test images, write ``OUT/NAME.safetensors`` + card (kind "purifier"). Returns the card."""
    check_config(cfg)
    device, size, log = runtime.start(cfg, log)
    seed_everything(cfg.seed)
    net, arch = build_net(cfg)
    train, test = _load_data(cfg, net.in_channels, net.image_size)
    classifier = load_model(cfg.model)
    trainer = AutoencoderTrainer(cfg, net, classifier, train, device)
    steps = cfg.epochs * trainer.source.per_epoch if cfg.epochs else cfg.steps
    work = Path(work_dir) if work_dir else Path(out_dir) / ".train" / cfg.name
    log(f"{cfg.name}: {arch} ({count_parameters(net):,} parameters) on {device}, {steps} steps of "
        f"{cfg.batch_size}, attacks {','.join(cfg.attacks)} on {cfg.model}, eps {cfg.eps_min * 255:g}-"
        f"{cfg.eps_max * 255:g}/255, clean fraction {cfg.clean_fraction:g}")
    result = run_steps(cfg.name, steps, trainer.step, work=work, config_key=_config_key(cfg),
                       state_fn=trainer.state_dict, load_fn=trainer.load_state_dict, resume=resume,
                       save_every=cfg.save_every, log_every=cfg.log_every, log=log)
    if not distributed.is_main():  # rank 0 evaluates and writes; the others return its card
        return distributed.broadcast(None)
    metrics: dict[str, Any] = {f"final_{k}": round(v, 6) for k, v in result.last.items()
                               if k != "eps" and math.isfinite(v)}
    if cfg.eval_images > 0:
        metrics.update(evaluate_autoencoder(trainer.net, trainer.classifier, test.subset(cfg.eval_images),
                                            cfg.eval_eps, cfg.seed, device))
        metrics.update(eval_images=min(cfg.eval_images, len(test)), eval_eps=round(cfg.eval_eps, 6),
                       eval_set=f"{cfg.data} test[:{min(cfg.eval_images, len(test))}], classifier {cfg.model}")
        log(f"{cfg.name}: clean {metrics['clean_accuracy']:.4f} "
            f"(undefended {metrics['clean_accuracy_undefended']:.4f}),"
            f" FGSM {metrics['fgsm_accuracy']:.4f} ({metrics['fgsm_accuracy_undefended']:.4f}), PGD-40 "
            f"{metrics['pgd_accuracy']:.4f} ({metrics['pgd_accuracy_undefended']:.4f}) at eps {cfg.eval_eps:g}")
    net = trainer.net.cpu().eval()
    card = {
        "name": cfg.name, "kind": "purifier", "dataset": cfg.data, "architecture": arch,
        "arch_args": cfg.arch_args, "config": cfg.arch or default_arch(cfg.kind),
        "parameters": count_parameters(net),
        "input": {"channels": net.in_channels, "size": net.image_size, "range": [0, 1],
                  "note": "other sizes are resized to this one and back"},
        "metrics": metrics,
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("data_root", "device", "threads",
                                                                          "arch_args", "amp", "accum")},
                     "total_steps": steps, "loss": _loss_text(cfg),
                     "train_time_s": round(result.elapsed, 1), "device": str(device), "processes": size,
                     "torch": torch.__version__},
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }
    return distributed.broadcast(save_checkpoint(net, Path(out_dir) / f"{cfg.name}.safetensors", card))

