"""GAP: generative adversarial perturbations, universal variant (Poursaeed et al., CVPR 2018)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...checks import check_number
from ...errors import AdvshieldError
from ...registry import UNIVERSAL
from .base import FitSet, UniversalAttack, add_perturbation, check_budget, clipped_cross_entropy


class PerturbationGenerator(nn.Module):
    """A small DCGAN-style decoder: z (N×``z_dim``) → linear → ``width``×h×w grid (h = ceil(H/2^s)) → s × (2×
    bilinear upsampling, 3×3 conv, ReLU) → 3×3 conv to C channels at exactly H×W. ``s`` = 2 for 28-32 px inputs,
    up to 4 for ImageNet-size ones.

    The output pattern N×C×H×W is standardised: zero spatial mean per channel, unit standard deviation per
    sample. Without this the generator's strongest direction, a uniform brightness shift, takes over and tanh
    saturates on it within a few Adam steps (measured on the zoo VGG: δ = +eps everywhere, fooling 0.39; with it
    0.72). :meth:`scale` maps the pattern into the budget."""

    def __init__(self, shape: tuple[int, int, int], z_dim: int = 64, width: int = 32) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.stages = max(1, min(4, round(math.log2(max(1.0, min(h, w) / 7)))))
        self.grid = (math.ceil(h / 2**self.stages), math.ceil(w / 2**self.stages))
        self.width = width
        self.fc = nn.Linear(z_dim, width * self.grid[0] * self.grid[1])
        self.ups = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(self.stages))
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def reset_parameters(self, g: torch.Generator) -> None:
        """Kaiming-uniform weights (PyTorch's default rule) drawn from ``g``; zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        y = F.relu(self.fc(z)).view(len(z), self.width, *self.grid)
        for i, conv in enumerate(self.ups):
            size = (h, w) if i == self.stages - 1 else None
            y = F.interpolate(y, size=size, scale_factor=None if size else 2.0, mode="bilinear", align_corners=False)
            y = F.relu(conv(y))
        p = self.out(y)
        p = p - p.mean((-2, -1), keepdim=True)
        return p / p.flatten(1).std(1).clamp_min(1e-12).view(-1, 1, 1, 1)

    @staticmethod
    def scale(pattern: torch.Tensor, eps: float, norm: str, sharpness: float = 2.0) -> torch.Tensor:
        """Standardised pattern → perturbation in the budget: eps·tanh(sharpness·pattern) (L∞), or the pattern
        rescaled to L2 length eps."""
        check_budget(eps, norm)
        if norm == "linf":
            return eps * torch.tanh(sharpness * pattern)
        return pattern * (eps / pattern.norm().clamp_min(1e-12))


def fooling_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of −log(1 − p_label): small once the clean label's probability is low. Computed stably as
    logsumexp(all logits) − logsumexp(logits without the label)."""
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return (logits.logsumexp(1) - others.logsumexp(1)).mean()


@UNIVERSAL.register("gap", "generative: train a small generator from fixed noise to a universal δ (Poursaeed 2018)")
class GAP(UniversalAttack):
    """``GAP(model, eps=10/255, norm="linf", epochs=5, batch_size=64, lr=1e-3, loss="ce", loss_clip=5.0,
    z_dim=64, width=32, seed=None)``.

    A :class:`PerturbationGenerator` (seeded initialisation) maps one fixed seeded noise vector z ~ N(0, I) to a
    standardised pattern p and δ = eps·tanh(2p) (L∞) or p rescaled to length eps (L2). Adam (``lr``) trains G
    over ``epochs`` shuffled passes of the fit set to push clamp(x + δ) away from the model's clean prediction:
    ``loss="ce"`` maximises the cross-entropy clipped at ``loss_clip`` (as sPGD); ``"fool"`` minimises the
    fooling loss −log(1 − p_clean) (Poursaeed's non-targeted loss, the clean prediction as the class to leave).
    On the zoo VGG (Fashion-MNIST, L∞ 0.1, 2000 images, seeds 0/1) "ce" fooled 0.83/0.79 of the test images,
    "fool" 0.72/0.70. Returns the final δ; the trained generator is ``self.net``."""

    name = "gap"
    iters_arg = "epochs"

    def __init__(self, model: nn.Module, eps: float = 10 / 255, norm: str = "linf", seed: int | None = None,
                 epochs: int = 5, batch_size: int = 64, lr: float = 1e-3, loss: str = "ce", loss_clip: float = 5.0,
                 z_dim: int = 64, width: int = 32, show_progress: bool = True) -> None:
        super().__init__(model, eps, norm, seed, batch_size, show_progress)
        self.epochs = int(check_number(epochs, "epochs", low=1, integer=True))
        self.lr = check_number(lr, "lr", low=0.0, low_open=True)
        if loss not in ("ce", "fool"):
            raise AdvshieldError(f"loss must be 'ce' or 'fool', not {loss!r}")
        self.loss = loss
        self.loss_clip = check_number(loss_clip, "loss_clip", low=0.0, low_open=True)
        self.z_dim = int(check_number(z_dim, "z_dim", low=1, integer=True))
        self.width = int(check_number(width, "width", low=1, integer=True))
        self.net: PerturbationGenerator | None = None

    def _fit(self, data: Any) -> torch.Tensor:
        fs = FitSet.from_data(data)
        labels, dev, g = self.clean_labels(fs), self.device, self.generator()
        net = PerturbationGenerator(fs.shape, self.z_dim, self.width)
        net.reset_parameters(g)
        z = torch.randn(1, self.z_dim, generator=g).to(dev)
        net.to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        for e, idx, end in self.shuffled_batches(fs, self.epochs, g):
            x, y = fs.get(idx, dev), labels[idx].to(dev)
            with torch.enable_grad():
                delta = net.scale(net(z)[0], self.eps, self.norm)
                logits = self.model(add_perturbation(x, delta))
                if self.loss == "ce":
                    loss = -clipped_cross_entropy(logits, y, self.loss_clip)
                else:
                    loss = fooling_loss(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if end:
                self.history.append({"epoch": e + 1, "last_batch_loss": float(loss.detach())})
        self.net = net.eval()
        with torch.no_grad():
            return net.scale(net(z)[0], self.eps, self.norm)
