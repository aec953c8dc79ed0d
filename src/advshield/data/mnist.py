"""MNIST and Fashion-MNIST: locate the IDX files (explicit dir → system dir → verified download)."""
from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..utils import atomic_path, sha256_file
from .idx import read_idx
from .tensors import TensorDataset

SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class IdxSource:
    name: str
    urls: tuple[str, ...]
    sha256: dict[str, str]  # file name (.gz) -> SHA-256 of the official download
    system_dirs: tuple[str, ...]
    classes: tuple[str, ...]


FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
          "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    sha256={
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
)

MNIST = IdxSource(
    name="mnist",
    urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    sha256={
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    system_dirs=("/usr/share/datasets/mnist",),
    classes=tuple(str(i) for i in range(10)),
)


def cache_dir() -> Path:
    """``$ADVSHIELD_CACHE``, else ``$XDG_CACHE_HOME/advshield``, else ``~/.cache/advshield``."""
    if os.environ.get("ADVSHIELD_CACHE"):
        return Path(os.environ["ADVSHIELD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "advshield"


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def download(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` atomically; keep it only if its SHA-256 matches."""
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except OSError as e:
            raise DataError(f"download of {url} failed: {e}") from None
        got = sha256_file(tmp)
        if got != sha256:
            raise DataError(f"download of {url} has SHA-256 {got}, expected {sha256}")
    return dest


def resolve_files(source: IdxSource, split: str, root: str | os.PathLike | None = None,
                  download_ok: bool = True) -> tuple[Path, Path]:
    """Return (images, labels) paths for ``split``: ``root`` if given, else the system dirs, else the cache
    (downloading there when allowed)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (use train or test)")
    stems = SPLITS[split]
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{source.name} directory {root} does not exist")
        found = [_find(root, s) for s in stems]
        if None in found:
            raise DataError(f"{root} has no {stems[found.index(None)]}[.gz] file")
        return found[0], found[1]  # type: ignore[return-value]
    for d in (*source.system_dirs, str(cache_dir() / source.name)):
        found = [_find(Path(d), s) for s in stems]
        if None not in found:
            return found[0], found[1]  # type: ignore[return-value]
    if not download_ok:
        raise DataError(f"{source.name} not found in {', '.join(source.system_dirs)} or the cache")
    dest_dir = cache_dir() / source.name
    paths = []
    for stem in stems:
        name = stem + ".gz"
        errors = []
        for base in source.urls:
            try:
                paths.append(download(base + name, dest_dir / name, source.sha256[name]))
                break
            except DataError as e:
                errors.append(str(e))
        else:
            raise DataError(f"{source.name} not found locally and could not be downloaded: {errors[-1]}")
    return paths[0], paths[1]


def load_idx_dataset(source: IdxSource, split: str = "test", root: str | os.PathLike | None = None,
                     download_ok: bool = True) -> TensorDataset:
    """Load a split as a :class:`TensorDataset` of uint8 N×1×28×28 images and int64 labels."""
    img_path, lbl_path = resolve_files(source, split, root, download_ok)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{img_path} and {lbl_path} do not form an image/label pair")
    if labels.size and int(labels.max()) >= len(source.classes):
        raise DataError(f"{lbl_path} has label {int(labels.max())}, more than {len(source.classes)} classes")
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(images[:, None])),
                         torch.from_numpy(labels.astype(np.int64)), classes=list(source.classes),
                         name=f"{source.name}-{split}")


def fashion_mnist(split: str = "test", root: str | os.PathLike | None = None,
                  download_ok: bool = True) -> TensorDataset:
    """Fashion-MNIST split (60k train / 10k test), uint8 N×1×28×28."""
    return load_idx_dataset(FASHION_MNIST, split, root, download_ok)


def load_mnist(split: str = "test", root: str | os.PathLike | None = None, download_ok: bool = True) -> TensorDataset:
    """MNIST split (60k train / 10k test), uint8 N×1×28×28."""
    return load_idx_dataset(MNIST, split, root, download_ok)
