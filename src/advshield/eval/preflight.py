"""Checks run on a user's image tree before anything is written: does the model take these images (channels,
size, and a real forward/attack on one image of every size), and do the labels look right (clean accuracy)?

Images are float N×C×H×W in [0,1]; an :class:`~advshield.data.folder.ImageFolder` groups its images by
(C, H, W). Every failure is a one-line :class:`~advshield.errors.AdvshieldError` naming the file and ``what``
(the flag and spec, e.g. ``"--model zoo:fmnist-vgg"``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..data.folder import ImageFolder, group_by_size
from ..data.imagetree import load_batch
from ..data.labels import label_warning
from ..data.tensors import TensorDataset
from ..errors import AdvshieldError
from ..models.domain import check_domain, input_domain


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_tree_domain(model: nn.Module, folder: ImageFolder, what: str, adapt_channels: bool = False,
                      check_size: bool = True) -> None:
    """Refuse a tree holding an image ``model`` was not made for: other channels (unless ``adapt_channels`` and
    the pair is 1↔3) or, with ``check_size``, another size than the model's fixed one (see
    :mod:`advshield.models.domain`). Reads file headers only."""
    domain = input_domain(model)
    if not check_size:
        domain = type(domain)(domain.channels, None)
    for group in group_by_size(folder):
        try:
            check_domain(domain, folder.shape(group[0]), what, adapt_channels)
        except AdvshieldError as e:
            raise AdvshieldError(f"{e} ({folder.rel(group[0])})") from None


def probe_tree(folder: ImageFolder, fn: Callable[[torch.Tensor], object], what: str,
               device: torch.device | str = "cpu") -> None:
    """Run ``fn`` (e.g. the attack, or the defended model) on the first image of every size group, so an image
    the model cannot take (too small for its pooling, say) fails in one line before any output is written."""
    for group in group_by_size(folder):
        x = load_batch(folder, group[:1]).float().div(255).to(device)
        try:
            fn(x)
        except AdvshieldError as e:
            raise AdvshieldError(f"{what}: {folder.rel(group[0])}: {e}") from None
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            c, h, w = x.shape[1:]
            raise AdvshieldError(f"{what} cannot take {folder.rel(group[0])} ({c}×{h}×{w}): {_one_line(e)}") from None


@torch.no_grad()
def clean_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device | str = "cpu") -> tuple[int, int, int]:
    """(correct, total, number of classes) of ``model`` on ``(x, y)`` batches (x in [0,1], y int64)."""
    correct = total = classes = 0
    was = model.training
    model.eval()
    try:
        for x, y in batches:
            logits = model(x.to(device))
            classes = int(logits.shape[1])
            correct += int((logits.argmax(1).cpu() == y.cpu()).sum())
            total += len(y)
    finally:
        model.train(was)
    return correct, total, classes


def folder_batches(folder: ImageFolder, labels: Sequence[int], batch_size: int
                   ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(x float in [0,1], y)`` batches of one image size each, over the whole tree."""
    for group in group_by_size(folder):
        for i in range(0, len(group), batch_size):
            idx = group[i:i + batch_size]
            yield load_batch(folder, idx).float().div(255), torch.tensor([labels[k] for k in idx])


def accuracy_lines(what: str, correct: int, total: int, num_classes: int) -> list[str]:
    """What commands print before they start: the clean accuracy of ``what`` on the labels, and the one-line
    warning of :func:`advshield.data.labels.label_warning` when it is below twice chance."""
    acc = correct / total if total else 0.0
    lines = [f"clean accuracy of {what} on these labels: {100 * acc:.1f} % ({correct}/{total})"]
    warning = label_warning(acc, num_classes) if total and num_classes else None
    if warning:
        lines.append(f"advshield: warning: {warning}")
    return lines


@torch.no_grad()
def label_by_model(model: nn.Module, data: TensorDataset, batch_size: int = 250,
                   device: torch.device | str = "cpu") -> TensorDataset:
    """``data`` with its labels replaced by ``model``'s clean predictions (``--labels model``)."""
    preds = [model(x.to(device)).argmax(1).cpu() for x, _ in data.batches(batch_size)]
    labels = torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)
    return data.relabel(labels)
