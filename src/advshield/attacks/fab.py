"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack"): minimal-norm adversarial examples, L∞ and L2, untargeted, multi-targeted (FAB-T)
and targeted.

Each step linearises the decision boundary at the current point, projects both the current point and the clean
image onto that hyperplane intersected with the [0,1] box (:func:`boundary_projection`), moves to a convex mix of
the two projections biased toward the clean image (weight ``alpha`` ≤ ``alpha_max``, overshoot ``eta``) and, once
adversarial, steps back toward the clean image by ``beta``. The smallest adversarial found is kept per sample.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from ..checks import check_eps, check_number, check_steps
from ..errors import AdvshieldError, ModelError
from ..registry import ATTACKS
from .base import Attack
from .threat import ThreatModel

_NORM_NAMES = {"linf": "linf", "l2": "l2"}  # accepted case-insensitively: torchattacks' "Linf"/"L2" or ours


def parse_norm(norm: object, name: str = "norm") -> str:
    """torchattacks' ``"Linf"``/``"L2"`` (any case) → advshield's ``"linf"``/``"l2"``."""
    key = norm.lower() if isinstance(norm, str) else None
    if key not in _NORM_NAMES:
        raise AdvshieldError(f"{name} must be 'Linf' or 'L2', not {norm!r}")
    return _NORM_NAMES[key]


def _per_sample(v: torch.Tensor, n: int) -> torch.Tensor:
    """A length-N vector shaped to broadcast over N×... tensors of ``n`` dims."""
    return v.view(-1, *[1] * (n - 1))


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of an N×... tensor; shape N."""
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(p=2, dim=1)


def _dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Dual norm over the last dim (L1 for L∞, L2 for L2): the distance to a hyperplane is |value| / dual norm."""
    return g.abs().sum(-1) if norm == "linf" else g.norm(p=2, dim=-1)


