"""NRP purifier architectures, the Purifier / DynamicPurifier defenses, loading and ``defend``."""
import pytest
import torch
from conftest import TINY
from torch import nn

import advshield
from advshield.defenses.nrp import NRP, NRP_CONFIGS, DynamicPurifier, NRPResG, Purifier, count_parameters
from advshield.defenses.purifier import defend, load_purifier
from advshield.errors import AdvshieldError, ModelError
from advshield.models import save_checkpoint
from advshield.registry import PURIFIERS


def tiny_nrp(c=1):
    torch.manual_seed(0)
    return NRP(in_channels=c, nf=4, nb=1, gc=2)


def tiny_resg(c=1):
    torch.manual_seed(0)
    return NRPResG(in_channels=c, nf=4, nb=2)


@pytest.mark.parametrize("config, expected", [("nrp-paper", 16_550_275), ("resg-paper", 1_702_211),
                                              ("nrp-small", 180_609), ("resg-small", 74_593),
                                              ("nrp-medium", 810_481)])
def test_paper_parameter_counts(config, expected):
    arch, args = NRP_CONFIGS[config]
    with torch.device("meta"):
        net = PURIFIERS.get(arch)(**args)
    assert count_parameters(net) == expected


def test_named_configs_are_registered_architectures():
    assert {"nrp-paper", "resg-paper", "nrp-small", "resg-small"} <= set(NRP_CONFIGS)
    assert {"nrp", "resg"} <= set(PURIFIERS.names())
    for arch, args in NRP_CONFIGS.values():
        with torch.device("meta"):
            assert isinstance(PURIFIERS.get(arch)(**args), nn.Module)


