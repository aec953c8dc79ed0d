"""Wrappers that change what goes into or comes out of a model while keeping its layer names.

:class:`ModelWrapper` is *transparent*: it shares the wrapped model's submodules, parameters and buffers (the same
dicts), so ``named_modules()``, ``state_dict()`` keys, forward hooks on a layer, ``.to(device)`` and
``requires_grad_`` behave exactly as on the wrapped model, and SSP ``layer="features.relu2"`` still resolves. The
wrapped model is ``wrapper.inner``; attributes the wrapper lacks (``default_feature_layer``, ``card``...) are read
from it. A TorchScript model cannot share its tables: it is registered as the child ``inner`` instead (layer names
then start with ``inner.``, and TorchScript layers cannot be hooked anyway).

- :class:`LogitsOutput`: a model returning a tuple/list (first element), a dict with ``"logits"`` or an object with
  ``.logits`` (HuggingFace) → a model returning the logits tensor N×classes.
- :class:`Normalized`: ``(x - mean) / std`` per channel before the model, for [0,1] N×C×H×W images.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

_SHARED = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def is_torchscript(model: nn.Module) -> bool:
    """True when ``model`` (or any module inside it, wrappers included) is a TorchScript module."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost model under any chain of :class:`ModelWrapper`s."""
    while isinstance(model, ModelWrapper):
        model = model.inner
    return model


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model`` (``named_modules`` name), also tried on each unwrapped model
    (so ``inner.``-prefixed names of a wrapped TorchScript model are not needed). :class:`ModelError` if absent."""
    m: nn.Module | None = model
    while m is not None:
        modules = dict(m.named_modules())
        if name and name in modules:
            return modules[name]
        m = m.inner if isinstance(m, ModelWrapper) else None
    some = ", ".join(n for n, _ in list(model.named_modules())[1:8])
    raise ModelError(f"the model has no layer {name!r} (some: {some}...)")


class ModelWrapper(nn.Module):
    """Base of the transparent wrappers (see the module docstring). Subclasses define ``forward``."""

    def __init__(self, inner: nn.Module) -> None:
        if not isinstance(inner, nn.Module):
            raise ModelError(f"can only wrap an nn.Module, not {type(inner).__name__}")
        object.__setattr__(self, "inner", inner)  # first: Module.__init__ sets `training`, proxied to inner
        mode = inner.training
        super().__init__()
        inner.training = mode
        if isinstance(inner, torch.jit.ScriptModule):
            self._modules["inner"] = inner
        else:
            for attr in _SHARED:
                object.__setattr__(self, attr, getattr(inner, attr))

    @property  # type: ignore[override]
    def training(self) -> bool:
        return self.inner.training

    @training.setter
    def training(self, mode: bool) -> None:
        self.inner.training = mode

    def train(self, mode: bool = True) -> ModelWrapper:
        self.inner.train(mode)
        return self

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("inner")
            if inner is None:
                raise
            return getattr(inner, name)


class LogitsOutput(ModelWrapper):
    """``inner(x)`` reduced to its logits tensor: a tensor as is, a tuple/list's first element, a mapping's
    ``"logits"``, or an object's ``.logits``. Anything else is a :class:`ModelError`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.inner(x))


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor inside a model's output (see :class:`LogitsOutput`)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    raise ModelError(f"the model returned {type(out).__name__}, not a logits tensor (nor a tuple, a dict with "
                     "'logits' or an object with .logits)")


class Normalized(ModelWrapper):
    """``inner((x - mean) / std)``: mean/std per channel (or one value for all), images in [0,1]. The constants
    are not parameters nor buffers (the state dict stays the wrapped model's)."""

    def __init__(self, inner: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(inner)
        object.__setattr__(self, "mean", tuple(float(v) for v in mean))
        object.__setattr__(self, "std", tuple(float(v) for v in std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return self.inner((x - mean) / std)

    def extra_repr(self) -> str:
        return f"mean={list(self.mean)}, std={list(self.std)}"
