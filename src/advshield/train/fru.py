"""Training selective feature regeneration units (Borkar et al. 2020) on a frozen classifier.

1. A training pool of universal perturbations (UAP by default) is fitted on disjoint slices of the training
   split (never on test images); it is cached in the work folder so a resumed run does not refit it.
2. Each step draws a batch of training images; the batch fed to the network holds the clean images and the same
   images plus a perturbation drawn from the pool (per image). With ``synthetic`` on (default), half of the drawn
   perturbations are a random convex combination of two pool members rescaled to the budget, and every drawn
   perturbation is randomly shifted by up to 2 px and mirrored: cheap diversity from a small pool (our choice,
   in the spirit of the paper's synthetic perturbations; the strength never exceeds the training eps). With
   ``zoom`` > 0, that share of the drawn perturbations is replaced by a random square crop of a pool member
   (side ½–¾ of the image) upsampled bilinearly to full size and rescaled to the budget: lower-frequency
   variants of the same UAPs (our choice; the network still only ever sees UAP-derived perturbations). With
   ``negate`` > 0, that share of the drawn perturbations is used with the opposite sign (our choice: UAPs fitted
   on Fashion-MNIST are biased towards brightening; −δ has the same norm and spatial pattern).
3. Loss: cross-entropy of the base task on both halves; Adam on the FRU parameters only.

The result is a zoo classifier ``NAME`` (architecture ``fru``, card field ``base``) holding base + FRU weights.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .. import distributed
from ..data import load_dataset
from ..data.tensors import TensorDataset, to_float
from ..defenses.fru import FRUNet
from ..errors import AdvshieldError
from ..models import load_model
from ..models.checkpoint import save_checkpoint
from ..registry import UNIVERSAL
from ..utils import atomic_path, seed_everything
from . import runtime
from .classifier import augment_batch, evaluate_accuracy
from .loop import check_accum, run_steps, step_generator

_DATA, _PERT = 0, 1  # streams of per-step randomness


@dataclass
class FRUConfig:
    """Settings of one FRU training run. ``eps`` in [0,1] units (L∞ or L2 per ``norm``)."""

    name: str
    model: str = "zoo:fmnist-vgg"  # zoo:NAME or a .safetensors classifier with its card
    data: str = "fashion-mnist"
    attack: str = "uap"  # the UNIVERSAL attack that makes the training pool
    eps: float = 0.1
    norm: str = "linf"
    pool_size: int = 8
    pool_images: int = 1000  # training images each pool perturbation is fitted on
    attack_args: dict[str, Any] | None = None
    layers: Sequence[str] | None = None
    k: int = 6
    fraction: float = 0.5
    depth: int | None = None
    synthetic: bool = True
    zoom: float = 0.0  # share of drawn perturbations replaced by zoomed-in (lower-frequency) UAP crops
    negate: float = 0.0  # share of drawn perturbations used with the opposite sign
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    save_every: int = 100
    log_every: int = 10
    eval_images: int = 2000
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    threads: int | None = None
    amp: str | None = None  # "bf16" / "fp16" autocast on CUDA; ignored elsewhere
    accum: int = 1  # gradient accumulation: each process's rows of a batch run as this many parts


_RUNTIME_KEYS = ("device", "data_root", "threads", "save_every", "log_every", "eval_images", "amp", "accum")


def _config_key(cfg: FRUConfig) -> str:
    keep = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}
    return json.dumps(keep, sort_keys=True)


def _pool_key(cfg: FRUConfig) -> str:
    keys = ("model", "data", "attack", "eps", "norm", "pool_size", "pool_images", "attack_args", "seed")
    return json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True)


def check_config(cfg: FRUConfig) -> None:
    """One-line errors for settings that cannot work."""
    check_accum(cfg.accum, cfg.batch_size, cfg.amp)
    if cfg.attack not in UNIVERSAL:
        raise AdvshieldError(f"unknown universal attack {cfg.attack!r} (known: {', '.join(UNIVERSAL.names())})")
    if cfg.norm not in ("linf", "l2"):
        raise AdvshieldError(f"norm must be linf or l2, not {cfg.norm!r}")
    if not cfg.eps > 0:
        raise AdvshieldError(f"eps must be positive, not {cfg.eps}")
    for key in ("pool_size", "pool_images", "steps", "batch_size", "save_every", "log_every", "k"):
        if int(getattr(cfg, key)) < 1:
            raise AdvshieldError(f"{key} must be a positive integer, not {getattr(cfg, key)!r}")
    if not 0 < cfg.fraction <= 1:
        raise AdvshieldError(f"fraction must be in (0, 1], not {cfg.fraction}")
    if not 0 <= cfg.zoom <= 1:
        raise AdvshieldError(f"zoom must be in [0, 1], not {cfg.zoom}")
    if not 0 <= cfg.negate <= 1:
        raise AdvshieldError(f"negate must be in [0, 1], not {cfg.negate}")


def fit_pool(cfg: FRUConfig, model: torch.nn.Module, train: TensorDataset, work: Path,
             log: Callable[[str], None] = print) -> tuple[torch.Tensor, float]:
    """``pool_size`` perturbations (P×C×H×W) of ``cfg.attack`` on disjoint slices of ``train``, each seeded
    ``seed + i``; cached in WORK/pool.safetensors. Returns (pool, seconds its fitting took)."""
    path = work / "pool.safetensors"
    if path.exists():
        try:
            stored = load_file(str(path))
            meta = bytes(stored["key"].tolist()).decode()
        except Exception:  # noqa: BLE001 - a damaged cache is simply refitted
            meta = None
        if meta == _pool_key(cfg):
            log(f"{cfg.name}: training pool of {len(stored['pool'])} {cfg.attack} perturbations from {path}")
            return stored["pool"], float(stored["fit_time"])
    need = cfg.pool_size * cfg.pool_images
    if need > len(train):
        raise AdvshieldError(f"pool needs {need} training images ({cfg.pool_size}×{cfg.pool_images}); "
                             f"{cfg.data} has {len(train)}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    cls = UNIVERSAL.get(cfg.attack)
    rank, size = distributed.world()
    t0, mine = time.time(), []
    for i in range(rank, cfg.pool_size, size):  # under torchrun member i is fitted on rank i % N
        idx = order[i * cfg.pool_images : (i + 1) * cfg.pool_images]
        atk = cls(model, eps=cfg.eps, norm=cfg.norm, seed=cfg.seed + i, **(cfg.attack_args or {}))
        mine.append((i, atk.fit(to_float(train.images[idx])).detach().cpu().float()))
        log(f"{cfg.name}: pool perturbation {i + 1}/{cfg.pool_size} fitted ({time.time() - t0:.0f}s)")
    pool = sorted((p for part in distributed.gather(mine) for p in part), key=lambda p: p[0])
    stacked, fit_time = torch.stack([d for _, d in pool]), time.time() - t0
    key = torch.tensor(list(_pool_key(cfg).encode()), dtype=torch.uint8)
    if distributed.is_main():
        with atomic_path(path) as tmp:
            save_file({"pool": stacked.contiguous(), "key": key, "fit_time": torch.tensor(fit_time)}, str(tmp))
    return stacked, fit_time


def _rescale(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Scale each B×C×H×W perturbation so its L∞ (or L2) norm is ``eps``."""
    flat = delta.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    return delta * (eps / size.clamp_min(1e-12)).view(-1, 1, 1, 1)


