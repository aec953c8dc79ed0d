"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): APGD with the CE or DLR loss and APGD-T (targeted DLR over the top classes), L∞ and L2.

Step size 2·eps to start, momentum 0.75, checkpoints ``w_j = ⌈p_j·steps⌉`` (:func:`checkpoints`) at which the step
size of a sample is halved and the sample sent back to its best point when its loss rose in fewer than a fraction
``rho`` of the steps since the last checkpoint, or when neither its step size nor its best loss changed since. Each
iteration costs one forward and one backward pass (``eot_iter`` of each with EOT), on the samples not yet fooled.
Like the authors' implementation, the first window compares the first step's loss with 0 (see ``_run``).

Returned per sample: the first point found that fools the model (the clean image if it is already fooled), else the
highest-loss point found over all runs. Images N×C×H×W in [0,1]; eps in [0,1] units (L2: over all C·H·W values).

With EOT (``eot_iter`` > 1, for randomized models) a point that fools some of the draws of one step is kept, but the
sample keeps ascending: the point returned is the latest one that fooled the largest share of a step's draws, and a
sample leaves the batch only once a point fools every draw of its step. (The authors' implementation keeps ascending
to the last step and returns the last point that fooled the step's last draw; stopping at the first point that fools
one draw, as without EOT, returns points that fool far fewer draws: about 86 % instead of 93 % of 20 draws on a noisy
Fashion-MNIST LeNet.)
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_eps, check_number, check_steps
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .base import Attack
from .threat import ThreatModel

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75  # alpha of Croce & Hein's update (1.0 on the first step)

Objective = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD checks its step size, increasing, in [1, steps]: ``w_j = ⌈p_j·steps⌉`` with
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), for the p_j ≤ 1 (duplicates dropped).
    Computed in exact hundredths, so 100 steps give 22, 41, 57, 70, 80, 87, 93, 99."""
    steps = check_steps(steps, "steps")
    out: list[int] = []
    prev, cur = 0, 22  # p_{j-1}, p_j in hundredths
    while cur <= 100:
        w = -(-cur * steps // 100)  # ceil
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return out


def halve_step(increases: torch.Tensor, window: int, rho: float, reduced_before: torch.Tensor,
               best: torch.Tensor, best_before: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's test at a checkpoint, per sample (N bools, True: halve the step size, go back to the best
    point): the loss rose in fewer than ``rho·window`` of the ``window`` steps since the last checkpoint
    (``increases`` N), or the step size was not halved at the last checkpoint (``reduced_before``) and the best loss
    (``best``) is no higher than it was there (``best_before``)."""
    return (increases < rho * window) | (~reduced_before & (best <= best_before))


def _gather(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, idx[:, None]).squeeze(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, per sample (N): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3), π the classes sorted by
    logit, descending. Shift- and scale-invariant in the logits; needs at least 3 classes. logits N×K, y N."""
    top = logits.sort(1).values
    z_y = _gather(logits, y)
    other = torch.where(z_y >= top[:, -1], top[:, -2], top[:, -1])  # the largest logit of another class
    return -(z_y - other) / (top[:, -1] - top[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per sample (N): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2); ascending it moves logit mass from
    class ``y`` to ``target``. Needs at least 4 classes. logits N×K, y and target N."""
    top = logits.sort(1).values
    return -(_gather(logits, y) - _gather(logits, target)) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)


