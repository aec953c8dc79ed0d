"""Image folders: layouts, formats, Pillow modes, channel conversion, errors, save_png."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advshield.data import load_dataset
from advshield.data.folder import ImageFolder, group_by_size, image_folder, read_image, save_png
from advshield.errors import DataError

RNG = np.random.default_rng(0)


def _rgb(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gray(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def test_class_folders_and_formats(tmp_path: Path) -> None:
    a, b = _rgb(), _rgb()
    c = np.broadcast_to(np.array([200, 90, 30], np.uint8), (6, 5, 3)).copy()  # smooth, so JPEG is near-exact
    (tmp_path / "cat" / "deep").mkdir(parents=True)
    (tmp_path / "dog").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()
    Image.fromarray(a).save(tmp_path / "dog" / "1.PNG")
    Image.fromarray(b).save(tmp_path / "cat" / "deep" / "2.bmp")
    Image.fromarray(c).save(tmp_path / "cat" / "0.jpg", quality=95)
    Image.fromarray(a).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    f = ImageFolder(tmp_path)
    assert f.classes == ["cat", "dog", "empty"] and f.class_counts == [2, 1, 0]  # an empty class keeps its place
    assert [f.rel(i).as_posix() for i in range(len(f))] == ["cat/0.jpg", "cat/deep/2.bmp", "dog/1.PNG"]
    assert f.labels == [0, 0, 1] and len(f) == 3
    assert torch.equal(f.load(2), torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    assert torch.equal(f.load(1), torch.from_numpy(b).permute(2, 0, 1).float() / 255)
    jpg = f.load(0)
    assert jpg.shape == (3, 6, 5) and (jpg - torch.from_numpy(c).permute(2, 0, 1) / 255).abs().max() < 0.05
    ds = image_folder(tmp_path)
    assert ds.images.shape == (3, 3, 6, 5) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 1] and ds.classes == ["cat", "dog", "empty"] and ds.name == tmp_path.name
    assert load_dataset(str(tmp_path)).labels.tolist() == [0, 0, 1]


def test_flat_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.fromarray(_gray()).save(tmp_path / "b.png")
    Image.fromarray(_gray()).save(tmp_path / "a.png")
    f = ImageFolder(tmp_path)
    assert f.classes == [] and f.labels == [-1, -1] and [p.name for p in f.files] == ["a.png", "b.png"]
    ds = image_folder(tmp_path)
    assert ds.images.shape == (2, 1, 6, 5) and ds.labels.tolist() == [-1, -1] and ds.classes == []


def test_modes(tmp_path: Path) -> None:
    g = _gray()
    Image.fromarray(g).save(tmp_path / "l.png")
    assert torch.equal(read_image(tmp_path / "l.png"), torch.from_numpy(g)[None].float() / 255)

    rgba = np.dstack([_rgb(), np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1) / 255)

    Image.fromarray(np.dstack([g, g])).convert("LA").save(tmp_path / "la.png")
    la = Image.open(tmp_path / "la.png")
    assert la.mode == "LA"
    assert torch.equal(read_image(tmp_path / "la.png"), torch.from_numpy(g)[None].float() / 255)

    pal = Image.new("P", (5, 6))
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    idx = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    pal.putdata(idx.ravel().tolist())
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    want = torch.from_numpy(np.stack([idx, 255 - idx, idx // 2])).float() / 255
    for name in ("p.png", "pt.png"):
        assert Image.open(tmp_path / name).mode == "P"
        assert torch.equal(read_image(tmp_path / name), want)

    Image.fromarray(np.zeros((6, 5), bool)).save(tmp_path / "one.bmp")
    assert read_image(tmp_path / "one.bmp").shape == (1, 6, 5)


def test_sixteen_bit(tmp_path: Path) -> None:
    a = np.array([[0, 32768, 65535, 256]], np.uint16)
    Image.fromarray(a).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode in ("I;16", "I")
    x = read_image(tmp_path / "i16.png")
    assert x.shape == (1, 1, 4) and x.dtype == torch.float32
    assert x[0, 0, 0] == 0 and x[0, 0, 2] == 1.0 and abs(float(x[0, 0, 1]) - 0.5) < 1e-4
    assert read_image(tmp_path / "i16.png", channels=3).shape == (3, 1, 4)


def test_channels(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "c.png")
    y = read_image(tmp_path / "c.png", channels=1)
    ref = torch.from_numpy(np.array(Image.fromarray(rgb).convert("L"))).float() / 255
    assert y.shape == (1, 6, 5) and (y[0] - ref).abs().max() <= 1 / 255 + 1e-6
    Image.fromarray(_gray()).save(tmp_path / "g.png")
    z = read_image(tmp_path / "g.png", channels=3)
    assert z.shape == (3, 6, 5) and torch.equal(z[0], z[2])
    with pytest.raises(DataError, match="channels"):
        read_image(tmp_path / "g.png", channels=2)
    with pytest.raises(DataError, match="mixes grayscale and colour"):
        image_folder(tmp_path)
    assert image_folder(tmp_path, channels=3).images.shape == (2, 3, 6, 5)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        ImageFolder(tmp_path / "file.txt")
    with pytest.raises(DataError, match="no images"):
        ImageFolder(tmp_path)
    bad = tmp_path / "x.png"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="x.png") as e:
        read_image(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="x.png"):
        image_folder(tmp_path)
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "ok.png")
    raw = (tmp_path / "ok.png").read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])  # truncated PNG
    with pytest.raises(DataError, match="x.png"):
        read_image(bad)


def test_sizes_and_grouping(tmp_path: Path) -> None:
    Image.fromarray(_rgb(6, 5)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "b.png")
    Image.fromarray(_rgb(6, 5)).save(tmp_path / "c.png")
    Image.fromarray(_gray(6, 5)).save(tmp_path / "d.png")
    f = ImageFolder(tmp_path)
    assert group_by_size(f) == [[0, 2], [1], [3]]
    assert group_by_size(ImageFolder(tmp_path, channels=3)) == [[0, 2, 3], [1]]
    with pytest.raises(DataError, match="size="):
        image_folder(tmp_path, channels=3)
    ds = image_folder(tmp_path, channels=3, size=(4, 4))
    assert ds.images.shape == (4, 3, 4, 4)
    const = np.full((8, 8, 3), 200, np.uint8)
    Image.fromarray(const).save(tmp_path / "b.png")
    assert (image_folder(tmp_path, channels=3, size=(4, 4)).images[1] == 200).all()


def test_save_png_round_trip(tmp_path: Path) -> None:
    for c in (1, 3):
        u = torch.randint(0, 256, (c, 7, 9), dtype=torch.uint8)
        save_png(u.float() / 255, tmp_path / f"out{c}" / "x.png")
        img = Image.open(tmp_path / f"out{c}" / "x.png")
        assert img.mode == ("L" if c == 1 else "RGB")
        assert torch.equal(read_image(tmp_path / f"out{c}" / "x.png"), u.float() / 255)
    assert [p.name for p in (tmp_path / "out1").iterdir()] == ["x.png"]  # no temp file left behind
    with pytest.raises(ValueError):
        save_png(torch.zeros(2, 3, 3), tmp_path / "bad.png")
