"""What every universal (image-agnostic) attack shares.

A universal perturbation δ is one float32 C×H×W tensor in [0,1] image units, added to every image:
``x_adv = clamp(x + δ, 0, 1)`` for x N×C×H×W in [0,1]. The budget is ‖δ‖∞ ≤ eps or ‖δ‖₂ ≤ eps (over all C·H·W
values). This module holds the one implementation of: the projection onto the budget (:func:`project`), the
ascent step and its schedule (:func:`ascent_step`, :func:`decayed_step`), the clipped cross-entropy that sPGD and
GAP ascend (:func:`clipped_cross_entropy`), random perturbations (:func:`random_perturbation`), the fit set held in
memory (:class:`FitSet`), batched predictions and the fooling rate (:func:`predict`, :func:`fooling_rate`), and the
base class :class:`UniversalAttack` (seeding through a ``torch.Generator``, frozen eval-mode model, shuffled
batches with a progress bar).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DataError
from ...utils import progress
from ..base import frozen_eval

NORMS = ("linf", "l2")
Shape = tuple[int, int, int]


# -- the budget ---------------------------------------------------------------------------------------------
def check_budget(eps: float, norm: str) -> None:
    """ValueError unless ``norm`` is ``"linf"``/``"l2"`` and ``eps`` is a finite non-negative number."""
    if norm not in NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', not {norm!r}")
    try:
        ok = 0 <= float(eps) < float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"eps must be a finite non-negative number, not {eps!r}")


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The nearest point to ``delta`` (any shape, taken as one vector) in the eps ball: clamp for L∞, rescale
    for L2 (the norm is taken in float64 so the result is within eps up to float32 rounding)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = float(delta.detach().double().norm())
    return delta * (eps / n) if n > eps else delta


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """One ascent step of size ``alpha``: ``alpha·sign(grad)`` (L∞) or ``alpha·grad/‖grad‖₂`` (L2)."""
    if norm == "linf":
        return delta + alpha * grad.sign()
    return delta + alpha * grad / grad.norm().clamp_min(1e-12)


def decayed_step(alpha: float, t: int, total: int) -> float:
    """Step size at step ``t`` of ``total``: ``alpha`` decayed linearly to ``alpha/10`` at the last step."""
    return alpha * (1 - 0.9 * t / max(1, total - 1))


def random_perturbation(shape: Sequence[int], eps: float, norm: str, generator: torch.Generator,
                        boundary: bool = True) -> torch.Tensor:
    """A random float32 perturbation of ``shape`` (CPU). ``boundary``: random signs ±eps (L∞) or a uniform
    direction of length eps (L2) — random noise using the whole budget. Otherwise uniform in the L∞ box, or a
    uniform direction with length eps·U(0,1) (L2)."""
    if norm == "linf":
        u = torch.rand(tuple(shape), generator=generator)
        return (torch.where(u < 0.5, -eps, eps) if boundary else (2 * u - 1) * eps).float()
    d = torch.randn(tuple(shape), generator=generator)
    r = eps if boundary else eps * float(torch.rand((), generator=generator))
    return project(d * (r / float(d.norm().clamp_min(1e-12))), eps, norm).float()


def clipped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, clip: float) -> torch.Tensor:
    """Mean over the batch of min(CE(logits, label), ``clip``) — the loss universal attacks ascend: an image whose
    label probability is already below e^-clip (fooled) stops steering δ."""
    return F.cross_entropy(logits, labels, reduction="none").clamp(max=clip).mean()


def apply_perturbation(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``clamp(x + δ, 0, 1)`` for x N×C×H×W (or C×H×W) in [0,1] and δ C×H×W (moved to x's device/dtype)."""
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