def boundary_projection(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """Smallest step ``d`` (in ``norm``, "linf" or "l2") with ``w·(z + d) = b`` and ``z + d`` in [0,1].

    z, w: M×D; b: M. Returns d, M×D. Where the box does not reach the hyperplane, the box point that gets closest
    to it (every coordinate with ``w_i ≠ 0`` pushed to the bound in the direction of the hyperplane).

    The minimiser moves coordinate i by ``sign(w_i)·min(λ, room_i)`` (L∞) or ``sign(w_i)·min(λ|w_i|, room_i)`` (L2)
    for the smallest λ ≥ 0 that reaches the hyperplane; ``room_i`` is the distance to the box bound in that direction.
    The progress ``g(λ) = Σ rate_i·min(λ, knee_i)`` is piecewise linear in λ, so λ follows from one sort, prefix
    sums and a search over the knees (L∞: rate |w_i|, knee room_i; L2: rate w_i², knee room_i/|w_i|)."""
    if w.dtype in (torch.float16, torch.bfloat16):  # the knees and sums need float32's range and precision
        return boundary_projection(z.float(), w.float(), b.float(), norm).to(w.dtype)
    need = b - (w * z).sum(1)  # the change of w·z that reaches the hyperplane
    sign = torch.where(need >= 0, 1.0, -1.0).to(w.dtype)
    w, need = w * sign[:, None], need * sign  # now w·d = need >= 0
    aw = w.abs()
    room = torch.where(w > 0, 1 - z, z).clamp_min(0)
    if norm == "linf":
        rate, knee = aw, room
    else:
        rate = aw * aw
        knee = torch.where(aw > 0, room / aw.clamp_min(1e-30), torch.full_like(aw, 1e30))
    knee_s, order = knee.sort(1)
    rate_s = rate.gather(1, order)
    filled = torch.cumsum(rate_s * knee_s, 1)  # Σ_{j<=k} rate_j knee_j: the saturated part at knee k
    tail = torch.flip(torch.cumsum(torch.flip(rate_s, (1,)), 1), (1,))  # Σ_{j>=k} rate_j (exactly 0 past the last)
    rest = torch.cat([tail[:, 1:], torch.zeros_like(tail[:, :1])], 1)  # Σ_{j>k} rate_j
    progress = torch.cummax(filled + knee_s * rest, 1).values  # g(knee_k), made monotone against round-off
    k = torch.searchsorted(progress, need[:, None].contiguous()).squeeze(1)  # first knee with g >= need
    dim = z.shape[1]
    feasible = k < dim
    prev = (k - 1).clamp(0, dim - 1)[:, None]
    base = torch.where(k > 0, filled.gather(1, prev).squeeze(1), torch.zeros_like(need))
    slope = torch.where(k > 0, rest.gather(1, prev).squeeze(1), tail[:, 0])
    lam = ((need - base) / slope.clamp_min(1e-30)).clamp_min(0)[:, None]
    step = lam if norm == "linf" else lam * aw
    move = torch.where(feasible[:, None], torch.minimum(step, room), room)
    return torch.where(aw > 0, torch.sign(w) * move, torch.zeros_like(move))


@ATTACKS.register("fab", "fast adaptive boundary attack: minimal L∞ adversarials via projections on the linearised "
                         "boundary (Croce & Hein 2020)")
class FAB(Attack):
    """``FAB(model, norm="Linf", eps=8/255, steps=10, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9,
    verbose=False, seed=0, multi_targeted=False, n_classes=10, eot_iter=1)`` — torchattacks' names and defaults.

    Images N×C×H×W in [0,1]; ``eps`` in [0,1] units (L2: over all C·H·W values); ``norm`` "Linf" or "L2".
    Only correctly classified samples are attacked. ``atk(x, y)`` returns, per sample, the smallest adversarial
    found if it lies within ``eps`` and ``x`` otherwise (so robust accuracy counts a sample as robust when no
    adversarial within eps is found); :meth:`minimal` returns the smallest adversarial found whatever its size,
    with its distance. Restarts after the first start from a random point at distance ``min(best, eps)/2``.
    ``multi_targeted``: FAB-T, one run per target class, the 2nd to ``n_classes``-th most likely class of the clean
    image, each linearising only the (label, target) boundary, success still = misclassified; else the nearest of
    all class boundaries (the full Jacobian: one forward and K backward passes per step). Target modes
    (:meth:`set_target_mode`): success = classified as the target; each step linearises the boundary between the
    target and the currently strongest other class. ``eot_iter`` (attribute ``eot``, as on the other attacks):
    logits and gradients averaged over that many forward passes (randomized models). ``verbose``: progress on
    stderr."""

    name = "fab"
    norm = "linf"
    transfer = False

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 verbose: bool = False, seed: int | None = 0, multi_targeted: bool = False, n_classes: int = 10,
                 eot_iter: int = 1) -> None:
        threat_norm = parse_norm(norm)
        eps = check_eps(eps, "eps", threat_norm)
        super().__init__(model, ThreatModel(norm=threat_norm, eps=eps), seed)
        self.norm = threat_norm
        self.eps = eps
        self.steps = check_steps(steps)
        self.n_restarts = check_steps(n_restarts, "n_restarts")
        self.alpha_max = check_number(alpha_max, "alpha_max", low=0.0, high=1.0)
        self.eta = check_number(eta, "eta", low=1.0)
        self.beta = check_number(beta, "beta", low=0.0, high=1.0)
        self.verbose = bool(verbose)
        self.multi_targeted = bool(multi_targeted)
        self.n_classes = int(check_number(n_classes, "n_classes", low=2, integer=True))
        self.eot = check_steps(eot_iter, "eot_iter")  # passes averaged per step; the engine raises it for randomness
        self._minimal: list[torch.Tensor] | None = None  # set by minimal(): collects the distances

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "FAB":
        """torchattacks' defaults at budget ``eps`` (10 steps, 1 restart, alpha_max 0.1, eta 1.05, beta 0.9)."""
        return cls(model, eps=eps, **{"norm": cls.norm, **kw})

    def set_target_mode(self, mode: str | None) -> "FAB":
        if mode is not None and self.multi_targeted:
            raise AdvshieldError("multi_targeted: FAB-T picks its own target classes; it takes no target mode")
        return super().set_target_mode(mode)

    # -- public -----------------------------------------------------------------------------------------
    def minimal(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest adversarial found per sample, whatever its size, and its distance (N, in ``norm``; 0 for
        samples already misclassified — or already the target — and ``inf`` where none was found, the sample
        then returned unchanged). Every restart and target runs on every sample. x, y as for ``atk(x, y)``."""
        self._minimal = []
        try:
            x_adv = self.forward(x, y)
            dist = self._minimal[0] if self._minimal else torch.zeros(0)
        finally:
            self._minimal = None
        return x_adv, dist

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.multi_targeted and self.targeted:
            raise AdvshieldError("multi_targeted: FAB-T picks its own target classes; it takes no target mode")
        search_all = self._minimal is not None
        best, dist = self._search(x, y, stop=None if search_all else self.eps)
        if search_all:
            self._minimal.append(dist)
            return best
        inside = dist <= self.eps
        return torch.where(_per_sample(inside, x.dim()), best, x)

    # -- the search -------------------------------------------------------------------------------------
    def _search(self, x: torch.Tensor, y: torch.Tensor, stop: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(smallest adversarial found, its distance; inf where none) over all targets and restarts. With ``stop``,
        samples with an adversarial within ``stop`` are left out of later runs."""
        best = x.clone()
        dist = torch.full((len(x),), float("inf"), device=x.device)
        if len(x) == 0:
            return best, dist
        with torch.no_grad():
            logits = self._logits(x)
        pred = logits.argmax(1)
        dist[(pred == y) if self.targeted else (pred != y)] = 0.0
        label, target = (None, y) if self.targeted else (y, None)
        targets: list[torch.Tensor | None] = [target]
        if self.multi_targeted:
            order = logits.argsort(1, descending=True)
            targets = [order[:, k] for k in range(1, min(self.n_classes, logits.shape[1]))]
        for t_index, tgt in enumerate(targets):
            for restart in range(self.n_restarts):
                todo = (dist > 0) if stop is None else (dist > stop)
                idx = todo.nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                x0 = x[idx]
                start = x0 if restart == 0 else self._random_start(x0, dist[idx])
                adv, d = self._run(x0, None if label is None else label[idx], None if tgt is None else tgt[idx], start)
                better = d < dist[idx]
                best[idx[better]] = adv[better]
                dist[idx[better]] = d[better]
                if self.verbose:
                    found = float((dist <= self.eps).float().mean())
                    what = f"target {t_index + 2}, " if self.multi_targeted else ""
                    print(f"FAB {what}restart {restart}: adversarial within eps={self.eps:.5g} for {found:.2%} "
                          f"of {len(x)} samples", file=sys.stderr)
        return best, dist

    def _random_start(self, x0: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """A point at distance min(dist, eps)/2 from ``x0`` in a random direction (L∞: uniform noise scaled to that
        L∞ norm; L2: Gaussian direction), clipped to [0,1]."""
        radius = _per_sample(dist.clamp(max=self.eps) / 2, x0.dim())
        noise = torch.rand_like(x0) * 2 - 1 if self.norm == "linf" else torch.randn_like(x0)
        noise = noise / _per_sample(_norm(noise, self.norm).clamp_min(1e-12), x0.dim())
        return (x0 + radius * noise).clamp(0.0, 1.0)

    def _run(self, x0: torch.Tensor, label: torch.Tensor | None, target: torch.Tensor | None,
             start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One run of ``steps`` FAB steps from ``start``: (smallest adversarial found, distance; inf where none).
        Adversarial = not ``label`` when one is given, else = ``target``."""
        m, nd = len(x0), x0.dim()
        x1 = start.clone()
        best = x0.clone()
        best_d = torch.full((m,), float("inf"), device=x0.device)
        for _ in range(self.steps):
            value, grad = self._boundary(x1, label, target)
            w = grad.flatten(1)
            b = (w * x1.flatten(1)).sum(1) - value  # hyperplane value + grad·(z - x1) = 0, i.e. w·z = b
            d = boundary_projection(torch.cat([x1.flatten(1), x0.flatten(1)]), torch.cat([w, w]), torch.cat([b, b]),
                                    self.norm)
            d1, d2 = d[:m].view_as(x0), d[m:].view_as(x0)
            a1, a2 = _norm(d1, self.norm).clamp_min(1e-8), _norm(d2, self.norm).clamp_min(1e-8)
            alpha = _per_sample((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), nd)
            x1 = ((1 - alpha) * (x1 + self.eta * d1) + alpha * (x0 + self.eta * d2)).clamp(0.0, 1.0)
            with torch.no_grad():
                pred = self._logits(x1).argmax(1)
            adv = (pred != label) if label is not None else (pred == target)
            dx = _norm(x1 - x0, self.norm)
            better = adv & (dx < best_d)
            best = torch.where(_per_sample(better, nd), x1, best)
            best_d = torch.where(better, dx, best_d)
            x1 = torch.where(_per_sample(adv, nd), x0 + self.beta * (x1 - x0), x1)
        return best, best_d

    def _boundary(self, x1: torch.Tensor, label: torch.Tensor | None,
                  target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The boundary to project on, as (value at x1: M, gradient: M×C×H×W), logits and gradients averaged over
        ``eot_iter`` passes. No target: the nearest (in the linear approximation) of the boundaries f_k − f_label.
        A label and a target: f_target − f_label. A target only: f_target − f_c, c the strongest other class."""
        rows = torch.arange(len(x1), device=x1.device)
        value = grad = None
        with torch.enable_grad():  # also inside a caller's torch.no_grad()
            for _ in range(self.eot):
                xg = x1.detach().requires_grad_(True)
                out = self._logits(xg)
                if target is None:  # the full Jacobian: one backward pass per class
                    k = out.shape[1]
                    g = torch.stack([torch.autograd.grad(out[:, j].sum(), xg, retain_graph=j < k - 1)[0]
                                     for j in range(k)], 1)
                    v = out.detach()
                else:
                    if label is not None:
                        source = label
                    else:
                        source = out.detach().scatter(1, target[:, None], float("-inf")).argmax(1)
                    diff = out[rows, target] - out[rows, source]
                    (g,) = torch.autograd.grad(diff.sum(), xg)
                    v = diff.detach()
                value = v if value is None else value + v
                grad = g if grad is None else grad + g
        value, grad = value / self.eot, grad / self.eot
        if target is not None:
            return value, grad
        df = value - value[rows, label][:, None]  # M×K: f_k − f_label
        dg = grad - grad[rows, label][:, None]
        dist = df.abs() / (_dual_norm(dg.flatten(2), self.norm) + 1e-12)
        dist[rows, label] = float("inf")
        k = dist.argmin(1)
        return df[rows, k], dg[rows, k]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"model: FAB needs N×K class logits (K >= 2), got {shape}")
        return out


@ATTACKS.register("fab-l2", "fast adaptive boundary attack: minimal L2 adversarials (Croce & Hein 2020)")
class FABL2(FAB):
    """``FABL2(model, eps=1.0, ...)``: :class:`FAB` with ``norm="L2"``; eps is the L2 radius over C·H·W."""

    name = "fab-l2"
    norm = "l2"

    def __init__(self, model: nn.Module, eps: float = 1.0, steps: int = 10, n_restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, verbose: bool = False,
                 seed: int | None = 0, multi_targeted: bool = False, n_classes: int = 10, eot_iter: int = 1) -> None:
        super().__init__(model, norm="L2", eps=eps, steps=steps, n_restarts=n_restarts, alpha_max=alpha_max, eta=eta,
                         beta=beta, verbose=verbose, seed=seed, multi_targeted=multi_targeted, n_classes=n_classes,
                         eot_iter=eot_iter)

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "FABL2":
        """torchattacks' defaults at L2 budget ``eps``."""
        return cls(model, eps=eps, **kw)
