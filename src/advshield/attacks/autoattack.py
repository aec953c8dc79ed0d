"""AutoAttack (Croce & Hein 2020): an ensemble of parameter-free attacks run in order, each only on the samples
still classified correctly, keeping per sample the first adversarial found (the worst case).

- ``version="standard"``: APGD-CE, APGD-T (targeted DLR over the top 9 classes), FAB-T (9 targets), Square
  (5000 queries), 100 steps each — the RobustBench protocol for deterministic models;
- ``version="rand"``: APGD-CE and APGD-DLR with EOT over 20 draws, for randomized defenses;
- ``version="custom"``: the ``attacks`` given (names among ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``,
  ``square``).

Images N×C×H×W in [0,1]; eps in [0,1] units (L∞ per pixel, L2 over the image)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_eps, check_steps
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .apgd import APGD, APGDT
from .base import Attack
from .fab import FAB
from .square import Square, norm_name
from .threat import ThreatModel

COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}


@ATTACKS.register("autoattack", "AutoAttack: APGD-CE, APGD-T, FAB-T, Square on the still-robust samples (worst case)")
class AutoAttack(Attack):
    """``AutoAttack(model, norm="Linf", eps=8/255, version="standard", n_classes=10, seed=0, attacks=None,
    steps=100, n_queries=5000, eot_iter=20)``. ``eot_iter`` applies to ``version="rand"`` only. After a call,
    :attr:`robust_after` maps each component to the robust accuracy (fraction of the batch) after it ran."""

    name = "autoattack"
    norm = "linf"
    transfer = False

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, version: str = "standard",
                 n_classes: int = 10, seed: int | None = 0, attacks: Sequence[str] | None = None, steps: int = 100,
                 n_queries: int = 5000, eot_iter: int = 20) -> None:
        key = norm_name(norm)
        super().__init__(model, ThreatModel(norm=key, eps=check_eps(eps, "eps", key)), seed)
        if version not in (*VERSIONS, "custom"):
            raise AdvshieldError(f"version must be standard, rand or custom, not {version!r}")
        if version == "custom":
            if not attacks:
                raise AdvshieldError("version='custom' needs attacks=[...] (" + ", ".join(COMPONENTS) + ")")
            bad = [a for a in attacks if a not in COMPONENTS]
            if bad:
                raise AdvshieldError(f"unknown AutoAttack component {bad[0]!r} (known: {', '.join(COMPONENTS)})")
            self.attacks = tuple(attacks)
        else:
            if attacks:
                raise AdvshieldError("attacks=... needs version='custom'")
            self.attacks = VERSIONS[version]
        self.version, self.norm = version, key
        self.eps, self.n_classes = self.threat.eps, int(n_classes)
        self.steps, self.n_queries = check_steps(steps, "steps"), check_steps(n_queries, "n_queries")
        self.eot_iter = check_steps(eot_iter, "eot_iter")
        self.robust_after: dict[str, float] = {}

    def _component(self, name: str) -> Attack:
        norm = "Linf" if self.norm == "linf" else "L2"
        eot = self.eot_iter if self.version == "rand" else 1
        if name in ("apgd-ce", "apgd-dlr"):
            return APGD(self.model, norm=norm, eps=self.eps, steps=self.steps, loss=name[5:], eot_iter=eot,
                        n_restarts=1, seed=self.seed)
        if name == "apgd-t":
            return APGDT(self.model, norm=norm, eps=self.eps, steps=self.steps, eot_iter=eot,
                         n_target_classes=self.n_classes - 1, seed=self.seed)
        if name == "fab-t":
            return FAB(self.model, norm=norm, eps=self.eps, steps=self.steps, multi_targeted=True,
                       n_classes=self.n_classes, seed=self.seed if self.seed is not None else 0)
        return Square(self.model, norm=norm, eps=self.eps, n_queries=self.n_queries, seed=self.seed)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            robust = self.model(x).argmax(1) == y
        x_adv = x.clone()
        self.robust_after = {}
        for name in self.attacks:
            idx = robust.nonzero().flatten()
            if len(idx):
                atk = self._component(name)
                xa = atk(x[idx], y[idx])
                with torch.no_grad():
                    fooled = self.model(xa).argmax(1) != y[idx]
                x_adv[idx[fooled]] = xa[fooled]
                robust[idx[fooled]] = False
            self.robust_after[name] = float(robust.float().mean())
        return x_adv

    def set_target_mode(self, mode: str | None) -> "AutoAttack":
        if mode is not None:
            raise AdvshieldError("AutoAttack is untargeted (it measures robust accuracy); target modes do not apply")
        return super().set_target_mode(mode)

    def __repr__(self) -> str:
        eot = f", eot_iter={self.eot_iter}" if self.version == "rand" else ""
        return (f"AutoAttack({self.norm}, eps={self.eps:.4g}, version={self.version!r}, "
                f"attacks={list(self.attacks)}, steps={self.steps}, n_queries={self.n_queries}{eot})")

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "AutoAttack":
        """The standard version at budget ``eps``."""
        return cls(model, eps=eps, **kw)
