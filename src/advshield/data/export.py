"""Write a :class:`TensorDataset` as a tree of PNGs that :class:`~advshield.data.folder.ImageFolder` reads back."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DataError
from .folder import save_png
from .tensors import TensorDataset

_UNSAFE = re.compile(r"[^\w .-]")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def sanitize_name(name: str) -> str:
    """A class name as a safe directory name: anything but letters, digits, ``_ . -`` and space → ``_``
    (so "T-shirt/top" → "T-shirt_top"); no leading/trailing dots or spaces; never empty or a reserved name."""
    s = _UNSAFE.sub("_", name).strip(" .")
    if not s:
        s = "_"
    if s.lower() in _RESERVED:
        s += "_"
    return s


def class_dirs(classes: list[str]) -> list[str]:
    """One directory name per class: ``<index>_<sanitised name>`` with the index zero-padded, so that sorting
    the names (as :class:`~advshield.data.folder.ImageFolder` does) gives back the dataset's label order."""
    width = len(str(max(len(classes) - 1, 0)))
    return [f"{k:0{width}d}_{sanitize_name(name)}" for k, name in enumerate(classes)]


def export_png_tree(dataset: TensorDataset, out_dir: str | os.PathLike, overwrite: bool = False) -> int:
    """Write each item as ``out_dir/<class dir>/<index:05d>.png`` (label < 0 → directly in ``out_dir``).

    Class directories come from :func:`class_dirs`. Existing files are replaced only when ``overwrite``;
    otherwise the first one found is reported (DataError) before anything is written. Returns the count.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if dataset.images.ndim != 4 or dataset.images.shape[1] not in (1, 3):
        raise DataError(f"dataset {dataset.name!r} has shape {tuple(dataset.images.shape)}; PNG export needs "
                        "N×1×H×W or N×3×H×W")
    dirs = class_dirs(list(dataset.classes))
    targets = []
    for i, label in enumerate(dataset.labels.tolist()):
        if label < 0:
            sub = out
        else:
            sub = out / (dirs[label] if label < len(dirs) else sanitize_name(str(label)))
        targets.append(sub / f"{i:05d}.png")
    for t in targets:
        if t.is_dir() or (t.exists() and not overwrite):
            raise DataError(f"{t} already exists" + ("" if t.is_dir() else "; pass overwrite=True to replace it"))
    for i, t in enumerate(targets):
        save_png(dataset[i][0], t)
    return len(targets)
