"""sPGD: stochastic projected gradient ascent over mini-batches (Mummadi et al. 2019; the FRU paper's sPGD)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...checks import check_number
from ...registry import UNIVERSAL
from .base import (
    FitSet,
    UniversalAttack,
    add_perturbation,
    ascent_step,
    clipped_cross_entropy,
    decayed_step,
    loss_gradient,
    project,
)


@UNIVERSAL.register("spgd", "stochastic PGD: ascend clipped cross-entropy over mini-batches, project (Mummadi 2019)")
class SPGD(UniversalAttack):
    """``SPGD(model, eps=10/255, norm="linf", epochs=5, batch_size=64, alpha=None, loss_clip=5.0, seed=None)``.

    Starting from δ = 0, for each mini-batch (seeded shuffle, ``epochs`` passes) ascend the mean over the batch
    of min(CE(model(clamp(x+δ)), clean prediction), ``loss_clip``) with one step of ``alpha``: ``alpha·sign(∇)``
    (L∞) or ``alpha·∇/‖∇‖₂`` (L2), then project onto the eps ball. Clipping the per-image loss stops images that
    are already fooled (clean-class probability below e^-loss_clip) from steering δ. The step starts at
    ``alpha`` (default eps/4) and decays linearly to alpha/10 over the run (early steps move δ, late ones refine)."""

    name = "spgd"
    iters_arg = "epochs"

    def __init__(self, model: nn.Module, eps: float = 10 / 255, norm: str = "linf", seed: int | None = None,
                 epochs: int = 5, batch_size: int = 64, alpha: float | None = None, loss_clip: float = 5.0,
                 show_progress: bool = True) -> None:
        super().__init__(model, eps, norm, seed, batch_size, show_progress)
        self.epochs = int(check_number(epochs, "epochs", low=1, integer=True))
        self.alpha = None if alpha is None else check_number(alpha, "alpha", low=0.0, low_open=True)
        self.loss_clip = check_number(loss_clip, "loss_clip", low=0.0, low_open=True)

    def _fit(self, data: Any) -> torch.Tensor:
        fs = FitSet.from_data(data)
        labels, dev, g = self.clean_labels(fs), self.device, self.generator()
        total = self.epochs * len(fs.chunks(self.batch_size))
        a0 = self.alpha if self.alpha is not None else self.eps / 4
        delta = torch.zeros(fs.shape, device=dev)
        for t, (e, idx, end) in enumerate(self.shuffled_batches(fs, self.epochs, g)):
            x, y = fs.get(idx, dev), labels[idx].to(dev)
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = clipped_cross_entropy(self.model(add_perturbation(x, delta)), y, self.loss_clip)
                grad = loss_gradient(loss, delta)
            step = decayed_step(a0, t, total)
            delta = project(ascent_step(delta.detach(), grad, step, self.norm), self.eps, self.norm)
            if end:
                self.history.append({"epoch": e + 1, "last_batch_loss": float(loss.detach())})
        return delta
