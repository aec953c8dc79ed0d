"""The white-box bypass check on an image tree (NRP's ``bypass_nrp.py``): per-image records and rates.

Images are float N×C×H×W in [0,1], read per size group; ``defended`` maps them to logits through the defense,
``model`` is the undefended classifier; ``atk`` is a :class:`~advshield.attacks.bypass.BypassPGD` on
``defended`` (its ``targets`` record the random target class of each call)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..attacks.bypass import BypassPGD
from ..data.folder import ImageFolder
from ..data.imagetree import load_batch, size_batches
from ..utils import progress


def bypass_tree(defended: nn.Module, model: nn.Module, folder: ImageFolder, labels: Sequence[int] | None,
                atk: BypassPGD, batch_size: int, device: torch.device | str, seed: int,
                desc: str = "bypass") -> list[dict[str, Any]]:
    """One record per image (sorted by file): label (the defended clean prediction when ``labels`` is None),
    target, and the undefended clean / defended clean / defended adversarial predictions. Batch ``b`` is attacked
    with seed ``seed + b``; adversarial images are evaluated in float (not quantised)."""
    rows: list[dict[str, Any]] = []
    batches = size_batches(folder, batch_size)
    for b, idx in enumerate(progress(batches, desc, total=len(batches))):
        x = load_batch(folder, idx).float().div(255).to(device)
        with torch.no_grad():
            clean = defended(x).argmax(1)
            base = model(x).argmax(1)
        y = clean if labels is None else torch.tensor([labels[i] for i in idx], dtype=torch.long, device=device)
        atk.seed = seed + b
        x_adv = atk(x, y)
        with torch.no_grad():
            adv = defended(x_adv).argmax(1)
        for k, i in enumerate(idx):
            rows.append({"file": folder.rel(i).as_posix(), "label": int(y[k]), "target": int(atk.targets[-1][k]),
                         "undefended_clean_prediction": int(base[k]), "clean_prediction": int(clean[k]),
                         "adversarial_prediction": int(adv[k])})
    rows.sort(key=lambda r: r["file"])
    return rows


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def bypass_rates(rows: list[dict[str, Any]], labelled: bool) -> dict[str, Any]:
    """n, targeted success rate (defended prediction == target), untargeted error rate, defended adversarial
    accuracy, and (``labelled`` only: otherwise the labels are the defended clean predictions) defended and
    undefended clean accuracy; rates are fractions in [0,1], None for no images."""
    return {
        "n": len(rows),
        "targeted_success_rate": _rate([r["adversarial_prediction"] == r["target"] for r in rows]),
        "untargeted_error_rate": _rate([r["adversarial_prediction"] != r["label"] for r in rows]),
        "adversarial_accuracy": _rate([r["adversarial_prediction"] == r["label"] for r in rows]),
        "clean_accuracy": _rate([r["clean_prediction"] == r["label"] for r in rows]) if labelled else None,
        "undefended_clean_accuracy":
            _rate([r["undefended_clean_prediction"] == r["label"] for r in rows]) if labelled else None,
    }
