"""FFF: Fast Feature Fool (Mopuri et al., BMVC 2017), a data-free universal perturbation."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...checks import check_number
from ...errors import AdvshieldError
from ...registry import UNIVERSAL
from .base import UniversalAttack, ascent_step, decayed_step, loss_gradient, project, random_perturbation, shape_of


class _ActivationMeans:
    """Forward hooks collecting per layer the mean absolute output of every ``nn.Conv2d`` (``kind="conv"``, also
    the fallback for models without ReLU modules) or the mean of every 4-D ``nn.ReLU`` output (``"relu"``)."""

    def __init__(self, model: nn.Module, kind: str = "conv") -> None:
        relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if kind == "relu" else []
        self.modules = relus or [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        self.absolute = not relus
        self.means: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            # ReLU outputs are ≥ 0, so their mean is the mean magnitude; mean() keeps no tensor for backward, so
            # a later in-place op on `out` cannot break the graph. Conv outputs: abs of a copy.
            self.means.append(out.clone().abs().mean() if self.absolute else out.mean())

    def __enter__(self) -> "_ActivationMeans":
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


@UNIVERSAL.register("fff", "data-free Fast Feature Fool: maximise all conv activations for δ alone (Mopuri 2017)")
class FFF(UniversalAttack):
    """``FFF(model, eps=10/255, norm="linf", steps=300, alpha=None, base=0.5, activations="conv", seed=None)``.

    Data-free (Mopuri et al. 2017): maximises Σ_l log(mean |a_l|) over the activations a_l of every conv layer
    for the single input clamp(base + δ, 0, 1) — δ on a flat mid-gray image, our [0,1]-input counterpart of the
    paper's δ on the zero (mean-subtracted) image. ``activations="conv"``: the outputs of every ``nn.Conv2d``
    (before BatchNorm/ReLU); ``"relu"``: the 4-D outputs of ``nn.ReLU`` modules (Caffe's in-place conv blobs).
    On the zoo's BatchNorm VGG (seed 0, L∞ 0.1) "conv" fools 0.64 of the first 1000 Fashion-MNIST test images,
    "relu" 0.26 and random ±eps noise 0.33, hence the default. Start: uniform in the ball (seeded); ``steps``
    ascent steps of ``alpha`` (sign for L∞, normalised for L2; default eps/2, decayed linearly to alpha/10), each
    projected. ``fit(data)`` uses ``data`` only for its shape: pass fit data, a C×H×W tensor or a ``(C, H, W)``
    tuple."""

    name = "fff"
    iters_arg = "steps"
    data_free = True

    def __init__(self, model: nn.Module, eps: float = 10 / 255, norm: str = "linf", seed: int | None = None,
                 steps: int = 300, alpha: float | None = None, base: float = 0.5, activations: str = "conv",
                 show_progress: bool = True) -> None:
        super().__init__(model, eps, norm, seed, 1, show_progress)
        self.steps = int(check_number(steps, "steps", low=1, integer=True))
        self.alpha = None if alpha is None else check_number(alpha, "alpha", low=0.0, low_open=True)
        self.base = check_number(base, "base", low=0.0, high=1.0)
        if activations not in ("relu", "conv"):
            raise AdvshieldError(f"activations must be 'relu' or 'conv', not {activations!r}")
        self.activations = activations

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in super().settings().items() if k != "batch_size"}

    def _fit(self, data: Any) -> torch.Tensor:
        shape, dev = shape_of(data), self.device
        delta = random_perturbation(shape, self.eps, self.norm, self.generator(), boundary=False).to(dev)
        a0 = self.alpha if self.alpha is not None else self.eps / 2
        with _ActivationMeans(self.model, self.activations) as acts:
            if not acts.modules:
                raise AdvshieldError(f"model: {type(self.model).__name__} has no ReLU or Conv2d modules for FFF to "
                                     "excite")
            for t in self.progress(range(self.steps), self.name, total=self.steps):
                acts.means.clear()
                delta.requires_grad_(True)
                with torch.enable_grad():
                    self.model((self.base + delta).clamp(0, 1).unsqueeze(0))
                    if not acts.means:
                        raise AdvshieldError("model: FFF found no 4-D conv activations in the forward pass")
                    loss = torch.stack(acts.means).clamp_min(1e-12).log().sum()
                    grad = loss_gradient(loss, delta)
                step = decayed_step(a0, t, self.steps)
                delta = project(ascent_step(delta.detach(), grad, step, self.norm), self.eps, self.norm)
                if t == self.steps - 1 or t % 50 == 0:
                    self.history.append({"step": t + 1, "log_activation": float(loss.detach())})
        return delta
