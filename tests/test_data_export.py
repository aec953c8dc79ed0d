"""Exporting a TensorDataset as a PNG tree and reading it back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advshield.data.export import class_dirs, export_png_tree, sanitize_name
from advshield.data.folder import ImageFolder, image_folder
from advshield.data.tensors import TensorDataset
from advshield.errors import DataError


def _dataset(c: int = 3, labels: list[int] | None = None, classes: list[str] | None = None) -> TensorDataset:
    labels = [2, 0, 1, 2, 0] if labels is None else labels
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(labels), c, 5, 4), generator=g, dtype=torch.uint8)
    return TensorDataset(images, torch.tensor(labels), classes, name="tiny")


def test_sanitize() -> None:
    assert sanitize_name("T-shirt/top") == "T-shirt_top"
    assert sanitize_name("Ankle boot") == "Ankle boot"
    assert sanitize_name("..") == "_" and sanitize_name("con") == "con_"
    assert class_dirs(["a/b", "a_b", "A_B"]) == ["0_a_b", "1_a_b", "2_A_B"]
    assert class_dirs([str(i) for i in range(12)])[:2] == ["00_0", "01_1"]


def test_round_trip(tmp_path: Path) -> None:
    classes = ["T-shirt/top", "Trouser", "Ankle boot"]
    ds = _dataset(classes=classes)
    assert export_png_tree(ds, tmp_path / "out") == 5
    assert (tmp_path / "out" / "0_T-shirt_top" / "00001.png").is_file()
    folder = ImageFolder(tmp_path / "out")
    back = image_folder(tmp_path / "out")
    dirs = class_dirs(classes)
    for j, f in enumerate(folder.files):
        i = int(f.stem)
        assert folder.classes[folder.labels[j]] == dirs[int(ds.labels[i])]
        assert folder.labels[j] == int(ds.labels[i])  # sorted directory names keep the label order
        assert torch.equal(back.images[j], ds.images[i])
    gray = _dataset(c=1, labels=[1, 0, 1], classes=["0", "1"])
    export_png_tree(gray, tmp_path / "gray")
    back = image_folder(tmp_path / "gray")
    assert back.labels.tolist() == [0, 1, 1] and torch.equal(back.images, gray.images[[1, 0, 2]])


def test_unlabelled_and_overwrite(tmp_path: Path) -> None:
    ds = _dataset(labels=[-1, -1, -1])
    assert export_png_tree(ds, tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    (tmp_path / "00002.png").unlink()
    before = (tmp_path / "00000.png").read_bytes()
    other = _dataset(labels=[-1, -1, -1])
    other.images = 255 - other.images
    with pytest.raises(DataError, match="00000.png already exists"):
        export_png_tree(other, tmp_path)
    assert (tmp_path / "00000.png").read_bytes() == before and not (tmp_path / "00002.png").exists()
    export_png_tree(other, tmp_path, overwrite=True)
    assert torch.equal(image_folder(tmp_path).images, other.images)
