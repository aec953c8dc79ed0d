"""An in-memory labelled image dataset: uint8 (or float) NCHW images, int64 labels, class names."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from .labels import ClassMapping


class TensorDataset(Dataset):
    """Items are ``(image float C×H×W in [0,1], label int)``. Images are stored compactly as uint8.

    ``class_mapping`` (a :class:`~advshield.data.labels.ClassMapping`, or None) records how the labels of a dataset
    read from class folders were derived (folder → class index, and the rule)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str] | None = None,
                 name: str = "dataset", class_mapping: ClassMapping | None = None) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be N×C×H×W with one label each")
        self.images = images
        self.labels = labels.long()
        self.classes = classes or [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        self.name = name
        self.class_mapping = class_mapping

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_float(self.images[i]), int(self.labels[i])

    def subset(self, n: int | None, offset: int = 0) -> TensorDataset:
        """The ``n`` items starting at ``offset`` (all when ``n`` is None)."""
        end = None if n is None else offset + n
        return TensorDataset(self.images[offset:end], self.labels[offset:end], self.classes, self.name,
                             self.class_mapping)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of every item."""
        return tuple(int(v) for v in self.images.shape[1:])

    def relabel(self, labels: torch.Tensor) -> TensorDataset:
        """The same images with other labels (``--labels model``)."""
        return TensorDataset(self.images, labels, self.classes, self.name)

    def batches(self, batch_size: int):
        """Yield ``(x float B×C×H×W in [0,1], y int64 B)`` in order, without a DataLoader."""
        for i in range(0, len(self), batch_size):
            yield to_float(self.images[i : i + batch_size]), self.labels[i : i + batch_size]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 → float32 in [0,1]; float passes through as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()
