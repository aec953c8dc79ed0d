"""FRU insertion, training and loading (Borkar et al. 2020)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advshield import load_model
from advshield.cli.main import main
from advshield.defenses.fru import FRU, FRUNet, RegeneratedConv, conv_layers, default_layers, filter_ranking
from advshield.errors import ModelError
from advshield.models import ResNet, VGGNet


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return VGGNet(widths=[8, 16, 32], convs_per_block=2).eval()


def _perturb_frus(net: FRUNet) -> None:
    """Give every FRU a non-zero last layer (a trained FRU is not the identity)."""
    with torch.no_grad():
        for fru in net.frus():
            fru.body[-1].weight.normal_(0, 0.5)


def test_fresh_fru_is_identity_and_base_untouched():
    base = _vgg()
    x = torch.rand(4, 1, 28, 28)
    net = FRUNet(base).eval()
    assert torch.allclose(net(x), base(x), atol=1e-6)
    assert len(net.frus()) == 6 and net.layers == default_layers(base)
    assert all(isinstance(m, nn.Conv2d) for m in base.modules() if m.__class__.__name__.startswith("Conv"))
    assert not any(isinstance(m, RegeneratedConv) for m in base.modules())  # the caller's model is not modified


def test_fru_block_shape_and_parameter_formula():
    n = d = 16
    fru = FRU(n, d)
    assert fru(torch.rand(2, n, 7, 7)).shape == (2, n, 7, 7)
    convs = sum(p.numel() for m in fru.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    approx = 18 * d * d + 2 * n * d
    assert abs(convs - approx) / approx < 0.05  # biases make up the rest


def test_regenerates_top_l1_channels_and_keeps_order():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, 9, dtype=torch.float).view(8, 1, 1, 1).expand(8, 3, 3, 3)
                          * torch.tensor([1, -1, 1, -1, 1, -1, 1, -1.]).view(8, 1, 1, 1))
        conv.weight[2] *= 100  # channel 2 gets the largest l1 norm
    assert filter_ranking(conv)[0] == 2
    reg = RegeneratedConv(conv, fraction=0.5)
    assert reg.index.tolist() == [2, 5, 6, 7]  # the top half by l1 norm, in channel order
    with torch.no_grad():
        reg.fru.body[-1].bias.fill_(1.0)
    reg.eval()
    x = torch.rand(2, 3, 5, 5)
    y, out = conv(x), reg(x)
    untouched = [0, 1, 3, 4]
    assert torch.equal(out[:, untouched], y[:, untouched])
    assert not torch.allclose(out[:, reg.index], y[:, reg.index])


def test_only_fru_parameters_train_and_base_weights_never_change():
    base = _vgg()
    net = FRUNet(base)
    before = {k: v.clone() for k, v in net.state_dict().items() if ".fru." not in k}
    opt = torch.optim.SGD(net.fru_parameters(), lr=0.1)
    net.train()
    assert all(not m.training for m in net.base.modules() if not any(m is f or m in list(f.modules())
                                                                        for f in net.frus()))
    for _ in range(3):
        loss = net(torch.rand(8, 1, 28, 28)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats of the base
    assert all(not p.requires_grad for k, p in net.named_parameters() if ".fru." not in k)


def test_resnet_default_layers_skip_pointwise_shortcuts_and_bad_layer_errors():
    base = ResNet(widths=[4, 8, 16], blocks=1)
    layers = default_layers(base)
    assert len(layers) == 6 and all("shortcut" not in n for n in layers)
    assert any("shortcut" in n for n in conv_layers(base, include_pointwise=True))
    with pytest.raises(ModelError, match="not a conv layer"):
        FRUNet(base, layers=["fc"])
    with pytest.raises(ModelError, match="fraction"):
        FRUNet(base, fraction=0)
