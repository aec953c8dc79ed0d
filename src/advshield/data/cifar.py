"""CIFAR-10 from the official python-pickle archive ``cifar-10-python.tar.gz``.

The archive holds ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``: pickled dicts with
bytes keys. Each batch has ``b"data"`` (uint8 N×3072, one row per image: the 1024 red bytes, then green, then
blue, each plane in row-major 32×32 order) and ``b"labels"`` (N ints in 0..9); ``batches.meta`` has
``b"label_names"``.

Pickles are parsed with a restricted unpickler that can only build numpy arrays and dtypes (and Python-3
protocol-2 bytes), so a tampered archive cannot run code. Members are read straight from the tar; only the
expected member names are looked at.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError
from .mnist import cache_dir, download
from .tensors import TensorDataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
META = "batches.meta"
PIXELS = 3 * 32 * 32
MAX_MEMBER_BYTES = 256 << 20  # an official batch is ~31 MB; refuse anything absurdly larger


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise DataError("pickle asks for a codec other than latin1")
    return text.encode("latin1")


def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the few globals a CIFAR batch needs; anything else is a DataError."""

    def find_class(self, module: str, name: str) -> Any:
        maker = _ALLOWED.get((module, name))
        if maker is None:
            raise DataError(f"pickle refers to {module}.{name}, which a CIFAR file never needs (refused)")
        return maker()


def safe_unpickle(raw: bytes, source: str) -> Any:
    """Unpickle ``raw`` (``encoding="bytes"``) with :class:`SafeUnpickler`; any failure is a DataError."""
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    except Exception as e:  # a corrupt pickle can fail in many ways
        raise DataError(f"{source} is not a valid pickle: {_one_line(e)}") from None


def _get(d: dict, key: str) -> Any:
    """``d[b"key"]``, or ``d["key"]`` for re-pickled copies with str keys; None when absent."""
    return d.get(key.encode(), d.get(key))


def parse_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Pickled batch → (uint8 N×3×32×32 images, int64 N labels in 0..9)."""
    d = safe_unpickle(raw, source)
    if not isinstance(d, dict):
        raise DataError(f"{source} is not a CIFAR batch (pickle holds {type(d).__name__}, not a dict)")
    data, labels = _get(d, "data"), _get(d, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' must be a uint8 N×{PIXELS} array, got {desc}")
    try:
        lab = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: 'labels' is missing or not a list of integers") from None
    if lab.shape != (len(data),):
        raise DataError(f"{source}: {len(data)} images but 'labels' has shape {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() >= len(CLASSES)):
        raise DataError(f"{source}: labels must lie in 0..{len(CLASSES) - 1}, found {lab.min()}..{lab.max()}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), lab


def parse_meta(raw: bytes | None, source: str) -> list[str]:
    """Class names from ``batches.meta`` (``label_names``); the standard 10 when absent or unusable."""
    if raw is None:
        return list(CLASSES)
    d = safe_unpickle(raw, source)
    names = _get(d, "label_names") if isinstance(d, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != len(CLASSES):
        return list(CLASSES)
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", "replace")
        if not isinstance(n, str) or not n:
            return list(CLASSES)
        out.append(n)
    return out


def _read_tar(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the regular-file members ``FOLDER/<name>`` of the archive in one pass; others are skipped."""
    wanted = {f"{FOLDER}/{n}": n for n in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                key = member.name[2:] if member.name.startswith("./") else member.name
                if key not in wanted or not member.isfile():
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{path}: member {member.name} is implausibly large ({member.size} bytes)")
                f = tar.extractfile(member)
                if f is None:  # pragma: no cover - isfile() members always have data
                    continue
                found[wanted[key]] = f.read()
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read CIFAR-10 archive {path}: {_one_line(e)}") from None
    return found


def _read_dir(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    found = {}
    for n in names:
        p = folder / n
        if p.is_file():
            try:
                found[n] = p.read_bytes()
            except OSError as e:
                raise DataError(f"cannot read {p}: {_one_line(e)}") from None
    return found


def _source_in(d: Path) -> Path | None:
    """The archive or batch folder inside directory ``d`` (or ``d`` itself as a batch folder), if any."""
    if (d / ARCHIVE).is_file():
        return d / ARCHIVE
    if (d / FOLDER).is_dir():
        return d / FOLDER
    if (d / "test_batch").is_file() or (d / "data_batch_1").is_file():
        return d
    return None


def resolve_source(root: str | os.PathLike | None = None, download_ok: bool = True) -> Path:
    """The tar.gz or extracted batch folder to read: ``root`` if given, else the cache (downloading there)."""
    if root is not None:
        root = Path(root)
        if root.is_file():
            return root
        if not root.is_dir():
            raise DataError(f"CIFAR-10 path {root} does not exist")
        found = _source_in(root)
        if found is None:
            raise DataError(f"{root} holds neither {ARCHIVE} nor a {FOLDER} folder")
        return found
    cache = cache_dir() / "cifar10"
    found = _source_in(cache) if cache.is_dir() else None
    if found is not None:
        return found
    if not download_ok:
        raise DataError(f"CIFAR-10 not found in {cache} and downloading is disabled")
    return download(URL, cache / ARCHIVE, SHA256)


def cifar10(split: str = "test", root: str | os.PathLike | None = None, download_ok: bool = True) -> TensorDataset:
    """CIFAR-10 split (50k train / 10k test) as uint8 N×3×32×32 images with int64 labels in 0..9.

    ``root`` may be the ``.tar.gz``, a directory holding it, or a directory holding (or being) the
    extracted ``cifar-10-batches-py``; without it the cache ``cache_dir()/cifar10`` is used, downloading
    the official archive (SHA-256 checked) when ``download_ok``.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (use train or test)")
    src = resolve_source(root, download_ok)
    names = SPLITS[split] + (META,)
    blobs = _read_dir(src, names) if src.is_dir() else _read_tar(src, names)
    missing = [n for n in SPLITS[split] if n not in blobs]
    if missing:
        raise DataError(f"{src} has no {FOLDER}/{missing[0]}")
    parts = [parse_batch(blobs[n], f"{src}:{n}") for n in SPLITS[split]]
    classes = parse_meta(blobs.get(META), f"{src}:{META}")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels), classes=classes,
                         name=f"cifar10-{split}")
