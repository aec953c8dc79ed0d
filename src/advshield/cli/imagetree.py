"""Image-folder-tree plumbing shared by the commands that read a tree of images and write one back
(``ssp``, ``attack``, ``purify``) or read one to evaluate (``bypass``).

- Reading: :func:`load_folder` lists and decodes every image once (a corrupt file fails before anything is
  written); :func:`folder_labels` gives per-image labels from class folders; :func:`size_batches` groups images
  of one shape (C×H×W) into batches; :func:`load_batch` stacks one batch as uint8.
- Writing: :func:`check_dirs` refuses an out-dir equal to or inside the source tree; :func:`plan_outputs` maps
  every image to ``out/<relative path>.png`` and refuses clashes and existing files up front;
  :func:`write_batch` writes lossless 8-bit PNGs atomically (one file at a time);
  :func:`quantize_in_budget` rounds an adversarial batch to 8 bits inside the budget of the 8-bit input.
- Models: :func:`adapt_channels` lets a classifier take 1- or 3-channel images.

Images are float N×C×H×W in [0,1] (C = 1 gray or 3 RGB; alpha is dropped on reading) or uint8 N×C×H×W.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import AdvshieldError

_INDEXED_CLASS = re.compile(r"^(\d+)_")


# -- reading ------------------------------------------------------------------------------------------------
def folder_labels(classes: list[str], labels: list[int]) -> list[int]:
    """Per-image labels of an :class:`ImageFolder`. When every class folder is named ``<index>_<name>`` (what
    ``advshield data export`` writes) the index is the label, so a tree holding only some classes keeps the
    right labels; otherwise the label is the position of the class in sorted order (torchvision's rule)."""
    if classes and all(_INDEXED_CLASS.match(c) for c in classes):
        index = [int(_INDEXED_CLASS.match(c).group(1)) for c in classes]
        return [index[k] if k >= 0 else k for k in labels]
    return list(labels)


def load_folder(source: str | Path, verb: str = "attacked") -> Any:
    """The :class:`ImageFolder` at ``source``; decodes every image once so a corrupt file fails before any
    output is written. ``verb`` completes the note about loose files skipped beside class folders."""
    from ..data.folder import IMAGE_EXTS, ImageFolder, is_image

    folder = ImageFolder(source)
    for i in range(len(folder)):
        folder.load(i)
    if folder.classes:
        loose = [p for p in folder.root.iterdir() if p.is_file() and is_image(p)]
        if loose:
            print(f"advshield: note: {len(loose)} image(s) directly in {folder.root} are skipped (the tree has "
                  f"class sub-folders; {', '.join(IMAGE_EXTS)} files inside them are {verb})", file=sys.stderr)
    return folder


def size_batches(folder: Any, batch_size: int) -> list[list[int]]:
    """Image indices of ``folder`` in batches of at most ``batch_size`` images of one shape (C, H, W); groups in
    order of first appearance, indices ascending within a group."""
    from ..data.folder import group_by_size

    return [g[i:i + batch_size] for g in group_by_size(folder) for i in range(0, len(g), batch_size)]


def load_batch(folder: Any, idx: Sequence[int]) -> torch.Tensor:
    """Images ``idx`` of ``folder`` (all one shape) as uint8 N×C×H×W."""
    from ..data.folder import to_uint8

    return torch.stack([to_uint8(folder.load(i)) for i in idx])


def check_labels(labels: Sequence[int], num_classes: int, folder: Any) -> None:
    """Refuse a folder label that is not a class of a ``num_classes``-way model (one line naming the file)."""
    bad = next((i for i, v in enumerate(labels) if v >= num_classes), None)
    if bad is not None:
        raise AdvshieldError(f"label {labels[bad]} of {folder.rel(bad)} (from its class folder) is not "
                             f"a class of the model ({num_classes} classes)")


# -- writing ------------------------------------------------------------------------------------------------
def check_dirs(source: Path, out: Path, source_flag: str = "--source-dir", out_flag: str = "--out-dir") -> None:
    """Refuse an out-dir equal to or inside the source dir, or one that is a file (flags named in messages)."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise AdvshieldError(f"{out_flag} {out} is {'the same as' if dst == src else 'inside'} {source_flag} "
                             f"{source}; choose a directory outside the source tree")
    if out.exists() and not out.is_dir():
        raise AdvshieldError(f"{out_flag} {out} exists and is not a directory")


def plan_outputs(folder: Any, out: Path, out_flag: str = "--out-dir") -> list[Path]:
    """``out/<relative path>.png`` per image; refuses two inputs mapping to one file, or an existing file."""
    targets = [out / folder.rel(i).with_suffix(".png") for i in range(len(folder))]
    seen: dict[Path, int] = {}
    for i, t in enumerate(targets):
        if t in seen:
            raise AdvshieldError(f"{folder.rel(seen[t])} and {folder.rel(i)} would both be written to {t}")
        seen[t] = i
        if t.exists() or t.is_symlink():
            raise AdvshieldError(f"{t} already exists; not overwriting it (choose a new {out_flag} or remove it)")
    return targets


def write_batch(images: torch.Tensor, idx: Sequence[int], targets: Sequence[Path]) -> None:
    """Write ``images`` (N×C×H×W, uint8 or float in [0,1]; C = 1 → "L", 3 → "RGB") to ``targets[i]`` for
    ``i`` in ``idx``, each as an 8-bit PNG written atomically."""
    from ..data.folder import save_png

    for i, img in zip(idx, images):
        save_png(img, targets[i])


def quantize_in_budget(x_adv: torch.Tensor, x8: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Round ``x_adv`` (N×C×H×W in [0,1]) to uint8 and pull it back into the ``eps`` ball around the uint8 input
    ``x8``: L∞ clamps each value to ``x8 ± floor(eps·255)``; L2 scales the integer perturbation of an image that
    rounding pushed past ``eps`` and truncates it toward zero (so its norm can only shrink)."""
    from ..data.folder import to_uint8

    base = x8.to(torch.int32)
    d = to_uint8(x_adv.cpu()).to(torch.int32) - base
    if norm == "linf":
        e = math.floor(eps * 255 + 1e-6)
        d = d.clamp(-e, e)
    else:
        n = d.flatten(1).float().norm(dim=1).view(-1, 1, 1, 1) / 255
        over = n > eps
        if over.any():
            scaled = torch.trunc(d.double() * (eps / n.double().clamp_min(1e-12)))
            d = torch.where(over, scaled.to(torch.int32), d)
    return (base + d).clamp(0, 255).to(torch.uint8)


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
