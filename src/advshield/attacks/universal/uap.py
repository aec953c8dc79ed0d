"""UAP: universal adversarial perturbations (Moosavi-Dezfooli et al., CVPR 2017), built on batched DeepFool."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...checks import check_number
from ...registry import UNIVERSAL
from .base import FitSet, UniversalAttack, add_perturbation, fooling_rate, project


def deepfool(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, overshoot: float = 0.02, max_iter: int = 10,
             candidates: int = 10) -> torch.Tensor:
    """Multi-class DeepFool (Moosavi-Dezfooli et al. 2016) for a batch, each image on its own.

    x: N×C×H×W in [0,1], labels: N (the class to leave). Returns r N×C×H×W, ``(1 + overshoot)·r_tot``: the
    accumulated minimal L2 steps toward the nearest linearised boundary among the ``candidates`` classes with
    the highest logits at x (the label plus ``candidates − 1`` others). An image stops as soon as
    ``clamp(x + (1 + overshoot)·r_tot)`` leaves its label, or after ``max_iter`` steps. The model is evaluated on
    clamped points (the perturbed images are clamped when used)."""
    labels = labels.to(x.device)
    with torch.no_grad():
        logits = model(x)
    k = max(2, min(int(candidates), logits.shape[1]))
    others = logits.scatter(1, labels[:, None], float("-inf")).topk(k - 1, dim=1).indices  # N×(k-1)
    r_tot = torch.zeros_like(x)
    active = torch.arange(len(x), device=x.device)
    for _ in range(max_iter):
        with torch.enable_grad():
            xa = (x[active] + (1 + overshoot) * r_tot[active]).clamp(0, 1).requires_grad_(True)
            out = model(xa)
            keep = out.argmax(1) == labels[active]
            if not keep.any():
                break
            rows = torch.arange(len(active), device=x.device)
            f = out.gather(1, others[active]) - out[rows, labels[active]][:, None]  # N_a×(k-1), negative
            grads = [torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < f.shape[1] - 1)[0]
                     for j in range(f.shape[1])]
        w = torch.stack(grads, 1)[keep].detach()  # n×(k-1)×C×H×W
        f = f[keep].detach()
        wn = w.flatten(2).norm(dim=2).clamp_min(1e-12)  # n×(k-1)
        dist = f.abs() / wn
        best = dist.argmin(1)
        sel = torch.arange(len(best), device=x.device)
        step = (dist[sel, best] + 1e-4) / wn[sel, best]
        active = active[keep]
        r_tot[active] += step.view(-1, *[1] * (x.dim() - 1)) * w[sel, best]
    return (1 + overshoot) * r_tot


@UNIVERSAL.register("uap", "universal perturbation from accumulated DeepFool steps, projected (Moosavi-Dezfooli 2017)")
class UAP(UniversalAttack):
    """``UAP(model, eps=10/255, norm="linf", target_fooling=0.8, max_passes=10, overshoot=0.02, df_max_iter=10,
    candidates=10, batch_size=32, seed=None)``.

    Each pass visits the fit images in a seeded random order. For every image that δ does not fool yet (its
    prediction on clamp(x+δ) is still its clean prediction), DeepFool from clamp(x+δ) finds a minimal extra
    step r; δ ← project(δ + r). Stops once the fooling rate on the fit set reaches ``target_fooling`` (checked
    after each pass) or after ``max_passes``.

    Batching: images are taken ``batch_size`` at a time; which of them are still unfooled and their DeepFool
    steps are computed in parallel at the δ of the start of the batch, then added one after another, each
    followed by the projection. ``batch_size=1`` is the paper's sequential algorithm exactly; larger batches
    trade staleness of δ within a batch for speed."""

    name = "uap"
    iters_arg = "max_passes"

    def __init__(self, model: nn.Module, eps: float = 10 / 255, norm: str = "linf", seed: int | None = None,
                 target_fooling: float = 0.8, max_passes: int = 10, overshoot: float = 0.02, df_max_iter: int = 10,
                 candidates: int = 10, batch_size: int = 32, show_progress: bool = True) -> None:
        super().__init__(model, eps, norm, seed, batch_size, show_progress)
        self.target_fooling = check_number(target_fooling, "target_fooling", low=0.0, high=1.0)
        self.max_passes = int(check_number(max_passes, "max_passes", low=1, integer=True))
        self.overshoot = check_number(overshoot, "overshoot", low=0.0)
        self.df_max_iter = int(check_number(df_max_iter, "df_max_iter", low=1, integer=True))
        self.candidates = int(check_number(candidates, "candidates", low=2, integer=True))

    def _fit(self, data: Any) -> torch.Tensor:
        fs = FitSet.from_data(data)
        labels, dev, g = self.clean_labels(fs), self.device, self.generator()
        delta = torch.zeros(fs.shape, device=dev)
        for p, idx, end in self.shuffled_batches(fs, self.max_passes, g):
            x, y = fs.get(idx, dev), labels[idx].to(dev)
            with torch.no_grad():
                still = self.model(add_perturbation(x, delta)).argmax(1) == y
            if still.any():
                r = deepfool(self.model, add_perturbation(x[still], delta), y[still], self.overshoot,
                             self.df_max_iter, self.candidates)
                for ri in r:
                    delta = project(delta + ri, self.eps, self.norm)
            if end:
                rate = fooling_rate(self.model, fs, delta, clean=labels)
                self.history.append({"pass": p + 1, "fooling_rate": rate})
                if rate >= self.target_fooling:
                    break
        return delta
