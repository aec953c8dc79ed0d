"""The bundled photo pool and random crops."""
from __future__ import annotations

import pytest
import torch

from advshield.data.photos import photo_pool, photo_pool_dataset, random_crops, resize_crop
from advshield.errors import DataError


def test_pool_native() -> None:
    pool = photo_pool()
    assert len(pool) >= 2
    for x in pool:
        assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len({tuple(x.shape) for x in pool}) > 1  # native sizes kept
    gray = photo_pool(channels=1)
    assert len(gray) == len(pool) and all(x.shape[0] == 1 for x in gray)


def test_pool_sized_and_dataset() -> None:
    pool = photo_pool(channels=1, size=(24, 40))
    assert all(x.shape == (1, 24, 40) for x in pool)
    ds = photo_pool_dataset(size=(16, 16))
    assert ds.images.shape == (len(pool), 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.name == "photos" and ds.classes == [] and (ds.labels == -1).all()


def test_resize_crop_centre() -> None:
    x = torch.zeros(1, 10, 20)
    x[:, :, 5:15] = 1.0
    y = resize_crop(x, (10, 10))
    assert y.shape == (1, 10, 10) and torch.equal(y, torch.ones(1, 10, 10))


def test_random_crops() -> None:
    pool = photo_pool(size=64)
    a = random_crops(pool, 16, 12, torch.Generator().manual_seed(3))
    b = random_crops(pool, 16, 12, torch.Generator().manual_seed(3))
    c = random_crops(pool, 16, 12, torch.Generator().manual_seed(4))
    assert a.shape == (12, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(DataError, match="smaller"):
        random_crops(pool, 65, 1, torch.Generator().manual_seed(0))
    t = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    crops = random_crops(t, (2, 3), 5, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 1, 2, 3)
    assert torch.equal(crops[:, :, 1:, :] - crops[:, :, :1, :], torch.full((5, 1, 1, 3), 8.0))  # contiguous rows
