"""Attack a whole image tree and write the adversarial copies: the library side of ``advshield attack`` and
``advshield ssp``.

Images are read per size group (C×H×W) in batches, attacked as float N×C×H×W in [0,1], rounded to 8 bits inside
the budget of the 8-bit input (:func:`~advshield.data.imagetree.quantize_in_budget`, so the written files
respect eps) and written as lossless PNGs, one file at a time, atomically."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.folder import ImageFolder
from ..data.imagetree import load_batch, quantize_in_budget, size_batches, write_batch
from ..utils import progress
from .base import Attack


def craft_tree(folder: ImageFolder, targets: Sequence[Path], atk: Attack, labels: Sequence[int] | None,
               batch_size: int, device: torch.device | str, seed: int, desc: str,
               todo: Sequence[int] | None = None) -> int:
    """Attack the images ``todo`` (default all) of ``folder`` and write image ``i`` to ``targets[i]``.

    ``labels``: per-image true labels (None: the model's own predictions); batch ``b`` is attacked with seed
    ``seed + b``. Returns the number of files written."""
    batches = size_batches(folder, batch_size, todo)
    written = 0
    for b, idx in enumerate(progress(batches, desc, total=len(batches))):
        x8 = load_batch(folder, idx)
        x = x8.float().div(255).to(device)
        y = None if labels is None else torch.tensor([labels[i] for i in idx], dtype=torch.long, device=device)
        atk.seed = seed + b
        x_adv = atk(x, y)
        write_batch(quantize_in_budget(x_adv, x8, atk.threat.eps, atk.threat.norm), idx, targets)
        written += len(idx)
    return written


def probe_attack(atk: Attack, x: torch.Tensor) -> None:
    """Run ``atk`` for one step on ``x`` (N×C×H×W in [0,1]) — every hook of the loop runs once — so an image the
    attack or model cannot take fails before anything is written. The attack's settings are restored."""
    steps = getattr(atk, "steps", None)
    if steps is not None:
        atk.steps = 1
    try:
        atk(x)
    finally:
        if steps is not None:
            atk.steps = steps
