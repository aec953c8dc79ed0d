"""DeepFool (Moosavi-Dezfooli et al. 2016): repeated steps to the nearest linearised decision boundary, minimal L2."""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_number, check_steps
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .cw import MinimalNormAttack


@ATTACKS.register("deepfool", "DeepFool: steps to the nearest linearised class boundary, minimal L2 (batched)")
class DeepFool(MinimalNormAttack):
    """``DeepFool(model, steps=50, overshoot=0.02, candidates=10, box_aware=True, eps=None, eot_iter=1)``
    (torchattacks' settings, plus ``candidates`` and ``box_aware``).

    Each step linearises the logits at the current image and moves every sample still classified as its label to the
    nearest linearised boundary between its label y and a class k among the ``candidates`` classes ranked highest on
    the clean image (the reference code's ``num_classes``; all classes when the model has that many or fewer):
    r = |z_k − z_y| / ‖∇z_k − ∇z_y‖² · (∇z_k − ∇z_y), taken (1 + overshoot) times and clipped to [0,1]. With
    ``box_aware`` the gradient components of pixels already at 0 (1) that point down (up) are dropped from r and its
    norm, so the step reaches the linearised boundary inside the pixel box. Without it (torchattacks' version), on
    images with many saturated pixels (Fashion-MNIST's black background) clipping eats the step and samples stall
    exactly on the boundary, where float round-off decides whether they count as fooled. A sample stops once it
    is misclassified; after ``steps`` steps the others keep their last image. Targeted modes: the step
    goes to the boundary between the current top class and the target, until the target wins. ``eot_iter``: logits
    and gradients averaged over that many forward passes. Cost per step: one forward and ``candidates − 1``
    backward passes (one when targeted) over the samples still running."""

    name = "deepfool"

    def __init__(self, model: nn.Module, steps: int = 50, overshoot: float = 0.02, candidates: int = 10,
                 box_aware: bool = True, eps: float | None = None, eot_iter: int = 1, seed: int | None = None) -> None:
        super().__init__(model, eps, eot_iter, seed)
        self.steps = check_steps(steps)
        self.overshoot = check_number(overshoot, "overshoot", low=0.0)
        self.candidates = int(check_number(candidates, "candidates", low=2, integer=True))
        self.box_aware = bool(box_aware)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        with torch.no_grad():
            clean = self.model(x)
        if clean.dim() != 2:
            raise AdvshieldError(f"model: deepfool needs N×K logits, got shape {tuple(clean.shape)}")
        m = min(self.candidates, clean.shape[1])
        # candidate classes per sample: the label first, then the m-1 highest-ranked others
        others = clean.scatter(1, y[:, None], -float("inf")).topk(m - 1, dim=1).indices
        classes = torch.cat([y[:, None], others], 1)
        active = torch.arange(len(x), device=x.device)
        for _ in range(self.steps):
            if len(active) == 0:
                break
            xa, ya = x_adv[active], y[active]
            logits, grads = self._linearise(xa, ya, classes[active])
            pred = logits.argmax(1)
            running = pred != ya if self.targeted else pred == ya  # not fooled yet
            if not running.all():
                active, xa, ya, logits, grads, pred = (t[running] for t in (active, xa, ya, logits, grads, pred))
                if len(active) == 0:
                    break
            f, w = self._boundaries(logits, grads, ya, pred, classes[active])  # k×B, k×B×C×H×W
            if self.box_aware:  # pixels at a bound cannot move further out: leave them out of the step
                lo, hi = self.threat.bounds
                w = w.masked_fill(((xa <= lo)[:, None] & (w < 0)) | ((xa >= hi)[:, None] & (w > 0)), 0.0)
            wn = w.flatten(2).norm(dim=2).clamp_min(1e-12)
            nearest = (f.abs() / wn).argmin(1)  # k
            pick = torch.arange(len(active), device=x.device)
            fk, wk, nk = f[pick, nearest], w[pick, nearest], wn[pick, nearest]
            r = (fk.abs() / nk.pow(2)).view(-1, *[1] * (x.dim() - 1)) * wk.view_as(xa)
            x_adv[active] = (xa + (1 + self.overshoot) * r).clamp(*self.threat.bounds)
        return self.bound(x_adv, x)

    def _linearise(self, xa: torch.Tensor, ya: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits k×K, gradients): untargeted, ∇(z_c − z_y) for the candidates c (k×(m−1)×C×H×W); targeted,
        ∇(z_t − z_top) (k×1×C×H×W, the top class of the same forward pass). Averaged over ``eot`` passes."""
        logits_sum, grads_sum = 0.0, 0.0
        with torch.enable_grad():
            for _ in range(self.eot):
                xg = xa.detach().requires_grad_(True)
                logits = self.model(xg)
                if self.targeted:
                    top = logits.detach().argmax(1)
                    diffs = [logits.gather(1, ya[:, None]) - logits.gather(1, top[:, None])]
                else:
                    own = logits.gather(1, ya[:, None])
                    diffs = [logits.gather(1, cls[:, j:j + 1]) - own for j in range(1, cls.shape[1])]
                grads = [torch.autograd.grad(d.sum(), xg, retain_graph=i + 1 < len(diffs))[0]
                         for i, d in enumerate(diffs)]
                logits_sum = logits_sum + logits.detach()
                grads_sum = grads_sum + torch.stack(grads, 1)
        return logits_sum / self.eot, grads_sum / self.eot

    def _boundaries(self, logits: torch.Tensor, grads: torch.Tensor, ya: torch.Tensor, pred: torch.Tensor,
                    cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit differences (k×B) and their gradients (k×B×…) for the B boundaries each sample may cross."""
        if self.targeted:
            return logits.gather(1, ya[:, None]) - logits.gather(1, pred[:, None]), grads
        return logits.gather(1, cls[:, 1:]) - logits.gather(1, ya[:, None]), grads
