"""Data sources. Every loader returns images as tensors in [0,1] (uint8 stored), NCHW, with int64 labels."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError
from .cifar import cifar10
from .mnist import fashion_mnist, load_mnist
from .tensors import TensorDataset, to_float

DATASETS: dict[str, Callable[..., TensorDataset]] = {"cifar10": cifar10, "fashion-mnist": fashion_mnist,
                                                     "mnist": load_mnist}


def _photos(split: str = "test", root: str | os.PathLike | None = None) -> TensorDataset:
    """The natural photos bundled with scikit-image and scikit-learn, 128×128 RGB crops, unlabelled."""
    from .photos import photo_pool_dataset

    return photo_pool_dataset()


DATASETS["photos"] = _photos


def register_dataset(name: str, loader: Callable[..., TensorDataset]) -> None:
    """Add a named dataset: ``loader(split, root) -> TensorDataset``."""
    DATASETS[name] = loader


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None,
                 **folder_kw: Any) -> TensorDataset:
    """A registered dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``), or an image folder path
    (``folder_kw``: :func:`~advshield.data.folder.image_folder`'s ``size``, ``class_map``, ``labels``, ``flags``)."""
    if name in DATASETS:
        return DATASETS[name](split, root)
    if Path(name).is_dir():
        from .folder import image_folder

        return image_folder(name, **folder_kw)
    raise DataError(f"unknown dataset {name!r}: not one of {', '.join(sorted(DATASETS))} and not a directory")


__all__ = ["DATASETS", "TensorDataset", "fashion_mnist", "load_dataset", "load_mnist", "cifar10", "register_dataset",
           "to_float"]