@pytest.mark.parametrize("make", [tiny_nrp, tiny_resg])
@pytest.mark.parametrize("c, h, w", [(1, 28, 28), (3, 17, 23), (1, 5, 9)])
def test_shapes_and_range(make, c, h, w):
    p = Purifier(make(c)).eval()
    x = torch.rand(2, c, h, w)
    y = p(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
    assert make(c)(x).shape == x.shape  # the bare net is fully convolutional too


def test_channel_adaptation():
    rgb, gray = Purifier(tiny_nrp(3)).eval(), Purifier(tiny_nrp(1)).eval()
    x1, x3, x4 = torch.rand(2, 1, 9, 11), torch.rand(2, 3, 9, 11), torch.rand(2, 4, 9, 11)
    y = rgb(x1)  # gray → replicated → mean of the three outputs
    assert y.shape == x1.shape
    assert torch.allclose(y, rgb.net(x1.expand(-1, 3, -1, -1)).clamp(0, 1).mean(1, keepdim=True))
    y4 = rgb(x4)  # RGBA: colour purified, alpha passed through
    assert y4.shape == x4.shape and torch.equal(y4[:, 3], x4[:, 3])
    assert torch.allclose(y4[:, :3], rgb(x4[:, :3]))
    y3 = gray(x3)  # a grayscale net purifies each colour channel on its own
    assert y3.shape == x3.shape and torch.allclose(y3[:, 1:2], gray(x3[:, 1:2]))
    with pytest.raises(ValueError, match="3-channel"):
        rgb(torch.rand(1, 5, 8, 8))


@pytest.mark.parametrize("make", [tiny_nrp, tiny_resg])
def test_no_skip_from_input_to_output(make):
    net = make(1)
    with torch.no_grad():
        net.conv_last.weight.zero_()
        net.conv_last.bias.fill_(0.3)
    p = Purifier(net).eval()
    a, b = p(torch.rand(2, 1, 12, 12)), p(torch.rand(2, 1, 12, 12))
    assert torch.allclose(a, torch.full_like(a, 0.3)) and torch.allclose(a, b)


def test_purifier_defense_contract():
    p = Purifier(tiny_nrp(1)).eval()
    assert p.differentiable and not p.randomized
    x = torch.rand(2, 1, 10, 10, requires_grad=True)
    out = p(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(p.bpda(x), out)


def test_dynamic_noise_is_projected_to_eps():
    d = DynamicPurifier(Purifier(tiny_nrp(1)), eps=4 / 255, sigma=0.5, seed=0)
    assert d.randomized and d.differentiable
    x = torch.rand(4, 1, 16, 16)
    noisy = d.noisy(x)
    assert (noisy - x).abs().max() <= 4 / 255 + 1e-6
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, x)
    assert ((noisy - x).abs() > 3.9 / 255).float().mean() > 0.5  # sigma ≫ eps: mostly on the boundary


def test_dynamic_seed_reproducibility():
    p = Purifier(tiny_nrp(1)).eval()
    x = torch.rand(2, 1, 12, 12)
    a, b = DynamicPurifier(p, seed=7), DynamicPurifier(p, seed=7)
    a1, a2 = a(x), a(x)
    assert torch.equal(a1, b(x)) and torch.equal(a2, b(x))  # same sequence
    assert not torch.equal(a1, a2)  # successive calls draw new noise
    a.reseed()
    assert torch.equal(a(x), a1)
    assert not torch.equal(DynamicPurifier(p, seed=8)(x), a1)


def _save_tiny(path, kind="purifier"):
    net = tiny_nrp(1)
    save_checkpoint(net, path, {"name": path.stem, "kind": kind, "dataset": "fashion-mnist", "architecture": "nrp",
                                "arch_args": {"in_channels": 1, "nf": 4, "nb": 1, "gc": 2}, "metrics": {}})
    return net


def test_load_purifier_from_file_and_zoo(tmp_path, monkeypatch):
    net = _save_tiny(tmp_path / "tp.safetensors")
    monkeypatch.setenv("ADVSHIELD_ZOO", str(tmp_path))
    x = torch.rand(2, 1, 28, 28)
    for spec in (str(tmp_path / "tp.safetensors"), "zoo:tp", str(tmp_path / "tp.json")):
        p = load_purifier(spec)
        assert isinstance(p, Purifier) and not p.training and p.name == "tp"
        assert torch.allclose(p(x), net(x).clamp(0, 1), atol=1e-6)  # channels-last convolutions on CPU
    with pytest.raises(ModelError, match="does not exist"):
        load_purifier(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match="cannot load purifier"):
        load_purifier("something.pt")
    with pytest.raises(ModelError, match="unknown zoo model"):
        load_purifier("zoo:nope")


def test_load_purifier_refuses_a_classifier(tmp_path):
    cls, arch, args = TINY["tiny-lenet"]
    save_checkpoint(cls(**args), tmp_path / "c.safetensors", {"name": "c", "kind": "classifier",
                    "dataset": "fashion-mnist", "architecture": arch, "arch_args": args, "metrics": {}})
    with pytest.raises(AdvshieldError):  # "lenet" is no purifier architecture
        load_purifier(str(tmp_path / "c.safetensors"))
    _save_tiny(tmp_path / "k.safetensors", kind="classifier")
    with pytest.raises(ModelError, match="not a purifier"):
        load_purifier(str(tmp_path / "k.safetensors"))


def test_defend_static_dynamic_and_by_spec(tmp_path):
    cls, _, args = TINY["tiny-lenet"]
    model = cls(**args).eval()
    _save_tiny(tmp_path / "tp.safetensors")
    x = torch.rand(3, 1, 28, 28)
    assert advshield.defend is defend and advshield.load_purifier is load_purifier
    static = defend(model, str(tmp_path / "tp.safetensors"))
    dyn = defend(model, load_purifier(str(tmp_path / "tp.safetensors")), dynamic=True, seed=1)
    for m in (static, dyn):
        assert isinstance(m, nn.Module) and m(x).shape == (3, 10)
    assert isinstance(dyn.defense, DynamicPurifier) and dyn.defense.seed == 1
    assert defend(model, None) is model
    assert isinstance(defend(model, "jpeg"), nn.Module)


def test_defend_by_name_seeds_a_randomized_defense():
    cls, _, args = TINY["tiny-lenet"]
    model = cls(**args).eval()
    x = torch.rand(4, 1, 28, 28)
    a, b = defend(model, "tvm", seed=3), defend(model, "tvm", seed=3)
    assert a.defense.seed == 3 and torch.equal(a(x), b(x))
    assert not torch.equal(a.defense(x), defend(model, "tvm", seed=4).defense(x))
