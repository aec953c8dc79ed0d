"""SSP, the Self-Supervised Perturbation of NRP (Naseer et al. 2020, Algorithm 1): label-free, maximises the
distance between the feature maps of the adversarial and the clean image."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import global_like
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .base import GradientAttack, frozen_eval

DISTANCES = ("mse", "mae", "cosine")
TORCHSCRIPT_LAYER_ERROR = ("SSP --layer needs hooks, which TorchScript models do not support; load the model as "
                           "py:FILE.py:NAME@WEIGHTS instead")


class _Captured(Exception):
    """Raised by the feature hook to stop the forward pass once the wanted layer has run."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__("feature captured")
        self.value = value


@ATTACKS.register("ssp", "label-free feature-space attack: maximise the feature distance to the clean image (NRP)")
class SSP(GradientAttack):
    """``SSP(feature_model, eps=16/255, alpha=0.01, steps=100, distance="mse", random_start=True, layer=None,
    eot_iter=1)``.

    Images N×C×H×W in [0,1]; eps/alpha in [0,1] units (L∞). ``feature_model`` returns a feature map, or is
    a classifier whose module ``layer`` (a ``named_modules`` name; default the model's ``default_feature_layer``
    when it has one) gives the features: they are captured by a forward hook at the module's first call and
    the rest of the forward pass is skipped. ``distance``: per-sample mean squared ("mse") or absolute ("mae")
    difference, or 1 − cosine similarity of the flattened maps. Random start x + eps·sign(N(0,1)), clipped to
    [0,1] (the reference's projected N(0,1) start); then sign-gradient ascent steps of ``alpha``, projected.
    Labels are ignored (``atk(x)`` never classifies ``x``); targeted modes do not apply. ``eot_iter``: each step's
    gradient averaged over that many forward passes of a randomized feature model (the clean features: one pass)."""

    name = "ssp"

    def __init__(self, feature_model: nn.Module, eps: float = 16 / 255, alpha: float = 0.01, steps: int = 100,
                 distance: str = "mse", random_start: bool = True, layer: str | None = None,
                 seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(feature_model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         norm="linf", seed=seed, eot_iter=eot_iter)
        if distance not in DISTANCES:
            raise ValueError(f"unknown SSP distance {distance!r} (known: {', '.join(DISTANCES)})")
        self.distance = distance
        if layer is None:
            layer = getattr(feature_model, "default_feature_layer", None)
        self.layer = layer
        self._module: nn.Module | None = None
        if layer is not None and any(isinstance(m, torch.jit.ScriptModule) for m in feature_model.modules()):
            raise AdvshieldError(TORCHSCRIPT_LAYER_ERROR)
        if layer is not None:
            modules = dict(feature_model.named_modules())
            if layer not in modules or layer == "":
                some = ", ".join(n for n in list(modules)[1:8] if n)
                raise ValueError(f"{type(feature_model).__name__} has no module {layer!r} to take SSP features "
                                 f"from (pass layer=...; some names: {some}...)")
            self._module = modules[layer]
        self._clean: torch.Tensor | None = None

    # -- label-free entry point ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: N×C×H×W in [0,1]; ``y`` is ignored. Returns x_adv, same shape."""
        if self.target_mode is not None:
            raise ValueError("SSP is label-free: targeted modes do not apply")
        x = x.detach()
        with frozen_eval(self.model), self._rng():
            x_adv = self.perturb(x, None)
        return x_adv.detach()

    def set_target_mode(self, mode: str | None) -> "SSP":
        if mode is not None:
            raise ValueError("SSP is label-free: targeted modes do not apply")
        return super().set_target_mode(mode)

    # -- hooks --------------------------------------------------------------------------------------------
    def init(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        noise = global_like(x, lambda s: torch.randn(s, device=x.device, dtype=x.dtype), self.shard)
        return (x + self.eps * noise.sign()).clamp(*self.threat.bounds)

    def outputs(self, x_in: torch.Tensor) -> torch.Tensor:
        """The feature map of ``x_in`` (N×…)."""
        if self._module is None:
            return self.model(x_in)

        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            raise _Captured(out)

        handle = self._module.register_forward_hook(hook)
        try:
            self.model(x_in)
        except _Captured as c:
            return c.value
        finally:
            handle.remove()
        raise RuntimeError(f"SSP layer {self.layer!r} did not run in the forward pass")

    def loss(self, feats: torch.Tensor, y: object = None) -> torch.Tensor:
        """Summed over the batch of the per-sample distance to the clean features; ascended."""
        a, b = feats.flatten(1), self._clean.flatten(1)
        if self.distance == "mse":
            d = (a - b).pow(2).mean(1)
        elif self.distance == "mae":
            d = (a - b).abs().mean(1)
        else:
            d = 1 - F.cosine_similarity(a, b, dim=1)
        return d.sum()

    def perturb(self, x: torch.Tensor, y: object = None) -> torch.Tensor:
        with torch.no_grad():
            self._clean = self.outputs(x).detach()
        try:
            return super().perturb(x, y)
        finally:
            self._clean = None

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "SSP":
        """The reference's settings at budget ``eps``: 100 steps of 0.01 (override with ``steps=``, ``alpha=``)."""
        return cls(model, eps=eps, **{"alpha": 0.01, "steps": 100, **kw})
