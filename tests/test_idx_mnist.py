import hashlib

import numpy as np
import pytest
from conftest import synthetic_images

import advshield.data.mnist as mn
from advshield.data import load_dataset
from advshield.data.idx import parse_idx, read_idx, write_idx
from advshield.errors import DataError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    arr = (np.arange(2 * 3 * 4) % 100).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / f"a{suffix}", arr)
    out = read_idx(tmp_path / f"a{suffix}")
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_idx_header_layout_is_big_endian():
    raw = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    np.testing.assert_array_equal(parse_idx(raw), np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize("raw,msg", [(b"\x01\x00\x08\x01" + bytes(4), "magic"), (b"\x00\x00\x08\x02\x00", "truncated"),
                                     (bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(3), "payload")])
def test_idx_bad_files(raw, msg):
    with pytest.raises(DataError, match=msg):
        parse_idx(raw)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(b"\x1f\x8b" + b"garbage" * 3)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(p)


def test_explicit_root_loads_split(fake_fmnist):
    ds = load_dataset("fashion-mnist", "train", fake_fmnist)
    assert ds.images.shape == (600, 1, 28, 28) and ds.images.dtype.is_floating_point is False
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1 and 0 <= y < 10
    assert ds.classes[0] == "T-shirt/top"
    mn_ds = load_dataset("mnist", "test", fake_fmnist)
    assert len(mn_ds) == 200 and mn_ds.classes == [str(i) for i in range(10)]


def test_missing_root_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        mn.fashion_mnist("test", tmp_path / "nope")
    with pytest.raises(DataError, match="t10k-images"):
        mn.fashion_mnist("test", tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        mn.fashion_mnist("val", tmp_path)


def test_resolution_order_system_then_cache_then_download(tmp_path, monkeypatch, fake_fmnist):
    src = mn.IdxSource("toy", urls=(), sha256={}, system_dirs=(str(tmp_path / "sys"),), classes=tuple("0123456789"))
    monkeypatch.setenv("ADVSHIELD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found"):
        mn.resolve_files(src, "test", download_ok=False)
    cache = tmp_path / "cache" / "toy"
    cache.mkdir(parents=True)
    for f in fake_fmnist.glob("t10k-*"):
        (cache / f.name).write_bytes(f.read_bytes())
    assert mn.resolve_files(src, "test")[0].parent == cache
    (tmp_path / "sys").mkdir()
    for f in fake_fmnist.glob("t10k-*"):
        (tmp_path / "sys" / f.name).write_bytes(f.read_bytes())
    assert mn.resolve_files(src, "test")[0].parent == tmp_path / "sys"


def test_download_checks_sha256_and_keeps_nothing_on_mismatch(tmp_path, monkeypatch, fake_fmnist):
    served = tmp_path / "served"
    served.mkdir()
    names = {}
    for f in fake_fmnist.glob("t10k-*"):
        (served / f.name).write_bytes(f.read_bytes())
        names[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    monkeypatch.setenv("ADVSHIELD_CACHE", str(tmp_path / "cache"))
    good = mn.IdxSource("dl", urls=(served.as_uri() + "/",), sha256=names, system_dirs=(), classes=tuple("0123456789"))
    imgs, lbls = mn.resolve_files(good, "test")
    assert imgs.parent == tmp_path / "cache" / "dl" and read_idx(lbls).shape == (200,)
    bad = mn.IdxSource("bad", urls=(served.as_uri() + "/",), sha256={k: "0" * 64 for k in names}, system_dirs=(),
                       classes=tuple("0123456789"))
    with pytest.raises(DataError, match="SHA-256"):
        mn.resolve_files(bad, "test")
    assert not any((tmp_path / "cache" / "bad").iterdir())


def test_label_image_count_mismatch(tmp_path):
    x, y = synthetic_images(10, 0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[:9])
    with pytest.raises(DataError, match="do not form"):
        mn.fashion_mnist("test", tmp_path)


def test_official_hashes_are_well_formed():
    for src in (mn.FASHION_MNIST, mn.MNIST):
        assert set(src.sha256) == {f"{a}.gz" for pair in mn.SPLITS.values() for a in pair}
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in src.sha256.values())