# -- the images a perturbation is fitted on -------------------------------------------------------------------
class FitSet:
    """Images held in memory as uint8 or float32 N×C×H×W, served as float32 batches in [0,1].

    Built by :meth:`from_data` from a tensor, an :class:`advshield.data.tensors.TensorDataset` (kept as its
    uint8 storage) or an iterable of batches / single images, each ``x`` or ``(x, y, ...)`` (labels ignored)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or len(images) == 0 or min(images.shape) < 1:
            raise DataError(f"need images N×C×H×W with N ≥ 1, got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            images = images.float()
            if not torch.isfinite(images).all():
                raise DataError("images contain NaN or inf")
        self.images = images

    @classmethod
    def from_data(cls, data: Any) -> "FitSet":
        if isinstance(data, FitSet):
            return data
        if isinstance(data, torch.Tensor):
            return cls(data.detach().cpu())
        images = getattr(data, "images", None)  # advshield's TensorDataset
        if isinstance(images, torch.Tensor):
            return cls(images)
        if not isinstance(data, Iterable):
            raise DataError(f"cannot fit on a {type(data).__name__}: give a tensor N×C×H×W, a TensorDataset or an "
                            "iterable of batches")
        parts = []
        for item in data:
            x = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
                raise DataError("every item must be an image tensor C×H×W or a batch N×C×H×W (or a tuple starting "
                                "with one)")
            parts.append((x.unsqueeze(0) if x.ndim == 3 else x).detach().cpu())
        if not parts:
            raise DataError("no images to fit on")
        if len({tuple(p.shape[1:]) for p in parts}) > 1:
            raise DataError("all images must have one shape C×H×W")
        if len({p.dtype for p in parts}) > 1:
            parts = [p.float().div(255) if p.dtype == torch.uint8 else p.float() for p in parts]
        return cls(torch.cat(parts))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> Shape:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def get(self, idx: torch.Tensor | slice, device: torch.device | None = None) -> torch.Tensor:
        """Images ``idx`` as float32 in [0,1] on ``device``."""
        x = self.images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x.to(device) if device is not None else x

    def chunks(self, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Index batches covering every image once: in order, or shuffled with ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return list(order.split(batch_size))


def shape_of(data: Any) -> Shape:
    """(C, H, W) of a shape tuple, a C×H×W or N×C×H×W tensor, a TensorDataset or other fit data."""
    if isinstance(data, (tuple, list, torch.Size)) and len(data) == 3 and all(isinstance(v, int) for v in data):
        if min(data) < 1:
            raise DataError(f"a perturbation shape needs positive sizes, not {tuple(data)}")
        return tuple(data)  # type: ignore[return-value]
    if isinstance(data, torch.Tensor) and data.ndim == 3:
        return shape_of(tuple(data.shape))
    return FitSet.from_data(data).shape


# -- predictions ----------------------------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, images: Any, delta: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels (int64 N, CPU) of ``images`` (any fit data), perturbed by ``delta`` when given."""
    fs = FitSet.from_data(images)
    dev = model_device(model)
    out = []
    with frozen_eval(model):
        for idx in fs.chunks(batch_size):
            x = fs.get(idx, dev)
            out.append(model(x if delta is None else apply_perturbation(x, delta)).argmax(1).cpu())
    return torch.cat(out)


def fooling_rate(model: nn.Module, images: Any, delta: torch.Tensor, batch_size: int = 256,
                 clean: torch.Tensor | None = None) -> float:
    """Share of ``images`` whose predicted label changes when ``delta`` is added (clamped to [0,1]).
    ``clean``: the clean predictions, when already known."""
    fs = FitSet.from_data(images)
    if clean is None:
        clean = predict(model, fs, None, batch_size)
    return float((predict(model, fs, delta, batch_size) != clean).float().mean())


