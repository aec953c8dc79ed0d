"""Defenses that need no retraining: ``nn.Module``s mapping [0,1] images to [0,1] images of the same shape
(input purifiers and transforms), plus the wrapper that puts one in front of a classifier.

Each defense declares whether it is differentiable and whether it is randomized, and offers a gradient
substitute for BPDA (:meth:`Defense.bpda`): by default the identity (straight-through).

Input checks: calling a defense (or a :class:`Defended` model) checks its images once with
:func:`advshield.checks.check_images` (float N×C×H×W, finite, in [0,1]); defenses called inside that call (the
members of a stack, the purifier behind a wrapper) trust their input and skip the check.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from ..checks import check_images
from ..registry import DEFENSES

_CHECKED: ContextVar[bool] = ContextVar("advshield_images_checked", default=False)


@contextmanager
def trusted_input() -> Iterator[None]:
    """Inside this block defenses skip their input check (the caller has checked the images already)."""
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def check_once(x: Any, name: str = "x") -> None:
    """:func:`~advshield.checks.check_images` unless an enclosing defense call has checked the input already."""
    if not _CHECKED.get():
        check_images(x.detach() if isinstance(x, torch.Tensor) else x, name)


def format_setting(value: Any) -> str:
    """A constructor setting as shown in a ``repr``: floats with 4 significant digits, the rest as ``repr``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)


def init_settings(obj: nn.Module) -> dict[str, Any]:
    """``{parameter: current value}`` for each constructor parameter of ``obj`` that it keeps as an attribute of
    the same name (the settings a defense was built with), in signature order."""
    try:
        params = inspect.signature(type(obj).__init__).parameters
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for p in list(params.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(obj, p.name):
            continue
        value = getattr(obj, p.name)
        if not isinstance(value, (nn.Module, torch.Tensor)) and not callable(value):
            out[p.name] = value
    return out


class Defense(nn.Module):
    """Base class. ``forward(x)``: N×C×H×W in [0,1] → same shape in [0,1].

    Calling a defense checks ``x`` first (float N×C×H×W, finite, [0,1]; one-line
    :class:`~advshield.errors.AdvshieldError` otherwise). ``repr``: class name and constructor settings."""

    name = "defense"
    differentiable = True  # does autograd through forward() give useful gradients?
    randomized = False  # does forward() draw random numbers (attack with EOT)?
    not_default = ""  # non-empty: why the CLI's default defense set (eval, demo) leaves it out; named, it runs

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if _CHECKED.get():
            return super().__call__(x, *args, **kwargs)
        check_once(x)
        with trusted_input():
            return super().__call__(x, *args, **kwargs)

    @classmethod
    def input_channels(cls) -> int | None:
        """The channel count this defense requires (read without loading weights), or None: any."""
        return None

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        """Forward as :meth:`forward`, backward through :meth:`substitute` (BPDA, Athalye et al. 2018)."""
        check_once(x)
        with trusted_input():
            with torch.no_grad():
                out = self(x)
            sub = self.substitute(x)
        return sub + (out - sub).detach()

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of the defense used by BPDA; the identity by default."""
        return x

    def settings(self) -> dict[str, Any]:
        """The constructor settings this defense was built with (see :func:`init_settings`)."""
        return init_settings(self)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={format_setting(v)}" for k, v in self.settings().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


@DEFENSES.register("none", "no defense (identity)")
class Identity(Defense):
    """Returns its input unchanged."""

    name = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Defended(nn.Module):
    """A classifier with a defense in front: ``model(defense(x))``, [0,1] images → logits. ``bpda=True`` makes
    backward straight-through the defense's substitute (for adaptive attacks). The images are checked once
    (float N×C×H×W, finite, [0,1])."""

    def __init__(self, model: nn.Module, defense: nn.Module, bpda: bool = False) -> None:
        super().__init__()
        self.defense = defense
        self.model = model
        self.use_bpda = bpda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_once(x)
        with trusted_input():
            if self.use_bpda and isinstance(self.defense, Defense):
                return self.model(self.defense.bpda(x))
            return self.model(self.defense(x))


def __getattr__(name: str) -> Any:
    """``build_defense`` and ``defend`` moved (:mod:`.spec`, :mod:`.purifier`); the old import path still works and
    gives the same objects."""
    if name == "build_defense":
        from .spec import build_defense

        return build_defense
    if name == "defend":
        from .purifier import defend

        return defend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
