"""Shared fixtures: a tiny zoo of random-weight models and a small generated Fashion-MNIST-format dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from advshield.data.idx import write_idx
from advshield.data.mnist import FASHION_MNIST, resolve_files
from advshield.errors import DataError
from advshield.models import LeNet, ResNet, VGGNet, save_checkpoint

TINY = {
    "tiny-lenet": (LeNet, "lenet", {"channels": [4, 8], "hidden": [16, 16]}),
    "tiny-vgg": (VGGNet, "vgg", {"widths": [4, 8], "convs_per_block": 1}),
    "tiny-resnet": (ResNet, "resnet", {"widths": [4, 8], "blocks": 1}),
}


def make_tiny_zoo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, (cls, arch, args)) in enumerate(TINY.items()):
        torch.manual_seed(i)
        save_checkpoint(cls(**args), root / f"{name}.safetensors",
                        {"name": name, "kind": "classifier", "dataset": "fashion-mnist", "architecture": arch,
                         "arch_args": args, "metrics": {"clean_accuracy": 0.1}})
    return root


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """ADVSHIELD_ZOO points at three random-weight Fashion-MNIST classifiers (tiny-lenet/vgg/resnet)."""
    root = make_tiny_zoo(tmp_path / "zoo")
    monkeypatch.setenv("ADVSHIELD_ZOO", str(root))
    return root


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28×28 uint8 images whose class (0-9) sets a bright horizontal band's row; noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 230
    return images, labels


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    """A directory with train (600) and test (200) IDX files in the Fashion-MNIST layout."""
    root = tmp_path_factory.mktemp("fake-fmnist")
    for split, n, seed in (("train", 600, 1), ("t10k", 200, 2)):
        x, y = synthetic_images(n, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", y)
    return root


def fmnist_available() -> bool:
    try:
        resolve_files(FASHION_MNIST, "test", download_ok=False)
        return True
    except DataError:
        return False


needs_fmnist = pytest.mark.skipif(not fmnist_available(), reason="Fashion-MNIST not installed (run `make data`)")


@pytest.fixture
def gray_tree(tmp_path, fake_fmnist) -> Path:
    """10 exported Fashion-MNIST-format test images in <index>_<class> folders (mode "L", 28×28)."""
    from advshield.cli.main import main

    out = tmp_path / "gray"
    assert main(["data", "export", "--data-root", str(fake_fmnist), "--n", "10", "--out", str(out)]) == 0
    return out


@pytest.fixture
def one_thread():
    """Tiny nets run faster on one torch thread, above all on a busy 2-core machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pngs(root: Path) -> dict[Path, tuple[str, np.ndarray]]:
    """Relative path → (PIL mode, pixel array) of every PNG under ``root``; asserts each really is a PNG."""
    from PIL import Image

    out = {}
    for p in sorted(root.rglob("*.png")):
        with Image.open(p) as img:
            assert img.format == "PNG"
            out[p.relative_to(root)] = (img.mode, np.asarray(img))
    return out
