"""Threat model: the norm ball and the valid pixel range an adversarial image must stay in."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_number
from ..errors import AdvshieldError

NORMS = ("linf", "l2")


class BudgetError(AssertionError):
    """An adversarial batch left the threat model (norm ball, pixel range) or holds NaN/inf."""


@dataclass(frozen=True)
class ThreatModel:
    """``norm`` is ``"linf"`` or ``"l2"``; ``eps`` (finite, >= 0) in [0,1] pixel units (L2: over all C·H·W values);
    ``bounds`` the valid pixel range. Bad values raise :class:`~advshield.errors.AdvshieldError`."""

    norm: str = "linf"
    eps: float = 8 / 255
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise AdvshieldError(f"norm must be 'linf' or 'l2', not {self.norm!r}")
        check_number(self.eps, "eps", low=0.0)
        if len(self.bounds) != 2 or not check_number(self.bounds[0], "bounds") < check_number(self.bounds[1], "bounds"):
            raise AdvshieldError(f"bounds must be (low, high) with low < high, not {self.bounds!r}")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``x_adv - x``; shape N."""
        d = (x_adv - x).flatten(1)
        return d.abs().amax(1) if self.norm == "linf" else d.norm(p=2, dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Nearest point (per sample) in the eps-ball around ``x``, then clipped to ``bounds``."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            n = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            delta = delta * (self.eps / n).clamp(max=1.0)
        return (x + delta).clamp(*self.bounds)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-5) -> None:
        """Raise :class:`BudgetError` unless ``x_adv`` is finite, within bounds and within eps of ``x``."""
        if x_adv.shape != x.shape:
            raise BudgetError(f"adversarial batch has shape {tuple(x_adv.shape)}, input {tuple(x.shape)}")
        if not torch.isfinite(x_adv).all():
            raise BudgetError("adversarial batch contains NaN or inf")
        lo, hi = self.bounds
        if x_adv.min() < lo - atol or x_adv.max() > hi + atol:
            raise BudgetError(f"adversarial batch leaves [{lo}, {hi}]: [{float(x_adv.min())}, {float(x_adv.max())}]")
        worst = float(self.distance(x_adv, x).max()) if len(x) else 0.0
        if worst > self.eps + atol * (1 if self.norm == "linf" else max(1.0, x[0].numel() ** 0.5)):
            raise BudgetError(f"{self.norm} distance {worst:.6f} exceeds eps {self.eps:.6f}")
