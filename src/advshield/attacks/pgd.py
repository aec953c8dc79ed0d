"""BIM / I-FGSM (Kurakin et al. 2017) and PGD (Madry et al. 2018), L∞ and L2. ``eot_iter``: each step's gradient
averaged over that many forward passes of a randomized model (EOT)."""
from __future__ import annotations

from torch import nn

from ..registry import ATTACKS
from .base import GradientAttack


@ATTACKS.register("bim", "iterative FGSM: `steps` signed steps of `alpha`, projected (Kurakin et al. 2017)")
class BIM(GradientAttack):
    """``BIM(model, eps=8/255, alpha=2/255, steps=10, eot_iter=1)``; no random start."""

    name = "bim"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=False, norm="linf", seed=seed,
                         eot_iter=eot_iter)


IFGSM = BIM
ATTACKS.alias("ifgsm", "bim")
ATTACKS.alias("i-fgsm", "bim")


@ATTACKS.register("pgd", "projected gradient descent, L∞, optional uniform random start (Madry et al. 2018)")
class PGD(GradientAttack):
    """``PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True, eot_iter=1)``."""

    name = "pgd"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="linf",
                         seed=seed, eot_iter=eot_iter)


@ATTACKS.register("pgdl2", "projected gradient descent in the L2 ball, normalised-gradient steps")
class PGDL2(GradientAttack):
    """``PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=True, eot_iter=1)``; eps is the L2 radius over
    C·H·W."""

    name = "pgdl2"
    norm = "l2"

    def __init__(self, model: nn.Module, eps: float = 1.0, alpha: float = 0.2, steps: int = 10,
                 random_start: bool = True, seed: int | None = None, eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="l2",
                         seed=seed, eot_iter=eot_iter)

    @classmethod
    def for_budget(cls, model: nn.Module, eps: float, **kw) -> "PGDL2":
        """``eps`` is the L2 radius; 10 steps of eps/5 (torchattacks' default ratio)."""
        return cls(model, eps=eps, **{"alpha": eps / 5, "steps": 10, **kw})
