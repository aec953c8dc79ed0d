"""CIFAR-10 loader on a tiny archive in the official format, including a malicious pickle."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from advshield.data import DATASETS
from advshield.data.cifar import CLASSES, FOLDER, cifar10
from advshield.errors import DataError

N = 4  # images per batch


def _batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch %d" % seed, b"labels": [int(v) for v in rng.integers(0, 10, N)],
            b"data": rng.integers(0, 256, (N, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(N)]}


def _members() -> dict[str, bytes]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out = {n: pickle.dumps(_batch(k), protocol=2) for k, n in enumerate(names)}
    out["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072},
                                       protocol=2)
    return out


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    d = tmp_path / "dl"
    d.mkdir()
    return _write_tar(d / "cifar-10-python.tar.gz", _members())


def test_registered() -> None:
    assert DATASETS["cifar10"] is cifar10


def test_load_from_tar_and_its_dir(archive: Path) -> None:
    for root in (archive, archive.parent):
        ds = cifar10("test", root=root, download_ok=False)
        ref = _batch(5)
        assert ds.images.shape == (N, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert ds.labels.tolist() == ref[b"labels"]
        assert ds.classes == list(CLASSES) and ds.name == "cifar10-test"
        # CHW layout: first 1024 bytes = red plane, row-major
        assert np.array_equal(ds.images[0, 0].numpy(), ref[b"data"][0, :1024].reshape(32, 32))
        assert np.array_equal(ds.images[2, 2].numpy(), ref[b"data"][2, 2048:].reshape(32, 32))
        x, y = ds[1]
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y == ref[b"labels"][1]
    train = cifar10("train", root=archive, download_ok=False)
    assert len(train) == 5 * N
    assert train.labels[N:2 * N].tolist() == _batch(1)[b"labels"]


def test_load_extracted(tmp_path: Path) -> None:
    folder = tmp_path / "x" / FOLDER
    folder.mkdir(parents=True)
    for name, raw in _members().items():
        (folder / name).write_bytes(raw)
    a = cifar10("test", root=tmp_path / "x", download_ok=False)
    b = cifar10("test", root=folder, download_ok=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_errors(tmp_path: Path, archive: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        cifar10("test", root=tmp_path / "nope", download_ok=False)
    with pytest.raises(DataError, match="unknown split"):
        cifar10("val", root=archive, download_ok=False)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(DataError, match="cannot read"):
        cifar10("test", root=bad, download_ok=False)
    members = _members()
    members["test_batch"] = pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, protocol=2)
    (tmp_path / "s").mkdir()
    with pytest.raises(DataError, match="N×3072"):
        cifar10("test", root=_write_tar(tmp_path / "s" / "c.tar.gz", members), download_ok=False)
    members["test_batch"] = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2)
    with pytest.raises(DataError, match="labels"):
        cifar10("test", root=_write_tar(tmp_path / "s" / "c.tar.gz", members), download_ok=False)
    del members["test_batch"]
    with pytest.raises(DataError, match="test_batch"):
        cifar10("test", root=_write_tar(tmp_path / "s" / "c.tar.gz", members), download_ok=False)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    members = _members()
    members["test_batch"] = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    path = _write_tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(DataError, match="refused"):
        cifar10("test", root=path, download_ok=False)
    assert not marker.exists()
    members = _members()
    members["batches.meta"] = pickle.dumps(_Evil(marker), protocol=2)
    with pytest.raises(DataError, match="refused"):
        cifar10("test", root=_write_tar(tmp_path / "evil2.tar.gz", members), download_ok=False)
    assert not marker.exists()


def test_cache_and_no_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: Path) -> None:
    monkeypatch.setenv("ADVSHIELD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="downloading is disabled"):
        cifar10("test", download_ok=False)
    (tmp_path / "cache" / "cifar10").mkdir(parents=True)
    archive.rename(tmp_path / "cache" / "cifar10" / archive.name)
    assert len(cifar10("test", download_ok=False)) == N


def test_numpy1_global_names(tmp_path: Path) -> None:
    """The official archive names ``numpy.core.multiarray._reconstruct`` (numpy 1); that must load too."""
    members = _members()
    raw = members["test_batch"]
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    members["test_batch"] = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    ds = cifar10("test", root=_write_tar(tmp_path / "c.tar.gz", members), download_ok=False)
    assert np.array_equal(ds.images.reshape(N, -1).numpy(), _batch(5)[b"data"])
