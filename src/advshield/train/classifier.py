"""Supervised training of a classifier with a fixed seed, per-epoch checkpoints and resume.

The result goes to the zoo as ``NAME.safetensors`` + ``NAME.json`` whose ``clean_accuracy`` is measured on
the full test split after training.
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

from ..data import load_dataset
from ..data.tensors import TensorDataset, to_float
from ..errors import AdvshieldError
from ..models.checkpoint import save_checkpoint
from ..registry import MODELS
from ..utils import atomic_path, pick_device, progress, seed_everything


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
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("device", "data_root", "threads")}
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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir / ".train" / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(cfg.seed)
    train = load_dataset(cfg.dataset, "train", cfg.data_root)
    test = load_dataset(cfg.dataset, "test", cfg.data_root)
    model = MODELS.get(cfg.arch)(**cfg.arch_args).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.15)
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
    log_path = work / "log.csv"
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total_loss, seen = 0.0, 0
        bar = progress(range(steps_per_epoch), f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}")
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = to_float(train.images[idx]), train.labels[idx]
            if cfg.augment:
                x = augment_batch(x, gen)
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
        elapsed += time.time() - t0
        test_acc = evaluate_accuracy(model, test.subset(2000), device=device)
        log(f"{cfg.name} epoch {epoch + 1}/{cfg.epochs} loss {total_loss / seen:.4f} "
            f"test@2k {test_acc:.4f} ({elapsed:.0f}s)")
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
    acc = evaluate_accuracy(model, test, device=device)
    log(f"{cfg.name}: clean accuracy on the {len(test)} test images = {acc:.4f}")
    card = {
        "name": cfg.name, "kind": "classifier", "dataset": cfg.dataset, "architecture": cfg.arch,
        "arch_args": cfg.arch_args, "input": {"channels": int(train.images.shape[1]),
                                              "size": list(train.images.shape[2:]), "range": [0, 1]},
        "classes": train.classes,
        "metrics": {"clean_accuracy": round(acc, 4), "test_samples": len(test)},
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("data_root", "device", "threads")},
                     "train_time_s": round(elapsed, 1), "device": str(device),
                     "torch": torch.__version__},
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }
    return save_checkpoint(model.cpu(), out_dir / f"{cfg.name}.safetensors", card)
