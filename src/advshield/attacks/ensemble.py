"""A weighted logit ensemble, usable as the model of any attack (ensemble transfer attacks)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..checks import check_number
from ..errors import AdvshieldError
from .base import check_model


class Ensemble(nn.Module):
    """``Ensemble([m1, m2, ...], weights=None)``: images N×C×H×W → Σ wᵢ·mᵢ(x), logits N×K.

    Every member must return logits of the same shape. ``weights`` (non-negative, not all zero) are normalised
    to sum to 1; default equal weights. Members are submodules, so ``.to()``, ``.eval()`` and the attacks'
    state restore reach them."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        models = list(models)
        if not models:
            raise AdvshieldError("models: Ensemble needs at least one model")
        for m in models:
            check_model(m, "models")
        if weights is None:
            weights = [1.0] * len(models)
        weights = [check_number(w, "weights", low=0.0) for w in weights]
        if len(weights) != len(models):
            raise AdvshieldError(f"weights: {len(weights)} weights for {len(models)} models")
        if sum(weights) <= 0:
            raise AdvshieldError(f"weights must not all be zero, got {weights}")
        total = sum(weights)
        self.members = nn.ModuleList(models)
        self.weights = tuple(w / total for w in weights)  # Python floats: no device copies in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for w, m in zip(self.weights, self.members):
            if w == 0:
                continue
            term = m(x) * w
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        return "weights=(" + ", ".join(f"{w:.3g}" for w in self.weights) + ")"


def hold_one_out(models: dict[str, nn.Module]) -> dict[str, Ensemble]:
    """For each model, the equal-weight logit ensemble of all the *other* models, named ``a+b`` (the transfer
    sources of NRP Table 5: attack from the rest, test on the held-out one). Fewer than two models → {}."""
    out = {}
    for held_out in models:
        rest = [n for n in models if n != held_out]
        if rest:
            out["+".join(rest)] = Ensemble([models[n] for n in rest])
    return out
