"""Compatibility shim: the image-tree plumbing now lives in :mod:`advshield.data.imagetree` and the labels in
:mod:`advshield.data.labels`; this module re-exports them under the old names until the commands import them from
there. :func:`input_channels` and :func:`adapt_channels` (models) stay here for now.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.imagetree import (  # noqa: F401
    OutputPlan,
    check_dirs,
    check_image_sizes,
    load_batch,
    load_folder,
    quantize_in_budget,
    size_batches,
    write_batch,
)
from ..data.imagetree import plan_outputs as _plan_outputs
from ..data.labels import class_indices
from ..errors import AdvshieldError


# -- labels (old names) -------------------------------------------------------------------------------------
def folder_labels(classes: list[str], labels: list[int]) -> list[int]:
    """Per-image class indices of an :class:`~advshield.data.folder.ImageFolder` (``classes``, raw ``labels``):
    :func:`advshield.data.labels.class_indices` without a class map; -1 stays -1."""
    if not classes:
        return list(labels)
    mapping = class_indices(classes)
    index = [mapping.index[c] for c in classes]
    return [index[k] if k >= 0 else k for k in labels]


def check_labels(labels: Sequence[int], num_classes: int, folder: Any) -> None:
    """Refuse a folder label that is not a class of a ``num_classes``-way model (one line naming the file)."""
    bad = next((i for i, v in enumerate(labels) if v >= num_classes), None)
    if bad is not None:
        raise AdvshieldError(f"label {labels[bad]} of {folder.rel(bad)} (from its class folder) is not "
                             f"a class of the model ({num_classes} classes)")


def plan_outputs(folder: Any, out: Path, out_flag: str = "--out-dir") -> list[Path]:
    """The old signature: the targets of :func:`advshield.data.imagetree.plan_outputs` without resume."""
    return _plan_outputs(folder, out, out_flag=out_flag).targets


# -- models -------------------------------------------------------------------------------------------------
def input_channels(model: nn.Module) -> int | None:
    """Channels the model's first convolution expects (None when it has none)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def adapt_channels(model: nn.Module) -> None:
    """Let ``model`` take 1- or 3-channel images: a forward pre-hook maps gray → RGB (repeat) or RGB → gray (ITU-R
    601 luma) when the batch has the other channel count. Differentiable, so perturbations stay in the file's
    own channels. Every leaf member of an :class:`Ensemble` gets its own hook."""
    from ..attacks import Ensemble

    if isinstance(model, Ensemble):
        for m in model.members:
            adapt_channels(m)
        return
    want = input_channels(model)
    if want not in (1, 3) or isinstance(model, torch.jit.ScriptModule):
        return
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if x.dim() != 4 or x.shape[1] == want or x.shape[1] not in (1, 3):
            return None
        x = x.expand(-1, 3, -1, -1) if want == 3 else (x * luma.to(x)).sum(1, keepdim=True)
        return (x, *args[1:])

    model.register_forward_pre_hook(hook)
