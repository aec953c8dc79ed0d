"""Supervised training of a classifier with a fixed seed, per-epoch checkpoints and resume.

The result goes to the zoo as ``NAME.safetensors`` + ``NAME.json`` whose ``clean_accuracy`` is measured on
the full test split after training.

Under torchrun every rank draws the same shuffled global batch (and its augmentation) and trains on its rows with
DistributedDataParallel; batch norms use the global batch's statistics and the loss is the global batch's mean,
so N processes take the same steps as one process. Rank 0 evaluates, logs and checkpoints; a run resumes on any
process count.
"""
from __future__ import annotations

import csv
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..data import load_dataset
from ..data.tensors import TensorDataset, to_float
from ..errors import AdvshieldError
from ..models.checkpoint import save_checkpoint
from ..registry import MODELS
from ..utils import atomic_path, progress, seed_everything
from . import adversarial, runtime
from .loop import check_accum, step_seed


@dataclass
class ClassifierConfig:
    name: str
    arch: str
    dataset: str = "fashion-mnist"
    arch_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random shift by up to 2 px (zero padding) and horizontal flip
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    threads: int | None = None
    amp: str | None = None  # "bf16" / "fp16" autocast on CUDA; ignored elsewhere
    accum: int = 1  # gradient accumulation: each process's rows of a batch run as this many parts
    # adversarial training: {"method": "pgd" | "fgsm-rs" | "trades", "eps", ("steps", "alpha", "beta")}, see
    # advshield.train.adversarial; None: clean training
    adversarial: dict[str, Any] | None = None


ADV_EVAL_IMAGES = 1000  # test images of the PGD-10 accuracy an adversarially trained model's card reports