# -- the base class -------------------------------------------------------------------------------------------
class UniversalAttack:
    """``attack = Method(model, eps, norm="linf", seed=None, ...)``; ``delta = attack.fit(data)``.

    ``model`` returns logits for [0,1] N×C×H×W images; it is kept frozen in eval mode during ``fit`` (its mode
    and ``requires_grad`` flags are restored). ``eps`` in [0,1] units; ``norm`` ``"linf"`` or ``"l2"`` (over
    all C·H·W values). ``seed`` seeds a private ``torch.Generator`` (shuffling, initialisation); the global RNG
    is not touched. Labels are never needed: the model's clean predictions are the reference.
    Subclasses implement :meth:`_fit` and name in ``iters_arg`` their main iteration-count keyword."""

    name = "universal"
    iters_arg = "epochs"

    def __init__(self, model: nn.Module, eps: float = 10 / 255, norm: str = "linf", seed: int | None = None,
                 batch_size: int = 64, show_progress: bool = True) -> None:
        check_budget(eps, norm)
        if int(batch_size) < 1:
            raise ValueError("batch_size must be a positive integer")
        self.model, self.eps, self.norm, self.seed = model, float(eps), norm, seed
        self.batch_size, self.show_progress = int(batch_size), show_progress
        self.delta: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []  # per pass/epoch/step statistics of the last fit

    # -- public -----------------------------------------------------------------------------------------
    def fit(self, data: Any) -> torch.Tensor:
        """Fit δ on ``data`` (tensor N×C×H×W in [0,1] or uint8, TensorDataset, or iterable of batches ``x`` /
        ``(x, y)``). Returns δ float32 C×H×W on the CPU, within the budget; also kept as ``self.delta``."""
        self.history = []
        with frozen_eval(self.model):
            delta = self._fit(data)
        delta = project(delta.detach().float().cpu(), self.eps, self.norm).contiguous()
        self.delta = delta
        return delta

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``clamp(x + δ, 0, 1)`` for x N×C×H×W in [0,1]; needs a fitted (or assigned) ``delta``."""
        if self.delta is None:
            raise RuntimeError(f"{type(self).__name__}.apply needs a perturbation: call fit() first")
        return apply_perturbation(x, self.delta)

    def fooling_rate(self, images: Any) -> float:
        """Fooling rate of the fitted δ on ``images`` (see :func:`fooling_rate`)."""
        if self.delta is None:
            raise RuntimeError("call fit() first")
        return fooling_rate(self.model, images, self.delta)

    def settings(self) -> dict[str, Any]:
        """The hyper-parameters, for sidecar files and reprs."""
        skip = {"model", "delta", "history", "show_progress", "net"}
        return {k: v for k, v in vars(self).items() if k not in skip and not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.norm}, eps={self.eps:.4g})"

    # -- for subclasses ---------------------------------------------------------------------------------
    def _fit(self, data: Any) -> torch.Tensor:
        raise NotImplementedError

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed`` (or with a draw from torch's global RNG when None)."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return torch.Generator().manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def progress(self, it: Iterable, desc: str, total: int | None = None) -> Iterable:
        return progress(it, desc, total=total) if self.show_progress else it

    def shuffled_batches(self, fs: FitSet, epochs: int, g: torch.Generator) -> Iterator[tuple[int, torch.Tensor, bool]]:
        """(epoch, index batch, last batch of the epoch?) over ``epochs`` passes of ``fs``, each shuffled with
        ``g``; one progress bar over all batches."""
        per = -(-len(fs) // self.batch_size)
        bar = iter(self.progress(range(epochs * per), self.name, total=epochs * per))
        for e in range(epochs):
            chunks = fs.chunks(self.batch_size, g)
            for i, idx in enumerate(chunks):
                next(bar, None)
                yield e, idx, i == len(chunks) - 1

    def clean_labels(self, fs: FitSet) -> torch.Tensor:
        """The model's predictions on the clean fit set (int64 N, CPU)."""
        return predict(self.model, fs, None, max(self.batch_size, 256))


def loss_gradient(loss: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """∂loss/∂δ (δ a leaf requiring grad)."""
    (g,) = torch.autograd.grad(loss, delta)
    return g
