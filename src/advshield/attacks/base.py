"""The shared attack loop. Every gradient attack is a configuration of :class:`GradientAttack`'s hooks:

    reset → init → repeat steps × [input_transform → outputs → loss → gradient → grad_transform → step → project]

Images are float N×C×H×W in [0,1]; eps and step sizes are in [0,1] units. ``atk(x, y=None)`` uses the
model's own predictions as labels when ``y`` is None (no label leaking). The model's train/eval mode and
its parameters' ``requires_grad`` flags are restored afterwards.

Bad settings and inputs raise :class:`~advshield.errors.AdvshieldError` (a ``ValueError``) naming the argument:
the constructors check their numbers (:meth:`GradientAttack.__init__`), every call checks ``x`` and ``y``
(:meth:`Attack.forward`).
"""
from __future__ import annotations

import contextlib
import inspect
import numbers
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_eps, check_images, check_labels, check_number, check_steps
from ..distributed import global_like
from ..errors import AdvshieldError
from .threat import NORMS, ThreatModel

TARGET_MODES = ("given", "random", "least_likely")
# not shown as key=value in reprs (eot_iter: the repr shows eot=N when N > 1)
_NOT_SETTINGS = {"self", "model", "feature_model", "threat", "seed", "eps", "norm", "eot_iter"}


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with parameters not requiring grad; restore both on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def check_model(model: Any, name: str = "model") -> nn.Module:
    """``model`` must be an ``nn.Module`` (the attacks switch its mode and freeze its parameters)."""
    if not isinstance(model, nn.Module):
        raise AdvshieldError(f"{name} must be a torch.nn.Module, not {type(model).__name__}")
    return model


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """None or an integer."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise AdvshieldError(f"{name} must be an integer or None, not {seed!r}")
    return None if seed is None else int(seed)


def format_setting(value: Any) -> str:
    """A setting for a repr: floats as ``repr`` when short (0.1, 1.0), else to 4 significant digits (8/255 →
    0.03137); everything else as ``repr``."""
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 8 else f"{value:.4g}"
    return repr(value)


class Attack:
    """Base of all per-image attacks: ``x_adv = atk(x, y=None)``.

    Subclasses implement :meth:`perturb`. Targeted mode: :meth:`set_target_mode` with ``"random"``
    (a random class ≠ label), ``"least_likely"`` or ``"given"`` (pass the targets as ``y``)."""

    name = "attack"
    norm = "linf"  # the norm of the budget this attack is given by for_budget()
    transfer = True  # part of the default transfer grid (eval/demo); strong white-box attacks set False

    def __init__(self, model: nn.Module, threat: ThreatModel, seed: int | None = None) -> None:
        self.model = check_model(model)
        self.threat = threat
        self.seed = check_seed(seed)
        self.target_mode: str | None = None
        # (offset, global rows) when x is one rank's shard of a global batch: random starts are drawn for the
        # global batch and sliced, so 1 and N processes craft the same images (see distributed.global_like)
        self.shard: tuple[int, int] | None = None
        self._classes: tuple[nn.Module, int | None] | None = None  # (model, its class count), see num_classes

    # -- public -----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(x, y)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: N×C×H×W float in [0,1]; y: N int labels (or targets in "given" mode) in [0, classes). Returns x_adv,
        same shape. Raises :class:`AdvshieldError` naming ``x`` or ``y`` for bad inputs."""
        x = check_images(x, "x").detach()
        if y is None and self.target_mode == "given":
            raise AdvshieldError("y: target mode 'given' needs the target classes as y")
        with frozen_eval(self.model), self._rng():
            logits = None
            if y is None or self.target_mode in ("random", "least_likely"):
                with torch.no_grad():
                    logits = self.model(x)
            if y is not None:
                classes = logits.shape[1] if logits is not None and logits.dim() == 2 else self.num_classes(x)
                y = check_labels(y, len(x), classes, "y")
            else:
                y = logits.argmax(1)
            if self.target_mode == "random":
                num_classes = logits.shape[1]
                shift = torch.randint(1, num_classes, y.shape, device=y.device)
                y = (y + shift) % num_classes  # never the true class
            elif self.target_mode == "least_likely":
                y = logits.argmin(1)
            x_adv = self.perturb(x, y.to(x.device))
        return x_adv.detach()

    def num_classes(self, x: torch.Tensor) -> int | None:
        """The model's class count (width of its N×K logits; None for other outputs), from one forward pass of
        ``x[:1]`` that leaves torch's RNG untouched; remembered for the current ``model``."""
        if self._classes is None or self._classes[0] is not self.model:
            if len(x) == 0:
                return None
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                out = self.model(x[:1])
            k = out.shape[1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
            self._classes = (self.model, k)
        return self._classes[1]

    def set_target_mode(self, mode: str | None) -> "Attack":
        """None (untargeted), "given", "random" or "least_likely"."""
        if mode is not None and mode not in TARGET_MODES:
            raise AdvshieldError(f"mode must be None, 'given', 'random' or 'least_likely', not {mode!r}")
        self.target_mode = mode
        return self

    @property
    def targeted(self) -> bool:
        return self.target_mode is not None

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def eot_iter(self) -> int:
        """Alias of ``eot`` (torchattacks' name), for the attacks that take ``eot_iter``."""
        return self.eot

    @eot_iter.setter
    def eot_iter(self, value: int) -> None:
        self.eot = check_steps(value, "eot_iter")

    def settings(self) -> dict[str, Any]:
        """The constructor's settings (keyword → current value), read from the attributes of the same name;
        eps first. ``model``, ``seed`` and ``norm`` are left out (the seed is per call in the engine)."""
        out: dict[str, Any] = {"eps": self.threat.eps}
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            for p in inspect.signature(init).parameters:
                if p not in _NOT_SETTINGS and p not in out and not p.startswith("_") and hasattr(self, p):
                    out[p] = getattr(self, p)
            break  # the most derived constructor is the public signature
        return out

    def __repr__(self) -> str:
        """``PGD(linf, eps=0.1, alpha=0.01, steps=10, random_start=True)`` plus the target mode and EOT if set."""
        parts = [self.threat.norm] + [f"{k}={format_setting(v)}" for k, v in self.settings().items()]
        if self.target_mode is not None:
            parts.append(f"target_mode={self.target_mode!r}")
        if getattr(self, "eot", 1) > 1:
            parts.append(f"eot={self.eot}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- helpers ----------------------------------------------------------------------------------------
    def _rng(self) -> contextlib.AbstractContextManager:
        """Seeded randomness for the attack's own random parts when ``seed`` is set."""
        return seeded(self.seed) if self.seed is not None else contextlib.nullcontext()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG (CPU and current CUDA device) seeded, then restore it."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class GradientAttack(Attack):
    """Iterative sign-gradient (L∞) or normalised-gradient (L2) ascent on a loss, projected each step.

    eps: finite, > 0 (L∞: at most 1), alpha: finite, >= 0, both in [0,1] units; steps: an integer >= 1, or 0 with
    ``random_start`` (the random start alone). ``random_start``: uniform in the L∞ ball / uniform in the L2 ball.
    ``eot_iter`` (an integer >= 1; attribute ``eot``, which the evaluation engine raises for randomized defenses):
    each step's gradient is averaged over that many forward passes of the (randomized) model and input transform."""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = False, norm: str = "linf", seed: int | None = None,
                 eot_iter: int = 1) -> None:
        if norm not in NORMS:
            raise AdvshieldError(f"norm must be 'linf' or 'l2', not {norm!r}")
        eps = check_eps(eps, "eps", norm)
        alpha = check_number(alpha, "alpha", low=0.0)
        steps = int(check_number(steps, "steps", low=0, integer=True))
        if steps == 0 and not random_start:
            raise AdvshieldError("steps must be >= 1 (0 only with random_start: the random start alone), not 0")
        super().__init__(model, ThreatModel(norm=norm, eps=eps), seed)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, bool(random_start)
        self.eot = check_steps(eot_iter, "eot_iter")  # gradients averaged over this many draws of the model

    # hooks ---------------------------------------------------------------------------------------------
    def init(self, x: torch.Tensor) -> torch.Tensor:
        """Starting point. Random start: U(-eps, eps) (L∞) or a uniform point in the L2 ball."""
        if not self.random_start:
            return x.clone()
        if self.threat.norm == "linf":
            delta = global_like(x, lambda s: torch.empty(s, device=x.device, dtype=x.dtype).uniform_(
                -self.eps, self.eps), self.shard)
        else:
            delta = global_like(x, lambda s: torch.randn(s, device=x.device, dtype=x.dtype), self.shard)
            n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            r = global_like(x[:, 0, 0, 0], lambda s: torch.rand(s, device=x.device), self.shard).view_as(n)
            delta = delta / n * r * self.eps
        return (x + delta).clamp(*self.threat.bounds)

    def input_transform(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Applied to the image before the forward pass (DI resizes here)."""
        return x_adv

    def outputs(self, x_in: torch.Tensor) -> torch.Tensor:
        """What the loss sees: the model's logits (a feature attack returns a feature map here)."""
        return self.model(x_in)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed over the batch; ascended. Targeted: minus the cross-entropy toward ``y``."""
        ce = F.cross_entropy(logits, y, reduction="sum")
        return -ce if self.targeted else ce

    def grad_transform(self, grad: torch.Tensor) -> torch.Tensor:
        """Momentum, translation smoothing... go here; may keep state on ``self``."""
        return grad

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.threat.norm == "linf":
            return x_adv + self.alpha * grad.sign()
        n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        return x_adv + self.alpha * grad / n

    def reset(self) -> None:
        """Clear per-call state (momentum buffers...); called before and after every call."""

    # loop ----------------------------------------------------------------------------------------------
    def gradient(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇ of the loss at ``x_adv`` (same shape); with ``eot`` > 1 the mean over that many random draws of the
        model and input transform, one forward and one backward pass each (Expectation over Transformation,
        Athalye et al. 2018)."""
        draws = max(1, int(self.eot))
        with torch.enable_grad():  # also inside a caller's torch.no_grad()
            x_adv = x_adv.detach().requires_grad_(True)
            grad = None
            for _ in range(draws):
                loss = self.loss(self.outputs(self.input_transform(x_adv)), y)
                (g,) = torch.autograd.grad(loss, x_adv)
                grad = g if grad is None else grad + g
        return grad if draws == 1 else grad / draws

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.reset()
        try:
            x_adv = self.init(x)
            for _ in range(self.steps):
                grad = self.grad_transform(self.gradient(x_adv, y))
                x_adv = self.threat.project(self.step(x_adv, grad).detach(), x)
        finally:
            self.reset()
        return x_adv

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "GradientAttack":
        """Paper defaults at budget ``eps``: 10 steps of eps/10 (NRP supplement F); ``kw`` (``eot_iter``...)
        goes to the constructor."""
        return cls(model, eps=eps, **{"alpha": eps / 10, "steps": 10, **kw})


def grid_attacks() -> list[str]:
    """Names of the registered attacks of the default transfer grid (``transfer = True``), sorted."""
    from ..registry import ATTACKS

    return [n for n in ATTACKS.names() if getattr(ATTACKS.get(n), "transfer", True)]