_RUNTIME_KEYS = ("device", "data_root", "threads", "amp", "accum")


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels and random horizontal flip, per sample. x: B×C×H×W."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    out = torch.stack([p[:, int(y) : int(y) + h, int(x) : int(x) + w] for p, y, x in zip(padded, dy, dx)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def _config_key(cfg: ClassifierConfig) -> str:
    """The settings that must match for a resume to continue the same run."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}
    return json.dumps(keep, sort_keys=True)


def evaluate_accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 500,
                      device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on every item of ``data``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in progress(data.batches(batch_size), "evaluate", total=-(-len(data) // batch_size)):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / max(len(data), 1)


def train_classifier(cfg: ClassifierConfig, out_dir: str | Path, work_dir: str | Path | None = None,
                     resume: bool = True, command: str | None = None, log=print) -> dict[str, Any]:
    """Train, checkpoint each epoch under ``work_dir``, resume from there, then write the zoo entry."""
    check_accum(cfg.accum, cfg.batch_size, cfg.amp)
    adversarial.check_adversarial(cfg.adversarial)
    device, size, log = runtime.start(cfg, log, split=False)  # uneven shards are fine: the loss is a global sum
    main = distributed.is_main()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir / ".train" / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(cfg.seed)
    train = load_dataset(cfg.dataset, "train", cfg.data_root)
    test = load_dataset(cfg.dataset, "test", cfg.data_root)
    model = MODELS.get(cfg.arch)(**cfg.arch_args).to(device)
    net = runtime.data_parallel(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.15)
    scaler = runtime.grad_scaler(cfg.amp, device)
    state_path = work / "state.pt"
    start_epoch, elapsed = 0, 0.0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if state.get("config") != _config_key(cfg):
            raise AdvshieldError(f"{state_path} was made with other settings; delete it or pass --fresh")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        log(f"resuming {cfg.name} at epoch {start_epoch}/{cfg.epochs}")
    distributed.barrier()  # every rank has read the checkpoint before rank 0 replaces it
    log_path = work / "log.csv"
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total_loss, seen = 0.0, 0
        bar = progress(range(steps_per_epoch), f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}", disable=not main)
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = to_float(train.images[idx]), train.labels[idx]
            if cfg.augment:
                x = augment_batch(x, gen)  # drawn for the whole batch on every rank
            mine = distributed.rows(len(y))
            xs, ys = x[mine].to(device), y[mine].to(device)
            x_adv = None
            if cfg.adversarial:
                x_adv = adversarial.craft(model, xs, ys, cfg.adversarial,
                                          step_seed(cfg.seed, epoch * steps_per_epoch + step, 1),
                                          (mine.start, len(y)) if size > 1 else None)
            loss = _step(net, opt, scaler, xs, ys, x_adv, len(y), cfg, size, device)
            sched.step()
            total_loss += loss
            seen += len(y)
        elapsed += time.time() - t0
        if main:
            test_acc = evaluate_accuracy(model, test.subset(2000), device=device)
            robust = f" PGD-10@500 {pgd_accuracy(model, test.subset(500), cfg, device):.4f}" \
                if cfg.adversarial else ""
            log(f"{cfg.name} epoch {epoch + 1}/{cfg.epochs} loss {total_loss / seen:.4f} "
                f"test@2k {test_acc:.4f}{robust} ({elapsed:.0f}s)")
            new = not log_path.exists()
            with open(log_path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["epoch", "train_loss", "test_acc_2k", "elapsed_s"])
                w.writerow([epoch + 1, f"{total_loss / seen:.5f}", f"{test_acc:.4f}", f"{elapsed:.1f}"])
            with atomic_path(state_path) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                            "config": _config_key(cfg),
                            "elapsed": elapsed}, tmp)
    model.eval()
    if not main:  # rank 0 evaluates and writes; the others return its card
        return distributed.broadcast(None)
    acc = evaluate_accuracy(model, test, device=device)
    log(f"{cfg.name}: clean accuracy on the {len(test)} test images = {acc:.4f}")
    robust: dict[str, Any] = {}
    if cfg.adversarial:
        n = min(ADV_EVAL_IMAGES, len(test))
        robust = {"pgd10_accuracy": round(pgd_accuracy(model, test.subset(n), cfg, device), 4),
                  "pgd10_images": n, "pgd10_eps": cfg.adversarial["eps"],
                  "pgd10_note": "PGD-10 (step eps/4, random start), white-box; advshield audit gives the "
                                "adaptive number"}
        log(f"{cfg.name}: PGD-10 accuracy on test[:{n}] at eps {cfg.adversarial['eps']:g} = "
            f"{robust['pgd10_accuracy']:.4f}")
    card = {
        "name": cfg.name, "kind": "classifier", "dataset": cfg.dataset, "architecture": cfg.arch,
        "arch_args": cfg.arch_args, "input": {"channels": int(train.images.shape[1]),
                                              "size": list(train.images.shape[2:]), "range": [0, 1]},
        "classes": train.classes,
        "metrics": {"clean_accuracy": round(acc, 4), "test_samples": len(test), **robust},
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("data_root", "device", "threads")},
                     "train_time_s": round(elapsed, 1), "device": str(device), "processes": size,
                     "torch": torch.__version__},
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }
    return distributed.broadcast(save_checkpoint(model.cpu(), out_dir / f"{cfg.name}.safetensors", card))


def _step(net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
          y: torch.Tensor, x_adv: torch.Tensor | None, total: int, cfg: ClassifierConfig, size: int,
          device: torch.device) -> float:
    """One SGD step on this rank's rows (x, y; their adversaries ``x_adv`` when training adversarially) of a global
    batch of ``total``; ``cfg.accum`` micro-batches. Each part's loss is its summed loss × N / total, so DDP's
    gradient mean is the global batch mean. Returns the summed loss of the whole global batch (for the log)."""
    opt.zero_grad(set_to_none=True)
    k = max(1, min(cfg.accum, len(x)))
    advs = x_adv.tensor_split(k) if x_adv is not None else [None] * k
    parts = list(zip(x.tensor_split(k), y.tensor_split(k), advs))
    local = 0.0
    for i, (xp, yp, ap) in enumerate(parts):
        with runtime.no_sync(net, i == len(parts) - 1), runtime.autocast(cfg.amp, device):
            if ap is None:
                loss = F.cross_entropy(net(xp).float(), yp, label_smoothing=cfg.label_smoothing, reduction="sum")
            else:
                loss = adversarial.loss(net, xp, ap, yp, cfg.adversarial, cfg.label_smoothing)
            scaler.scale(loss * size / total).backward()
        local += float(loss.detach())
    scaler.step(opt)
    scaler.update()
    return sum(distributed.mean_over_ranks({"loss": local}).values()) * size


def pgd_accuracy(model: nn.Module, data: TensorDataset, cfg: ClassifierConfig, device: torch.device,
                 batch_size: int = 250) -> float:
    """Accuracy under PGD-10 (step eps/4, random start, seeded) at the adversarial-training eps."""
    from ..attacks.pgd import PGD

    eps = float(cfg.adversarial["eps"])
    was = model.training
    model.eval()
    correct = 0
    for i, (x, y) in enumerate(data.batches(batch_size)):
        atk = PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True, seed=cfg.seed + i)
        x_adv = atk(x.to(device), y.to(device))
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1).cpu() == y).sum())
    model.train(was)
    return correct / max(len(data), 1)

