"""Every registered defense: [0,1] → [0,1], same shape, BPDA forward equals forward, gradients flow."""
import pytest
import torch
from conftest import TINY

from advshield.defenses import Defense, defend
from advshield.errors import AdvshieldError
from advshield.registry import DEFENSES


def build(name, channels):
    """The registered defense for ``channels``-channel images: a purifier trained on another channel count is
    refused on them unless built with ``adapt_channels=True``."""
    cls = DEFENSES.get(name)
    need = cls.input_channels()
    if need is None or need == channels:
        return cls()
    with pytest.raises(AdvshieldError, match=f"takes {need}-channel images, the input has {channels} channels"):
        cls()(torch.rand(1, channels, 28, 28))
    return cls(adapt_channels=True)


@pytest.mark.parametrize("name", DEFENSES.names())
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32)])
def test_defense_contract(name, shape):
    torch.manual_seed(0)
    d = build(name, shape[1])
    assert isinstance(d, Defense) and isinstance(d.differentiable, bool) and isinstance(d.randomized, bool)
    x = torch.rand(shape)
    out = d(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    if not d.randomized:
        assert torch.equal(d(x), out)
        xb = x.clone().requires_grad_(True)
        via_bpda = d.bpda(xb)
        assert torch.allclose(via_bpda, out)
        via_bpda.sum().backward()
        assert xb.grad is not None and torch.isfinite(xb.grad).all() and xb.grad.abs().sum() > 0


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defended_model_is_a_module(name):
    cls, _, args = TINY["tiny-lenet"]
    model = cls(**args).eval()
    defended = defend(model, build(name, 1))
    assert isinstance(defended, torch.nn.Module)
    assert defended(torch.rand(3, 1, 28, 28)).shape == (3, 10)
