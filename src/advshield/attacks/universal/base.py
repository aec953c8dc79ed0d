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

from ...checks import check_eps, check_images, check_number
from ...errors import AdvshieldError, DataError
from ...utils import progress
from ..base import check_model, check_seed, format_setting, frozen_eval

NORMS = ("linf", "l2")
Shape = tuple[int, int, int]


# -- the budget ---------------------------------------------------------------------------------------------
def check_budget(eps: float, norm: str) -> float:
    """``eps`` as a float; :class:`AdvshieldError` unless ``norm`` is ``"linf"``/``"l2"`` and ``eps`` is finite,
    > 0 and (L∞) at most 1."""
    if norm not in NORMS:
        raise AdvshieldError(f"norm must be 'linf' or 'l2', not {norm!r}")
    return check_eps(eps, "eps", norm)


def check_delta(delta: Any, shape: Sequence[int] | None = None, name: str = "delta") -> torch.Tensor:
    """``delta`` must be a finite floating-point C×H×W tensor (of ``shape`` when given)."""
    if not isinstance(delta, torch.Tensor) or not delta.is_floating_point() or delta.dim() != 3:
        what = f"{delta.dtype} tensor of shape {tuple(delta.shape)}" if isinstance(delta, torch.Tensor) else \
            type(delta).__name__
        raise AdvshieldError(f"{name} must be a float C×H×W tensor, not a {what}")
    if shape is not None and tuple(delta.shape) != tuple(shape):
        raise AdvshieldError(f"{name} is {tuple(delta.shape)} (C×H×W), the images are {tuple(shape)}")
    if not bool(torch.isfinite(delta.detach()).all()):
        raise AdvshieldError(f"{name} contains NaN or inf")
    return delta


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
    """``clamp(x + δ, 0, 1)`` for x N×C×H×W (or C×H×W) float in [0,1] and δ a finite C×H×W of x's image shape
    (moved to x's device/dtype). Bad ``x`` or ``delta``: :class:`AdvshieldError` naming it."""
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        check_images(x.unsqueeze(0), "x")
    else:
        check_images(x, "x")
    check_delta(delta, x.shape[-3:])
    return add_perturbation(x, delta)


def add_perturbation(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """:func:`apply_perturbation` without the checks (inner loops)."""
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


# -- the images a perturbation is fitted on -------------------------------------------------------------------
class FitSet:
    """Images held in memory as uint8 or float32 N×C×H×W, served as float32 batches in [0,1].

    Built by :meth:`from_data` from a tensor (uint8, or float in [0,1]), an ``(x, y)`` pair of tensors, an
    :class:`advshield.data.tensors.TensorDataset` (kept as its uint8 storage), a map-style ``Dataset`` or an
    iterable of batches / single images, each ``x`` or ``(x, y, ...)`` (labels ignored). Bad images raise
    :class:`~advshield.errors.DataError` naming the argument (``name``)."""

    def __init__(self, images: torch.Tensor, name: str = "data") -> None:
        if images.ndim != 4 or len(images) == 0 or min(images.shape) < 1:
            raise DataError(f"{name}: need images N×C×H×W with N ≥ 1, got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            try:
                check_images(images, name)
            except AdvshieldError as e:
                raise DataError(str(e)) from None
            images = images.float()
        self.images = images

    @classmethod
    def from_data(cls, data: Any, name: str = "data") -> "FitSet":
        if isinstance(data, FitSet):
            return data
        if isinstance(data, torch.Tensor):
            return cls(data.detach().cpu(), name)
        images = getattr(data, "images", None)  # advshield's TensorDataset
        if isinstance(images, torch.Tensor):
            return cls(images, name)
        if (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(v, torch.Tensor) for v in data)
                and data[0].ndim == 4 and data[1].ndim == 1):  # an (x, y) pair
            return cls(data[0].detach().cpu(), name)
        if not isinstance(data, Iterable) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            data = (data[i] for i in range(len(data)))  # a map-style Dataset
        if not isinstance(data, Iterable):
            raise DataError(f"{name}: cannot fit on a {type(data).__name__}: give a tensor N×C×H×W, a TensorDataset "
                            "or an iterable of batches")
        parts = []
        for item in data:
            x = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
                raise DataError(f"{name}: every item must be an image tensor C×H×W or a batch N×C×H×W (or a tuple "
                                "starting with one)")
            parts.append((x.unsqueeze(0) if x.ndim == 3 else x).detach().cpu())
        if not parts:
            raise DataError(f"{name}: no images to fit on")
        if len({tuple(p.shape[1:]) for p in parts}) > 1:
            raise DataError(f"{name}: all images must have one shape C×H×W")
        if len({p.dtype for p in parts}) > 1:
            parts = [p.float().div(255) if p.dtype == torch.uint8 else p for p in parts]
        return cls(torch.cat(parts), name)

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
    fs = FitSet.from_data(images, "images")
    if delta is not None:
        check_delta(delta, fs.shape)
    dev = model_device(model)
    out = []
    with frozen_eval(model):
        for idx in fs.chunks(batch_size):
            x = fs.get(idx, dev)
            out.append(model(x if delta is None else add_perturbation(x, delta)).argmax(1).cpu())
    return torch.cat(out)


def fooling_rate(model: nn.Module, images: Any, delta: torch.Tensor, batch_size: int = 256,
                 clean: torch.Tensor | None = None) -> float:
    """Share of ``images`` whose predicted label changes when ``delta`` is added (clamped to [0,1]).
    ``clean``: the clean predictions, when already known."""
    fs = FitSet.from_data(images, "images")
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
    Subclasses implement :meth:`_fit` and name in ``iters_arg`` their main iteration-count keyword. Bad settings
    (eps not finite or <= 0, L∞ eps > 1, batch_size < 1, ...) and bad fit images raise
    :class:`~advshield.errors.AdvshieldError` naming the argument."""

    name = "universal"
    iters_arg = "epochs"
    data_free = False  # True: fit() needs only the image shape (FFF)

    def __init__(self, model: nn.Module, eps: float = 10 / 255, norm: str = "linf", seed: int | None = None,
                 batch_size: int = 64, show_progress: bool = True) -> None:
        eps = check_budget(eps, norm)
        batch_size = int(check_number(batch_size, "batch_size", low=1, integer=True))
        self.model, self.eps, self.norm, self.seed = check_model(model), eps, norm, check_seed(seed)
        self.batch_size, self.show_progress = int(batch_size), show_progress
        self.delta: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []  # per pass/epoch/step statistics of the last fit

    # -- public -----------------------------------------------------------------------------------------
    def fit(self, data: Any) -> torch.Tensor:
        """Fit δ on ``data`` (tensor N×C×H×W in [0,1] or uint8, TensorDataset, or iterable of batches ``x`` /
        ``(x, y)``). Returns δ float32 C×H×W on the CPU, within the budget; also kept as ``self.delta``."""
        self.history = []
        if not self.data_free:
            data = FitSet.from_data(data, "data")  # checked before any work
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
        """``UAP(linf, eps=0.03922, target_fooling=0.8, ..., batch_size=32)``, plus ``seed`` when set."""
        s = self.settings()
        keys = [k for k in s if k not in ("eps", "norm", "seed", "batch_size")] + ["batch_size"] * ("batch_size" in s)
        keys += ["seed"] * (s.get("seed") is not None)
        parts = [self.norm, f"eps={format_setting(self.eps)}"] + [f"{k}={format_setting(s[k])}" for k in keys]
        return f"{type(self).__name__}({', '.join(parts)})"

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
