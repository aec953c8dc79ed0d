"""Input-transform baselines: known answers against numpy/scipy/Pillow, randomness, BPDA substitutes."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from advshield.defenses import JPEG, TVM, BitDepth, GaussianBlur, Median, RandomResizePad, defend
from advshield.defenses import jpeg as jpeg_module
from advshield.registry import DEFENSES

NAMES = ["jpeg", "bit-depth", "median", "tvm", "gaussian-blur", "resize-pad"]


def smooth_image(n: int = 1, c: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """Slowly varying test image in [0.2, 0.8]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    chans = [0.5 + 0.3 * torch.sin(2 * xx + (k + 1) * yy + k) for k in range(c)]
    return torch.stack(chans).unsqueeze(0).repeat(n, 1, 1, 1)


def bpda_grad(d, x: torch.Tensor) -> torch.Tensor:
    xb = x.clone().requires_grad_(True)
    (d.bpda(xb) * torch.linspace(0.5, 1.5, x.numel()).view_as(x)).sum().backward()
    return xb.grad


def test_registered_and_exported():
    for name, cls in zip(NAMES, [JPEG, BitDepth, Median, TVM, GaussianBlur, RandomResizePad]):
        assert DEFENSES.get(name) is cls and cls.name == name and cls.__doc__
        assert "BPDA substitute" in cls.__doc__


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (3, 3, 9, 13), (1, 1, 2, 2), (2, 2, 8, 8)])
def test_shapes_ranges_dtype(name, shape):
    torch.manual_seed(1)
    x = torch.rand(shape, dtype=torch.float64)
    out = DEFENSES.get(name)()(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_bpda_gradient_finite_nonzero(name):
    torch.manual_seed(2)
    for shape in [(2, 1, 12, 10), (2, 3, 16, 16)]:
        g = bpda_grad(DEFENSES.get(name)(), torch.rand(shape))
        assert g.shape == shape and torch.isfinite(g).all() and (g != 0).float().mean() > 0.5


# ----------------------------------------------------------------------------------------------- bit depth
def test_bit_depth_values():
    x = torch.tensor([0.0, 0.1, 0.2, 0.49, 0.51, 0.8, 1.0]).view(1, 1, 1, 7)
    assert torch.equal(BitDepth(1)(x).flatten(), torch.tensor([0.0, 0, 0, 0, 1, 1, 1]))
    assert torch.allclose(BitDepth(2)(x).flatten(), torch.tensor([0, 0, 1, 1, 2, 2, 3]) / 3)
    y = torch.rand(2, 3, 8, 8)
    out = BitDepth(4)(y)
    assert torch.allclose(out * 15, torch.round(out * 15), atol=1e-5) and (out - y).abs().max() <= 0.5 / 15 + 1e-6
    assert torch.equal(BitDepth(8)(torch.round(y * 255) / 255), torch.round(y * 255) / 255)
    assert torch.equal(bpda_grad(BitDepth(), y), torch.linspace(0.5, 1.5, y.numel()).view_as(y))  # identity
    with pytest.raises(ValueError):
        BitDepth(0)


# ------------------------------------------------------------------------------------------------- median
def test_median_removes_salt_and_pepper():
    x = torch.full((2, 3, 20, 20), 0.4)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(400, generator=gen)[:20]  # 5 % isolated-ish noise pixels per channel
    x.view(2, 3, 400)[..., idx[:10]] = 1.0
    x.view(2, 3, 400)[..., idx[10:]] = 0.0
    assert torch.allclose(Median(3)(x), torch.full_like(x, 0.4))


@pytest.mark.parametrize("window", [3, 5])
def test_median_matches_scipy_mirror(window):
    x = torch.rand(2, 3, 11, 9, generator=torch.Generator().manual_seed(3))
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, window, window), mode="mirror")
    assert np.allclose(Median(window)(x).numpy(), ref)


def test_median_autograd_and_checks():
    x = torch.rand(1, 1, 6, 6, requires_grad=True)
    Median()(x).sum().backward()
    assert x.grad.sum() == 36  # each output routes its gradient to exactly one input pixel
    assert torch.equal(Median(1)(x), x)
    with pytest.raises(ValueError):
        Median(4)


