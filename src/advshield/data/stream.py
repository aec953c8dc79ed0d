"""An image folder read from disk batch by batch (``advshield eval --workers N``): memory does not grow with the
folder. Same interface as :class:`~advshield.data.tensors.TensorDataset` (``labels``, ``classes``, ``name``,
``subset``, ``batches``), with :attr:`sample_shape` instead of an ``images`` tensor.

In the evaluation engine under torchrun a rank reads only the batches it owns (global batch ``b`` on rank
``b % N``, see :mod:`advshield.distributed`) and the first one (every rank probes the defenses on it); the others
are yielded as zero-filled placeholders of the right size, which the engine skips."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from .. import distributed
from .folder import ImageFolder, resize, to_uint8
from .tensors import TensorDataset, to_float

if TYPE_CHECKING:
    from .labels import ClassMapping


class FolderStream(TensorDataset):
    """Images ``indices`` of ``folder`` (uint8 C×H×W items, each resized to ``size`` when given), labelled
    ``labels``; ``batches`` reads them with ``workers`` DataLoader processes (0: in this process)."""

    def __init__(self, folder: ImageFolder, labels: torch.Tensor, shape: tuple[int, int, int],
                 resize_to: tuple[int, int] | None, classes: list[str] | None = None, name: str = "images",
                 class_mapping: ClassMapping | None = None, indices: list[int] | None = None,
                 workers: int = 0) -> None:
        self.folder, self.shape, self.resize_to, self.workers = folder, tuple(shape), resize_to, int(workers)
        self.indices = list(range(len(folder))) if indices is None else list(indices)
        if len(labels) != len(self.indices):
            raise ValueError("one label per image")
        self.labels = labels.long()
        self.classes = classes or []
        self.name = name
        self.class_mapping = class_mapping

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item."""
        return self.shape  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.indices)

    def item(self, i: int) -> torch.Tensor:
        """Image ``i`` of this view as uint8 C×H×W."""
        x = self.folder.load(self.indices[i])
        return to_uint8(resize(x, self.resize_to) if self.resize_to else x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_float(self.item(i)), int(self.labels[i])

    def subset(self, n: int | None, offset: int = 0) -> FolderStream:
        end = None if n is None else offset + n
        return self._view(self.indices[offset:end], self.labels[offset:end])

    def relabel(self, labels: torch.Tensor) -> FolderStream:
        """The same images with other labels (``--labels model``)."""
        return self._view(self.indices, labels)

    def _view(self, indices: list[int], labels: torch.Tensor) -> FolderStream:
        return FolderStream(self.folder, labels, self.shape, self.resize_to, self.classes, self.name,
                            self.class_mapping, indices, self.workers)

    def batches(self, batch_size: int, sharded: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x float B×C×H×W in [0,1], y int64 B)`` in order. ``sharded`` (the evaluation engine under torchrun):
        batches another rank owns are zero placeholders of the right size, never read."""
        n = len(self)
        starts = list(range(0, n, batch_size))
        read = [b for b in range(len(starts)) if not sharded or b == 0 or distributed.owns(b)]
        plan = [list(range(starts[b], min(n, starts[b] + batch_size))) for b in read]
        loader = iter(DataLoader(_Items(self), batch_sampler=plan, num_workers=self.workers,
                                 collate_fn=_stack))
        for b, s in enumerate(starts):
            y = self.labels[s : s + batch_size]
            if b in read:
                yield to_float(next(loader)), y
            else:
                yield torch.zeros(1, *self.shape).expand(len(y), *self.shape), y


class _Items:
    """Map-style view for the DataLoader: index → uint8 C×H×W image."""

    def __init__(self, stream: FolderStream) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.stream.item(i)


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)
