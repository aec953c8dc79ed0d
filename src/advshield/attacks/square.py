"""Square Attack (Andriushchenko et al. 2020): score-based random search over square-shaped updates, L∞ and L2.

Forward passes only (no gradients), under ``torch.no_grad``; each query runs only the samples not yet fooled."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_eps, check_number, check_steps
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .base import Attack
from .cw import margin
from .threat import ThreatModel

NORM_NAMES = {"linf": "linf", "l2": "l2"}  # torchattacks spells them "Linf", "L2"; matched case-insensitively
LOSSES = ("margin", "ce")
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each of these iterations (of 10 000)


def norm_name(norm: str) -> str:
    """``"Linf"``/``"linf"`` → ``"linf"``, ``"L2"``/``"l2"`` → ``"l2"``; anything else is an :class:`AdvshieldError`."""
    key = norm.lower() if isinstance(norm, str) else None
    if key not in NORM_NAMES:
        raise AdvshieldError(f"norm must be 'Linf' or 'L2', not {norm!r}")
    return NORM_NAMES[key]


def p_schedule(p_init: float, it: int, n_queries: int, rescale: bool = True) -> float:
    """The paper's fraction of pixels changed at iteration ``it``: p_init halved at iterations 10, 50, 200, 500,
    1000, 2000, 4000, 6000, 8000 of a 10 000-query run (``rescale``: of an ``n_queries`` run, proportionally)."""
    if rescale:
        it = int(it / n_queries * 10000)
    return p_init / 2 ** sum(it > t for t in SCHEDULE)


@functools.lru_cache(maxsize=64)
def _rect_pattern(a: int, b: int) -> torch.Tensor:
    """a×b block of nested rectangles around its centre: value Σ_{r ≥ d} 1/(r+1)² at Chebyshev distance d from the
    centre (r < max(a, b) // 2 + 1), unit L2 norm. CPU, cached."""
    rows = (torch.arange(a) - a // 2).abs()
    cols = (torch.arange(b) - b // 2).abs()
    d = torch.maximum(rows[:, None], cols[None, :])
    terms = 1.0 / torch.arange(1, max(a, b) // 2 + 2, dtype=torch.float32) ** 2
    tail = terms.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{r ≥ d} terms[r]
    out = tail[d.clamp_max(len(tail) - 1)]
    return out / out.norm().clamp_min(1e-12)


@functools.lru_cache(maxsize=64)
def _eta(s: int) -> torch.Tensor:
    """The s×s L2 meta-pattern: top half +rectangles, bottom half −rectangles, unit norm. CPU, cached."""
    eta = torch.zeros(s, s)
    if s // 2:
        eta[: s // 2] = _rect_pattern(s // 2, s)
    eta[s // 2:] = -_rect_pattern(s - s // 2, s)
    return eta / eta.norm().clamp_min(1e-12)


def meta_pattern(s: int, n: int, device: torch.device) -> torch.Tensor:
    """n×s×s L2 update patterns (:func:`_eta`), each sample's transposed with probability 1/2."""
    eta = _eta(s).to(device)
    flip = torch.rand(n, device=device) < 0.5
    return torch.where(flip[:, None, None], eta.t(), eta)


def _signs(*shape: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 2, shape, device=device).float() * 2 - 1


def _window(n: int, h: int, w: int, s: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random s×s windows: (row indices n×s, column indices n×s), every position equally likely."""
    top = torch.randint(0, h - s + 1, (n,), device=device)
    left = torch.randint(0, w - s + 1, (n,), device=device)
    ar = torch.arange(s, device=device)
    return top[:, None] + ar, left[:, None] + ar


def _get(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The windows of an N×C×H×W tensor: N×C×s×s."""
    b = torch.arange(len(t), device=t.device)[:, None, None]
    return t.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _put(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with its windows set to ``value`` (N×C×s×s)."""
    out = t.permute(0, 2, 3, 1).clone()
    b = torch.arange(len(t), device=t.device)[:, None, None]
    out[b, rows[:, :, None], cols[:, None, :]] = value.permute(0, 2, 3, 1)
    return out.permute(0, 3, 1, 2)


def _mask(rows: torch.Tensor, cols: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """N×1×H×W boolean mask of the windows."""
    r = torch.zeros(len(rows), h, dtype=torch.bool, device=rows.device).scatter_(1, rows, True)
    c = torch.zeros(len(cols), w, dtype=torch.bool, device=cols.device).scatter_(1, cols, True)
    return (r[:, :, None] & c[:, None, :])[:, None]


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped N×1×1×1."""
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


@ATTACKS.register("square", "Square Attack: score-based random search with square updates, L∞ (no gradients)")
class Square(Attack):
    """``Square(model, norm="Linf", eps=8/255, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
    resc_schedule=True, seed=0, resample=True)`` (torchattacks' settings, plus ``resample``).

    Random search (Andriushchenko et al. 2020). Start on the budget's boundary: L∞, vertical stripes of ±eps (one
    sign per column and channel); L2, a grid of ±meta-patterns scaled to eps. Each iteration proposes one random
    s×s window per sample, s² ≈ p·H·W with p from :func:`p_schedule`, and keeps it when the loss decreases
    (``"margin"``: :func:`~advshield.attacks.cw.margin`; ``"ce"``: minus the cross-entropy, plus it when targeted).
    L∞ proposal: the window set to x ± eps, one sign per channel. With ``resample`` (the authors' code) signs that
    would leave the image unchanged are redrawn, so no query is spent on a no-op; torchattacks' and AutoAttack's
    versions lack that loop and are weaker at a small query budget. L2 proposal: the mass of two windows plus the
    unused budget goes into a fresh ±meta-pattern (plus the old content's direction) in the first window, the
    second is cleared, and the whole perturbation is rescaled to eps.

    Queries: 1 + at most ``n_queries`` per restart, each a forward pass of the samples not yet fooled;
    ``n_restarts`` reruns the samples still not fooled. Returns, per sample, its first adversarial image, else the
    lowest-margin image found (x for samples the model already gets wrong)."""

    name = "square"
    norm = "linf"
    transfer = False

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, n_queries: int = 5000,
                 n_restarts: int = 1, p_init: float = 0.8, loss: str = "margin", resc_schedule: bool = True,
                 seed: int | None = 0, resample: bool = True) -> None:
        norm = norm_name(norm)
        super().__init__(model, ThreatModel(norm=norm, eps=check_eps(eps, "eps", norm)), seed)
        self.norm = norm
        self.n_queries = check_steps(n_queries, "n_queries")
        self.n_restarts = check_steps(n_restarts, "n_restarts")
        self.p_init = check_number(p_init, "p_init", low=0.0, low_open=True, high=1.0)
        if loss not in LOSSES:
            raise AdvshieldError(f"loss must be 'margin' or 'ce', not {loss!r}")
        self.loss = loss
        self.resc_schedule = bool(resc_schedule)
        self.resample = bool(resample)  # L∞ only

    @property
    def eps(self) -> float:
        return self.threat.eps

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "Square":
        """torchattacks' defaults (5000 queries, p_init 0.8, margin loss) at radius ``eps`` in this class's norm."""
        return cls(model, eps=eps, **{"norm": cls.norm, **kw})

    # -- scoring -------------------------------------------------------------------------------------------------
    def _scores(self, x_q: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin, loss) per sample of one query; both minimised, margin <= 0 means fooled."""
        logits = self.model(x_q)
        if logits.dim() != 2:
            raise AdvshieldError(f"model: square needs N×K logits, got shape {tuple(logits.shape)}")
        m = margin(logits, y, self.targeted)
        if self.loss == "margin":
            return m, m
        ce = F.cross_entropy(logits, y, reduction="none")
        return m, ce if self.targeted else -ce

    # -- the attack ----------------------------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x_adv = x.clone()
            if len(x) == 0:
                return x_adv
            best_margin = self._scores(x, y)[0]
            for _ in range(self.n_restarts):
                todo = (best_margin > 0).nonzero().flatten()
                if len(todo) == 0:
                    break
                adv, m = self._run(x[todo], y[todo])
                better = m < best_margin[todo]
                x_adv[todo[better]] = adv[better]
                best_margin[todo[better]] = m[better]
        return x_adv

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One random-search run: (best images, their margins)."""
        n, c, h, w = x.shape
        best = self._start(x)
        best_margin, best_loss = self._scores(best, y)
        for it in range(self.n_queries):
            act = (best_margin > 0).nonzero().flatten()
            if len(act) == 0:
                break
            p = p_schedule(self.p_init, it, self.n_queries, self.resc_schedule)
            propose = self._linf_step if self.norm == "linf" else self._l2_step
            cand = propose(x[act], best[act], p)
            m, loss = self._scores(cand, y[act])
            keep = (loss < best_loss[act]) | (m <= 0)
            best_loss[act] = torch.where(loss < best_loss[act], loss, best_loss[act])
            best_margin[act] = torch.where(keep, m, best_margin[act])
            best[act[keep]] = cand[keep]
        return best, best_margin

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":  # vertical stripes
            return (x + self.eps * _signs(n, c, 1, w, device=x.device)).clamp(*self.threat.bounds)
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        top0, left0 = (h - s * (h // s)) // 2, (w - s * (w // s)) // 2
        for i in range(h // s):
            for j in range(w // s):
                tile = meta_pattern(s, n, x.device)[:, None] * _signs(n, c, 1, 1, device=x.device)
                r, q = top0 + i * s, left0 + j * s
                delta[:, :, r:r + s, q:q + s] += tile
        return (x + delta / _l2(delta).clamp_min(1e-12) * self.eps).clamp(*self.threat.bounds)

    def _side(self, p: float, h: int, w: int, low: int) -> int:
        return min(max(int(round(math.sqrt(p * h * w))), low), h, w)

    def _linf_step(self, x: torch.Tensor, best: torch.Tensor, p: float) -> torch.Tensor:
        """Each sample's window set to x ± eps (one sign per channel); with ``resample`` the signs are redrawn while
        that would leave the current image unchanged."""
        n, c, h, w = x.shape
        s = self._side(p, h, w, 1)
        rows, cols = _window(n, h, w, s, x.device)
        xw, bw = _get(x, rows, cols), _get(best, rows, cols)
        signs = _signs(n, c, 1, 1, device=x.device)
        new = (xw + self.eps * signs).clamp(*self.threat.bounds)
        for attempt in range(11 if self.resample else 0):
            same = ((new - bw).abs() < 1e-7).flatten(1).all(1)[:, None, None, None]
            if not same.any():
                break
            # redraw; after 10 unlucky draws flip every sign, which always changes the window (eps > 0)
            signs = torch.where(same, -signs if attempt == 10 else _signs(n, c, 1, 1, device=x.device), signs)
            new = (xw + self.eps * signs).clamp(*self.threat.bounds)
        return _put(best, rows, cols, new)

    def _l2_step(self, x: torch.Tensor, best: torch.Tensor, p: float) -> torch.Tensor:
        """Window 1 gets a fresh ±meta-pattern plus its old content's direction, carrying the mass of windows 1 and 2
        (per channel) and the unused budget; window 2 is cleared; the whole perturbation is rescaled to eps."""
        n, c, h, w = x.shape
        s = self._side(p, h, w, 3)
        if s % 2 == 0 and s > 1:
            s -= 1
        delta = best - x
        r1, c1 = _window(n, h, w, s, x.device)
        r2, c2 = _window(n, h, w, s, x.device)
        both = _mask(r1, c1, h, w) | _mask(r2, c2, h, w)
        mass = (delta * both).pow(2).sum((2, 3), keepdim=True)  # N×C×1×1, per channel
        spare = (self.eps ** 2 - _l2(delta).pow(2)).clamp_min(0) / c
        old = _get(delta, r1, c1)
        old = old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = meta_pattern(s, n, x.device)[:, None] * _signs(n, c, 1, 1, device=x.device) + old
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (spare + mass).sqrt()
        delta = _put(delta.masked_fill(_mask(r2, c2, h, w), 0.0), r1, c1, new)
        return (x + delta / _l2(delta).clamp_min(1e-12) * self.eps).clamp(*self.threat.bounds)


@ATTACKS.register("square-l2", "Square Attack in the L2 ball: score-based random search (no gradients)")
class SquareL2(Square):
    """``SquareL2(model, eps=0.5, ...)``: :class:`Square` with ``norm="L2"``; eps is the L2 radius over C·H·W."""

    name = "square-l2"
    norm = "l2"

    def __init__(self, model: nn.Module, eps: float = 0.5, n_queries: int = 5000, n_restarts: int = 1,
                 p_init: float = 0.8, loss: str = "margin", resc_schedule: bool = True, seed: int | None = 0) -> None:
        super().__init__(model, norm="L2", eps=eps, n_queries=n_queries, n_restarts=n_restarts, p_init=p_init,
                         loss=loss, resc_schedule=resc_schedule, seed=seed)

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "SquareL2":
        """torchattacks' defaults (5000 queries, p_init 0.8, margin loss) at L2 radius ``eps``."""
        return cls(model, eps=eps, **kw)