def strongest_other(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample, the class with the largest logit other than ``target`` (N int, no gradient)."""
    masked = logits.detach().scatter(1, target[:, None], float("-inf"))
    return masked.argmax(1)


def parse_norm(norm: Any) -> str:
    """``"Linf"``/``"L2"`` (torchattacks' spelling, any case) → ``"linf"``/``"l2"``."""
    key = norm.lower() if isinstance(norm, str) else None
    if key not in ("linf", "l2"):
        raise AdvshieldError(f"norm must be 'Linf' or 'L2', not {norm!r}")
    return key


@ATTACKS.register("apgd", "Auto-PGD: momentum, step-size halving at checkpoints, restarts; CE or DLR loss "
                          "(Croce & Hein 2020)")
class APGD(Attack):
    """``APGD(model, norm="Linf", eps=8/255, steps=10, n_restarts=1, seed=0, loss="ce", eot_iter=1, rho=0.75)``.

    ``loss``: ``"ce"`` (cross-entropy) or ``"dlr"`` (:func:`dlr_loss`). ``n_restarts`` runs from random starts, each
    on the samples not yet fooled. Targeted modes ascend −CE toward the target, or the targeted DLR against the
    strongest other class, and count a sample as fooled once it is classified as its target."""

    name = "apgd"
    norm = "linf"
    transfer = False

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, seed: int | None = 0, loss: str = "ce", eot_iter: int = 1,
                 rho: float = 0.75) -> None:
        key = parse_norm(norm)
        eps = check_eps(eps, "eps", key)
        super().__init__(model, ThreatModel(norm=key, eps=eps), seed)
        self.norm = key
        self.eps = eps
        self.steps = check_steps(steps, "steps")
        self.n_restarts = check_steps(n_restarts, "n_restarts")
        self.eot = check_steps(eot_iter, "eot_iter")  # gradients averaged over this many draws of the model
        self.rho = check_number(rho, "rho", low=0.0, high=1.0)
        if loss not in LOSSES:
            raise AdvshieldError(f"loss must be 'ce' or 'dlr', not {loss!r}")
        self.loss = loss

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "APGD":
        """AutoAttack's standard APGD-CE at budget ``eps``: 100 steps, 1 run (pass ``norm="L2"`` for L2)."""
        return cls(model, eps=eps, **{"steps": 100, "n_restarts": 1, **kw})

    # -- objectives ------------------------------------------------------------------------------------------
    def _success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """N bools: misclassified (untargeted) or classified as the target ``y`` (targeted modes)."""
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def _check_classes(self, k: int, need: int, what: str) -> None:
        if k < need:
            raise AdvshieldError(f"{what} needs a model with at least {need} classes, this one has {k}")

    def _jobs(self, logits: torch.Tensor, y: torch.Tensor) -> list[tuple[Objective, torch.Tensor | None]]:
        """The runs of one call, in order: (per-sample objective(logits, y, extra), per-sample extra or None)."""
        k = logits.shape[1]
        if self.loss == "ce":
            if self.targeted:
                def objective(z, t, _):
                    return -F.cross_entropy(z, t, reduction="none")
            else:
                def objective(z, t, _):
                    return F.cross_entropy(z, t, reduction="none")
        elif self.targeted:
            self._check_classes(k, 4, "loss 'dlr' in a target mode")

            def objective(z, t, _):
                return dlr_targeted_loss(z, strongest_other(z, t), t)
        else:
            self._check_classes(k, 3, "loss 'dlr'")

            def objective(z, t, _):
                return dlr_loss(z, t)
        return [(objective, None)] * self.n_restarts

    # -- the attack ------------------------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise AdvshieldError("model must return N×K class logits for APGD")
        done = self._success(logits, y)
        out = x.clone()
        best = torch.full((len(x),), float("-inf"), device=x.device)
        for objective, extra in self._jobs(logits, y):
            idx = (~done).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            fooled, x_fooled, x_best, loss_best = self._run(x[idx], y[idx], None if extra is None else extra[idx],
                                                            objective)
            upd = ~fooled & (loss_best > best[idx])
            out[idx[upd]], best[idx[upd]] = x_best[upd], loss_best[upd]
            out[idx[fooled]], done[idx[fooled]] = x_fooled[fooled], True
        return out

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """Random start on the ball's surface: eps·t/‖t‖∞ with t ~ U(-1,1) (L∞) or eps·t/‖t‖₂, t ~ N(0,1) (L2);
        clipped to the pixel range."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        if self.threat.norm == "linf":
            t = torch.rand_like(x) * 2 - 1
            t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(shape)
        else:
            t = torch.randn_like(x)
            t = t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        return (x + self.eps * t).clamp(*self.threat.bounds)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.threat.norm == "linf":
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))

    def _evaluate(self, x_adv: torch.Tensor, y: torch.Tensor, extra: torch.Tensor | None,
                  objective: Objective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample loss N averaged over the EOT draws, share of the draws the point fools N in [0,1], gradient
        averaged)."""
        with torch.enable_grad():
            x_in = x_adv.detach().requires_grad_(True)
            grad = torch.zeros_like(x_adv)
            loss = torch.zeros(len(x_adv), device=x_adv.device)
            fools = torch.zeros(len(x_adv), device=x_adv.device)
            for _ in range(self.eot):
                logits = self.model(x_in)
                per_sample = objective(logits, y, extra)
                (g,) = torch.autograd.grad(per_sample.sum(), x_in)
                grad += g
                loss += per_sample.detach()
                fools += self._success(logits.detach(), y).float()
        return loss / self.eot, fools / self.eot, grad / self.eot

    def _run(self, x: torch.Tensor, y: torch.Tensor, extra: torch.Tensor | None,
             objective: Objective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run from a random start. Returns (fooled N bools, fooling points, best-loss points, best losses
        N). A fooling point is the latest with the largest share of fooled draws (without EOT: the first); samples
        whose point fools every draw leave the batch, so later iterations only cost what is left."""
        n, shape = len(x), (-1,) + (1,) * (x.dim() - 1)
        fooled_out = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_out, best_x_out = x.clone(), x.clone()
        best_loss_out = torch.full((n,), float("-inf"), device=x.device)
        share_out = torch.zeros(n, device=x.device)  # largest share of a step's draws fooled so far

        rows = torch.arange(n, device=x.device)  # positions of the live samples in this run's batch
        x_adv = self._start(x)
        loss, share, grad = self._evaluate(x_adv, y, extra, objective)
        live = {"x": x, "y": y, "x_adv": x_adv, "grad": grad, "x_prev": x_adv.clone(), "x_best": x_adv.clone(),
                "grad_best": grad.clone(), "loss_best": loss.clone(), "loss_prev": torch.zeros_like(loss),
                "eta": torch.full((n,), 2 * self.eps, device=x.device), "ups": torch.zeros(n, device=x.device),
                "best_at_check": loss.clone(), "reduced": torch.zeros(n, dtype=torch.bool, device=x.device)}
        # "loss_prev" starts at 0, not at the start's loss: in the authors' implementation (AutoAttack, torchattacks)
        # the first step of the first window counts as an increase only when its loss is positive. With the DLR
        # losses (negative until the sample is fooled) this halves the step more often early, and it matters:
        # robust accuracy moves by about 1 point on Fashion-MNIST (L2 DLR, 10 steps).
        if extra is not None:
            live["extra"] = extra
        marks, last_mark = set(checkpoints(self.steps)), 0

        def retire(share: torch.Tensor) -> torch.Tensor:
            """Record the points that fool at least as large a share of the draws as any before, drop the samples
            whose point fools every draw from the live state; returns the live rows."""
            record = (share > 0) & (share >= share_out[rows])
            if bool(record.any()):
                fooled_out[rows[record]] = True
                x_out[rows[record]] = live["x_adv"][record]
                share_out[rows[record]] = share[record]
            done = share >= 1
            if bool(done.any()):
                keep = ~done
                for key, value in live.items():
                    live[key] = value[keep]
                return rows[keep]
            return rows

        rows = retire(share)
        for i in range(self.steps):
            if len(rows) == 0:
                break
            s = live  # the same dict, compacted in place by retire()
            a = 1.0 if i == 0 else MOMENTUM
            z = self.threat.project(s["x_adv"] + s["eta"].view(shape) * self._direction(s["grad"]), s["x"])
            x_new = self.threat.project(s["x_adv"] + a * (z - s["x_adv"]) + (1 - a) * (s["x_adv"] - s["x_prev"]),
                                        s["x"])
            s["x_prev"], s["x_adv"] = s["x_adv"], x_new
            loss, share, s["grad"] = self._evaluate(x_new, s["y"], s.get("extra"), objective)
            s["ups"] += (loss > s["loss_prev"]).float()
            s["loss_prev"] = loss
            better = loss > s["loss_best"]
            s["x_best"][better], s["grad_best"][better] = x_new[better], s["grad"][better]
            s["loss_best"] = torch.where(better, loss, s["loss_best"])
            rows = retire(share)
            if i + 1 in marks:
                window, last_mark = i + 1 - last_mark, i + 1
                reduce = halve_step(s["ups"], window, self.rho, s["reduced"], s["loss_best"], s["best_at_check"])
                s["eta"] = torch.where(reduce, s["eta"] / 2, s["eta"])
                s["x_adv"][reduce], s["grad"][reduce] = s["x_best"][reduce], s["grad_best"][reduce]
                s["loss_prev"] = torch.where(reduce, s["loss_best"], s["loss_prev"])
                s["reduced"], s["best_at_check"] = reduce, s["loss_best"].clone()
                s["ups"] = torch.zeros_like(s["ups"])
        best_x_out[rows], best_loss_out[rows] = live["x_best"], live["loss_best"]
        return fooled_out, x_out, best_x_out, best_loss_out


@ATTACKS.register("apgdt", "Auto-PGD with the targeted DLR loss against each of the top classes in turn "
                           "(Croce & Hein 2020)")
class APGDT(APGD):
    """``APGDT(model, norm="Linf", eps=8/255, steps=10, n_restarts=1, seed=0, eot_iter=1, rho=0.75,
    n_target_classes=9)``; torchattacks' ``n_classes=K`` is accepted and means ``n_target_classes=K-1``.

    Untargeted (the default): for each of the ``n_target_classes`` classes ranked 2, 3, ... by the clean logits,
    ``n_restarts`` runs ascending :func:`dlr_targeted_loss` toward it, each on the samples not yet misclassified.
    In a target mode, ``n_restarts`` runs toward the target, against the strongest other class."""

    name = "apgdt"

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, seed: int | None = 0, eot_iter: int = 1, rho: float = 0.75,
                 n_target_classes: int = 9, n_classes: int | None = None) -> None:
        super().__init__(model, norm=norm, eps=eps, steps=steps, n_restarts=n_restarts, seed=seed, loss="dlr",
                         eot_iter=eot_iter, rho=rho)
        if n_classes is not None:
            n_target_classes = int(check_number(n_classes, "n_classes", low=2, integer=True)) - 1
        self.n_target_classes = check_steps(n_target_classes, "n_target_classes")

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in super().settings().items() if k != "n_classes"}

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "APGDT":
        """AutoAttack's standard APGD-T at budget ``eps``: 100 steps, 9 target classes, 1 run each."""
        return cls(model, eps=eps, **{"steps": 100, "n_restarts": 1, "n_target_classes": 9, **kw})

    def _jobs(self, logits: torch.Tensor, y: torch.Tensor) -> list[tuple[Objective, torch.Tensor | None]]:
        k = logits.shape[1]
        self._check_classes(k, 4, "APGDT (targeted DLR loss)")
        if self.targeted:
            return super()._jobs(logits, y)

        def objective(z, t, target):
            return dlr_targeted_loss(z, t, target)

        ranked = logits.argsort(1, descending=True)
        jobs: list[tuple[Objective, torch.Tensor | None]] = []
        for rank in range(1, min(self.n_target_classes, k - 1) + 1):
            jobs += [(objective, ranked[:, rank])] * self.n_restarts
        return jobs


@ATTACKS.register("apgd-l2", "Auto-PGD in the L2 ball, CE or DLR loss (Croce & Hein 2020)")
class APGDL2(APGD):
    """``APGDL2(model, eps=0.5, ...)``: :class:`APGD` with ``norm="L2"``; eps is the L2 radius over C·H·W."""

    name = "apgd-l2"
    norm = "l2"

    def __init__(self, model: nn.Module, eps: float = 0.5, steps: int = 10, n_restarts: int = 1, seed: int | None = 0,
                 loss: str = "ce", eot_iter: int = 1, rho: float = 0.75) -> None:
        super().__init__(model, norm="L2", eps=eps, steps=steps, n_restarts=n_restarts, seed=seed, loss=loss,
                         eot_iter=eot_iter, rho=rho)


@ATTACKS.register("apgdt-l2", "Auto-PGD in the L2 ball with the targeted DLR loss over the top classes")
class APGDTL2(APGDT):
    """``APGDTL2(model, eps=0.5, ...)``: :class:`APGDT` with ``norm="L2"``; eps is the L2 radius over C·H·W."""

    name = "apgdt-l2"
    norm = "l2"

    def __init__(self, model: nn.Module, eps: float = 0.5, steps: int = 10, n_restarts: int = 1, seed: int | None = 0,
                 eot_iter: int = 1, rho: float = 0.75, n_target_classes: int = 9, n_classes: int | None = None) -> None:
        super().__init__(model, norm="L2", eps=eps, steps=steps, n_restarts=n_restarts, seed=seed, eot_iter=eot_iter,
                         rho=rho, n_target_classes=n_target_classes, n_classes=n_classes)
