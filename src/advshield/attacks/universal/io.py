"""Universal perturbations on disk: ``.npy`` files (float32 C×H×W, no pickles) and PNG visualisations."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...errors import DataError
from ...utils import atomic_path


def _check(delta: np.ndarray, source: str) -> None:
    if delta.ndim != 3 or min(delta.shape) < 1:
        raise DataError(f"{source}: a perturbation must be C×H×W, got shape {tuple(delta.shape)}")
    if delta.dtype.kind != "f":
        raise DataError(f"{source}: a perturbation must hold floats, got dtype {delta.dtype}")
    if not np.isfinite(delta).all():
        raise DataError(f"{source}: the perturbation contains NaN or inf")


def save_perturbation(path: str | os.PathLike, delta: torch.Tensor | np.ndarray) -> Path:
    """Write δ (C×H×W, [0,1] units) as a float32 ``.npy`` file, atomically (no pickles). Returns the path."""
    a = delta.detach().cpu().numpy() if isinstance(delta, torch.Tensor) else np.asarray(delta)
    _check(a, "save_perturbation")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
    return path


def load_perturbation(path: str | os.PathLike, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Read a ``.npy`` perturbation as float32 C×H×W (float16/64 files are converted). Raises
    :class:`advshield.errors.DataError` for a missing or unreadable file, pickled objects, a shape other than
    C×H×W (or ``shape`` when given), a non-float dtype or NaN/inf values."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"perturbation file {path} does not exist")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"cannot read perturbation {path} (expected a .npy array): {msg}") from None
    if not isinstance(a, np.ndarray):  # an .npz archive
        raise DataError(f"{path} is not a single .npy array")
    _check(a, str(path))
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise DataError(f"{path}: perturbation has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return torch.from_numpy(a.astype(np.float32, copy=True))


def perturbation_png(delta: torch.Tensor, path: str | os.PathLike, eps: float | None = None) -> Path:
    """Save δ (C×H×W, C = 1 or 3) as an 8-bit PNG with [-eps, eps] mapped linearly to [0, 255] (0 → mid-gray).
    ``eps`` defaults to max|δ| (use that for L2 perturbations, whose values are far below the radius)."""
    from ...data.folder import save_png

    delta = delta.detach().cpu().float()
    scale = float(eps) if eps else float(delta.abs().max())
    scale = scale if scale > 0 else 1.0
    save_png(((delta / scale + 1) / 2).clamp(0, 1), path)
    return Path(path)