# --------------------------------------------------------------------------------------------------- JPEG
def pil_roundtrip(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_equals_pillow_roundtrip(channels):
    rng = np.random.default_rng(4)
    u8 = rng.integers(0, 256, size=(2, channels, 24, 20), dtype=np.uint8)
    out = JPEG(quality=60)(torch.from_numpy(u8).float() / 255)
    for i in range(2):
        ref = pil_roundtrip(u8[i, 0] if channels == 1 else u8[i].transpose(1, 2, 0), 60)
        ref = ref[None] if channels == 1 else ref.transpose(2, 0, 1)
        assert np.array_equal(torch.round(out[i] * 255).numpy().astype(np.uint8), ref)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_quality_controls_distortion(channels):
    x = smooth_image(2, channels)
    x = x + 0.05 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    err = {q: (JPEG(q)(x) - x).abs().mean().item() for q in (10, 100)}
    assert err[100] < 0.01 and err[10] > 2 * err[100]


@pytest.mark.skipif(jpeg_module.kornia_jpeg() is None, reason="kornia not installed")
@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_kornia_substitute_tracks_real_jpeg(channels):
    x = torch.rand(2, channels, 16, 24, generator=torch.Generator().manual_seed(6))
    d = JPEG(10)
    real, sub = d(x), d.substitute(x)
    assert sub.shape == x.shape and (sub - real).abs().mean() < 0.5 * (x - real).abs().mean()
    assert torch.allclose(d.bpda(x), real)


def test_jpeg_without_kornia_uses_identity(monkeypatch):
    monkeypatch.setattr(jpeg_module, "_KORNIA_JPEG", None)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(JPEG().substitute(x), x)
    assert torch.equal(bpda_grad(JPEG(), x), torch.linspace(0.5, 1.5, x.numel()).view_as(x))


# ---------------------------------------------------------------------------------------------------- TVM
def test_tvm_without_dropout_returns_input():
    x = smooth_image(2, 3)
    out = TVM(drop_prob=0.0, weight=1e-4)(x)
    assert (out - x).abs().max() < 1e-3


def test_tvm_fills_dropped_pixels_of_smooth_image():
    x = smooth_image(2, 3, 32, 32)
    d = TVM(drop_prob=0.5, seed=0)
    mask = TVM(drop_prob=0.5, seed=0).sample_mask(2, 32, 32)
    assert 0.4 < mask.mean() < 0.6 and mask.shape == (2, 1, 32, 32)  # one mask per image, shared by channels
    out = d(x)
    dropped = (mask == 0).expand_as(x)
    assert (out - x)[dropped].abs().mean() < 0.02 and (out - x).abs().max() < 0.15
    hole = x.clone()
    hole[dropped] = 0  # what dropping without inpainting would give
    assert (out - x).abs().mean() < 0.1 * (hole - x).abs().mean()


def test_tvm_randomness_and_seed():
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    a, b = TVM(seed=1), TVM(seed=1)
    first = a(x)
    assert torch.equal(first, b(x)) and not torch.equal(first, a(x))  # same seed → same draws; calls differ
    assert not torch.equal(TVM(seed=2)(x), first)
    assert TVM.randomized and not TVM.differentiable and not first.requires_grad


# ---------------------------------------------------------------------------------------------- Gaussian
def test_gaussian_blur_constant_mean_and_scipy():
    assert GaussianBlur(1.0).kernel_size == 7 and GaussianBlur(0.5).kernel_size == 5
    c = torch.full((1, 3, 10, 10), 0.3)
    assert torch.allclose(GaussianBlur(1.5)(c), c)
    x = torch.rand(2, 3, 16, 15, generator=torch.Generator().manual_seed(8))
    out = GaussianBlur(1.0)(x)
    assert torch.allclose(out.mean((2, 3)), x.mean((2, 3)), atol=0.01) and out.std() < 0.6 * x.std()
    ref = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    assert np.allclose(out.numpy(), ref, atol=1e-5)
    assert torch.equal(GaussianBlur(0.0)(x), x)


def test_gaussian_blur_bpda_is_autograd():
    x = torch.rand(1, 1, 9, 9)
    d = GaussianBlur(1.0)
    xa = x.clone().requires_grad_(True)
    (d(xa) * torch.linspace(0.5, 1.5, 81).view_as(x)).sum().backward()
    assert torch.allclose(bpda_grad(d, x), xa.grad)


# ------------------------------------------------------------------------------------------------ R&P
def test_resize_pad_shape_seed_and_randomness():
    x = torch.rand(3, 3, 20, 28, generator=torch.Generator().manual_seed(9))
    a, b = RandomResizePad(seed=3), RandomResizePad(seed=3)
    first = a(x)
    assert first.shape == x.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, b(x)) and not torch.equal(first, a(x))
    assert not torch.equal(RandomResizePad(seed=4)(x), first)
    assert torch.equal(RandomResizePad(max_scale=1.0)(x), x)  # no room to resize or pad: identity
    assert RandomResizePad.randomized and RandomResizePad.differentiable


def test_resize_pad_defended_model_gradient():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    defend(model, RandomResizePad(seed=0))(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
