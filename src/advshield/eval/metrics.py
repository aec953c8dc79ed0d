"""Per-sample flags → the usual robustness metrics. All inputs are boolean/int tensors of shape N."""
from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``pred == y``."""
    return float((pred == y).float().mean()) if len(y) else float("nan")


def attack_success_rate(clean_correct: torch.Tensor, adv_correct: torch.Tensor) -> float:
    """Among samples the model classified correctly when clean, the fraction the attack made wrong."""
    n = int(clean_correct.sum())
    return float((clean_correct & ~adv_correct).sum()) / n if n else float("nan")


def fooling_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor) -> float:
    """Fraction of samples whose prediction changed (labels not needed)."""
    return float((clean_pred != adv_pred).float().mean()) if len(clean_pred) else float("nan")


def restoration_accuracy(defended_clean_acc: float, defended_adv_acc: float, baseline_clean_acc: float) -> float:
    """Borkar et al.: (top1_defended(clean) + top1_defended(perturbed)) / (2 · top1_baseline(clean))."""
    if baseline_clean_acc <= 0:
        return float("nan")
    return (defended_clean_acc + defended_adv_acc) / (2.0 * baseline_clean_acc)