def zoomed(delta: torch.Tensor, gen: torch.Generator, eps: float, norm: str) -> torch.Tensor:
    """Per perturbation (B×C×H×W): a random square crop of side ½–¾ of min(H, W), upsampled bilinearly back to
    H×W and rescaled to norm ``eps`` — the same pattern at a lower spatial frequency."""
    b, _, h, w = delta.shape
    out = torch.empty_like(delta)
    for i in range(b):
        side = int(torch.randint(min(h, w) // 2, 3 * min(h, w) // 4 + 1, (1,), generator=gen))
        top = int(torch.randint(0, h - side + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - side + 1, (1,), generator=gen))
        crop = delta[i : i + 1, :, top : top + side, left : left + side]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    return _rescale(out, eps, norm)


def draw_perturbations(pool: torch.Tensor, n: int, gen: torch.Generator, eps: float, norm: str,
                       synthetic: bool, zoom: float = 0.0, negate: float = 0.0) -> torch.Tensor:
    """``n`` perturbations (n×C×H×W) drawn from ``pool``; with ``synthetic``, half are convex combinations of
    two members rescaled to ``eps``, and all are shifted ≤ 2 px and mirrored at random; then a share ``zoom``
    (0–1) is replaced by :func:`zoomed` crops of pool members, and a share ``negate`` flips sign. Norm stays
    ≤ eps."""
    first = pool[torch.randint(len(pool), (n,), generator=gen)]
    if synthetic:
        second = pool[torch.randint(len(pool), (n,), generator=gen)]
        a = torch.rand(n, 1, 1, 1, generator=gen)
        mixed = _rescale(a * first + (1 - a) * second, eps, norm)
        use_mix = (torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1)
        delta = augment_batch(torch.where(use_mix, mixed, first), gen)  # zero padding: norms never grow
    else:
        delta = first
    if zoom > 0:
        pick = torch.rand(n, generator=gen) < zoom
        if pick.any():
            delta = delta.clone()
            delta[pick] = zoomed(first[pick], gen, eps, norm)
    if negate > 0:
        sign = torch.where(torch.rand(n, generator=gen) < negate, -1.0, 1.0).to(delta.dtype)
        delta = delta * sign.view(-1, *([1] * (delta.dim() - 1)))
    return delta


class FRUTrainer:
    """One optimisation step on clean + perturbed copies of a batch; owns the network and the optimiser."""

    def __init__(self, cfg: FRUConfig, net: FRUNet, pool: torch.Tensor, train: TensorDataset,
                 device: torch.device) -> None:
        self.cfg, self.net, self.pool, self.train_set, self.device = cfg, net.to(device), pool, train, device
        self.opt = torch.optim.Adam(net.fru_parameters(), lr=cfg.lr)
        self.model = runtime.data_parallel(self.net, device)  # FRU batch norms over the global batch under torchrun
        self.scaler = runtime.grad_scaler(cfg.amp, device)

    def state_dict(self) -> dict[str, Any]:
        return {"frus": {k: v for k, v in self.net.state_dict().items() if ".fru." in k}, "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["frus"], strict=False)
        self.opt.load_state_dict(state["opt"])

    def step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        gen = step_generator(cfg.seed, step, _DATA)
        idx = torch.randint(len(self.train_set), (cfg.batch_size,), generator=gen)
        x, y = to_float(self.train_set.images[idx]), self.train_set.labels[idx]
        delta = draw_perturbations(self.pool, len(x), step_generator(cfg.seed, step, _PERT), cfg.eps, cfg.norm,
                                   cfg.synthetic, cfg.zoom, cfg.negate)
        mine = distributed.rows(len(x))  # the whole batch is drawn on every rank; each trains on its rows
        x, y, delta = x[mine], y[mine], delta[mine]
        n_parts = max(1, min(cfg.accum, len(x)))
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        sums = {"total": 0.0, "clean": 0.0, "perturbed": 0.0}
        for i, (xp, yp, dp) in enumerate(zip(x.tensor_split(n_parts), y.tensor_split(n_parts),
                                             delta.tensor_split(n_parts))):
            xb = torch.cat([xp, (xp + dp).clamp(0, 1)]).to(self.device)
            yb = torch.cat([yp, yp]).to(self.device)
            with runtime.no_sync(self.model, i == n_parts - 1), runtime.autocast(cfg.amp, self.device):
                logits = self.model(xb).float()
                loss_clean = F.cross_entropy(logits[: len(xp)], yb[: len(xp)])
                loss_pert = F.cross_entropy(logits[len(xp):], yb[len(xp):])
                loss = (loss_clean + loss_pert) / 2
                self.scaler.scale(loss / n_parts).backward()
            for k, v in (("total", loss), ("clean", loss_clean), ("perturbed", loss_pert)):
                sums[k] += v.item() / n_parts
        self.scaler.step(self.opt)
        self.scaler.update()
        self.net.eval()
        return sums


def _base_card(model: torch.nn.Module, spec: str) -> dict[str, Any]:
    card = getattr(model, "card", None)
    if not isinstance(card, dict) or "architecture" not in card:
        raise AdvshieldError(f"{spec} has no card: the FRU model can only be saved on a zoo/.safetensors "
                             "classifier (use advshield.defenses.fru.insert_frus for other models)")
    return card


def perturbed_accuracy(model: torch.nn.Module, data: TensorDataset, delta: torch.Tensor,
                       batch_size: int = 500) -> float:
    """Top-1 of ``model`` on clamp(x + delta) over ``data``."""
    shifted = TensorDataset((to_float(data.images) + delta).clamp(0, 1), data.labels, data.classes, data.name)
    return evaluate_accuracy(model, shifted, batch_size)


def train_fru(cfg: FRUConfig, out_dir: str | Path, work_dir: str | Path | None = None, resume: bool = True,
              command: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the pool, train the FRUs (checkpoints under ``work_dir``, default OUT/.train/NAME; resumes), then
    write ``OUT/NAME.safetensors`` + card (kind "classifier", architecture "fru"). Returns the card."""
    check_config(cfg)
    device, size, log = runtime.start(cfg, log)
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    base = load_model(cfg.model)
    card = _base_card(base, cfg.model)
    train = load_dataset(cfg.data, "train", cfg.data_root)
    test = load_dataset(cfg.data, "test", cfg.data_root).subset(cfg.eval_images or None)
    net = FRUNet(base, cfg.layers, cfg.k, cfg.fraction, cfg.depth)
    n_fru = sum(p.numel() for p in net.fru_parameters())
    work = Path(work_dir) if work_dir else out_dir / ".train" / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    if not resume and (work / "pool.safetensors").exists() and distributed.is_main():
        (work / "pool.safetensors").unlink()
    distributed.barrier()
    pool, pool_time = fit_pool(cfg, base.to(device), train, work, log)
    trainer = FRUTrainer(cfg, net, pool, train, device)
    log(f"{cfg.name}: FRUs on {', '.join(net.layers)} of {cfg.model} ({n_fru:,} trainable parameters), "
        f"pool {len(pool)} × {cfg.attack} at {cfg.norm} {cfg.eps:.4g}")
    result = run_steps(cfg.name, cfg.steps, trainer.step, work=work, config_key=_config_key(cfg),
                       state_fn=trainer.state_dict, load_fn=trainer.load_state_dict, resume=resume,
                       save_every=cfg.save_every, log_every=cfg.log_every, log=log)
    if not distributed.is_main():  # rank 0 evaluates and writes; the others return its card
        return distributed.broadcast(None)
    net = trainer.net.cpu().eval()
    base = base.cpu().eval()
    metrics: dict[str, Any] = {f"final_loss_{k}": round(v, 6) for k, v in result.last.items()}
    if cfg.eval_images:
        base_acc, clean_acc = evaluate_accuracy(base, test), evaluate_accuracy(net, test)
        full = load_dataset(cfg.data, "test", cfg.data_root)  # a card's clean_accuracy is the full test set's
        full_base, full_clean = evaluate_accuracy(base, full), evaluate_accuracy(net, full)
        pert = [perturbed_accuracy(net, test, d) for d in pool]
        pert_base = [perturbed_accuracy(base, test, d) for d in pool]
        metrics.update({
            "clean_accuracy": round(full_clean, 4), "base_clean_accuracy": round(full_base, 4),
            "test_samples": len(full), f"clean_accuracy_first_{len(test)}": round(clean_acc, 4),
            f"base_clean_accuracy_first_{len(test)}": round(base_acc, 4),
            "pool_perturbed_accuracy": round(sum(pert) / len(pert), 4),
            "pool_perturbed_accuracy_base": round(sum(pert_base) / len(pert_base), 4),
            "pool_restoration_accuracy": round((clean_acc + sum(pert) / len(pert)) / (2 * base_acc), 4),
            "eval_images": len(test),
            "eval_set": f"clean_accuracy, base_clean_accuracy: {cfg.data} test (all {len(full)}); "
                        f"*_first_{len(test)} and pool_*: test[:{len(test)}] "
                        "(training pool perturbations)"})
        log(f"{cfg.name}: clean {base_acc:.4f} → {clean_acc:.4f}; training-pool perturbations "
            f"{metrics['pool_perturbed_accuracy_base']:.4f} → {metrics['pool_perturbed_accuracy']:.4f}")
    out = {
        "name": cfg.name, "kind": "classifier", "dataset": cfg.data, "architecture": "fru",
        "arch_args": {"base_arch": card["architecture"], "base_args": card["arch_args"], "layers": net.layers,
                      "fraction": cfg.fraction, "depth": cfg.depth},
        "base": card["name"], "base_sha256": card.get("sha256"),
        "input": card.get("input", {"channels": 1, "range": [0, 1]}),
        "parameters": {"fru": n_fru, "total": sum(p.numel() for p in net.parameters())},
        "metrics": metrics,
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("device", "data_root", "threads",
                                                                          "amp", "accum")},
                     "ranking": "filter weight l1 norm, largest first", "pool_fit_time_s": round(pool_time, 1),
                     "train_time_s": round(result.elapsed, 1), "total_time_s": round(result.elapsed + pool_time, 1),
                     "device": str(device), "processes": size, "torch": torch.__version__},
        "command": command or "",
    }
    return distributed.broadcast(save_checkpoint(net, out_dir / f"{cfg.name}.safetensors", out))

