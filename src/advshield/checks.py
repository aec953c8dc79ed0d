"""Argument checks shared by the library's public entry points (attacks, defenses, evaluation).

Each raises :class:`~advshield.errors.AdvshieldError` (a ``ValueError``) with one line naming the argument, so a
bad call fails before any work is done instead of returning garbage."""
from __future__ import annotations

import math
from typing import Any

import torch

from .errors import AdvshieldError

RANGE_TOL = 1e-6  # images may overshoot [0,1] by this much (float round-off)


def check_images(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` must be a floating-point N×C×H×W tensor, finite, with values in [0,1] (± :data:`RANGE_TOL`).

    Returns ``x`` unchanged. uint8 or [0,255] images are refused with a hint to divide by 255."""
    if not isinstance(x, torch.Tensor):
        raise AdvshieldError(f"{name} must be a torch.Tensor of images, not {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (divide uint8 images by 255)" if x.dtype == torch.uint8 else ""
        raise AdvshieldError(f"{name} must be a float tensor in [0,1], not {x.dtype}{hint}")
    if x.dim() != 4:
        raise AdvshieldError(f"{name} must be N×C×H×W, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    if not bool(torch.isfinite(x).all()):
        raise AdvshieldError(f"{name} contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        hint = " (divide [0,255] images by 255)" if hi > 1.5 else ""
        raise AdvshieldError(f"{name} must be in [0,1], found values in [{lo:.4g}, {hi:.4g}]{hint}")
    return x


def check_labels(y: Any, n: int, num_classes: int | None = None, name: str = "y") -> torch.Tensor:
    """``y`` must be an integer tensor of ``n`` labels, each in [0, num_classes) when that is known."""
    if not isinstance(y, torch.Tensor):
        raise AdvshieldError(f"{name} must be a torch.Tensor of class indices, not {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise AdvshieldError(f"{name} must hold integer class indices, not {y.dtype}")
    if y.dim() != 1 or len(y) != n:
        raise AdvshieldError(f"{name} must be a 1-D tensor of {n} labels, got shape {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise AdvshieldError(f"{name} holds a negative label ({int(y.min())})")
    if n and num_classes is not None and int(y.max()) >= num_classes:
        raise AdvshieldError(f"{name} holds label {int(y.max())}, but the model has {num_classes} classes")
    return y


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> float:
    """A finite real (an int when ``integer``) with ``low <= value <= high`` (``low < value`` when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        raise AdvshieldError(f"{name} must be a number, not {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise AdvshieldError(f"{name} must be finite, not {v}")
    if integer and v != int(v):
        raise AdvshieldError(f"{name} must be an integer, not {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise AdvshieldError(f"{name} must be {'>' if low_open else '>='} {low:g}, not {value!r}")
    if high is not None and v > high:
        raise AdvshieldError(f"{name} must be <= {high:g}, not {value!r}")
    return v


def check_eps(eps: Any, name: str = "eps", norm: str = "linf") -> float:
    """A budget in [0,1] units: finite, > 0 and (L∞) at most 1."""
    return check_number(eps, name, low=0.0, low_open=True, high=1.0 if norm == "linf" else None)


def check_steps(steps: Any, name: str = "steps") -> int:
    """An iteration count: an integer >= 1."""
    return int(check_number(steps, name, low=1, integer=True))
