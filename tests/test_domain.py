"""Input domains (channels, size) from cards and convolutions, the one-line domain checks, ChannelAdapter."""
import json

import pytest
import torch
from conftest import TINY
from torch import nn

from advshield.attacks import PGD
from advshield.attacks.ssp import SSP
from advshield.errors import AdvshieldError
from advshield.models import (
    ChannelAdapter,
    InputDomain,
    adapt_channels,
    check_domain,
    input_channels,
    input_domain,
    load_model,
)
from advshield.models.domain import LUMA


def rgb_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10)).eval()


def test_domain_from_a_classifier_card(tiny_zoo):
    card_file = tiny_zoo / "tiny-lenet.json"
    card = json.loads(card_file.read_text())
    card["input"] = {"channels": 1, "size": [28, 28], "range": [0, 1]}  # what train classifier writes
    card_file.write_text(json.dumps(card))
    model = load_model("zoo:tiny-lenet")
    assert input_domain(model) == InputDomain(1, (28, 28))


@pytest.mark.parametrize("inp,expected", [
    ({"channels": 1, "size": 28, "note": "other sizes are resized to this one and back"}, InputDomain(1, None)),
    ({"channels": 1, "size": "any"}, InputDomain(1, None)),
    ({"channels": 3, "size": [32, 40]}, InputDomain(3, (32, 40))),
    ({"channels": 3, "size": 64}, InputDomain(3, (64, 64))),
    ({"size": [32, 32]}, InputDomain(3, (32, 32))),  # channels from the first convolution
])
def test_domain_from_card_inputs(inp, expected):
    model = rgb_net()
    model.card = {"input": inp}
    assert input_domain(model) == expected


def test_domain_without_card_and_through_wrappers(tmp_path):
    model = rgb_net()
    assert input_domain(model) == InputDomain(3, None) and input_channels(nn.Identity()) is None
    wrapped = ChannelAdapter(model, 3)
    assert input_domain(wrapped) == InputDomain(3, None)
    cls, _, args = TINY["tiny-vgg"]
    path = tmp_path / "m.pt"
    torch.jit.script(cls(**args).eval()).save(str(path))
    assert input_channels(load_model(f"torchscript:{path}")) == 1


def test_check_domain_messages():
    d = InputDomain(1, (28, 28))
    check_domain(d, (1, 28, 28), "--model zoo:fmnist-vgg")
    with pytest.raises(AdvshieldError) as e:
        check_domain(d, (3, 28, 28), "--model zoo:fmnist-vgg")
    assert str(e.value) == ("--model zoo:fmnist-vgg takes 1-channel images, the data are 3-channel "
                            "(pass --adapt-channels to feed it the luma)")
    check_domain(d, (3, 28, 28), "--model zoo:fmnist-vgg", adapt_channels=True)
    with pytest.raises(AdvshieldError) as e:
        check_domain(d, (1, 33, 40), "--model zoo:fmnist-vgg", adapt_channels=True)
    assert str(e.value) == "--model zoo:fmnist-vgg takes 28×28 images, the data are 33×40 (pass --size 28 28 to resize)"
    with pytest.raises(AdvshieldError, match="takes 3-channel images, the data are 1-channel .*repeated"):
        check_domain(InputDomain(3, None), (1, 5, 5), "--model m")
    with pytest.raises(AdvshieldError, match=r"takes 3-channel images, the data are 4-channel$"):
        check_domain(InputDomain(3, None), (4, 5, 5), "--model m", adapt_channels=True)
    check_domain(InputDomain(None, None), (4, 5, 7), "--model m")


def test_channel_adapter_gray_to_rgb_and_back():
    rgb = rgb_net()
    adapted = adapt_channels(rgb)
    assert isinstance(adapted, ChannelAdapter) and adapted.inner is rgb
    g = torch.rand(2, 1, 8, 8)
    assert torch.allclose(adapted(g), rgb(g.repeat(1, 3, 1, 1)), atol=1e-6)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(adapted(x), rgb(x))
    cls, _, args = TINY["tiny-lenet"]
    gray = cls(**args).eval()
    to_gray = adapt_channels(gray)
    x = torch.rand(2, 3, 28, 28)
    luma = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(to_gray(x), gray(luma), atol=1e-6)
    assert list(to_gray.state_dict()) == list(gray.state_dict())  # names unchanged, nothing added
    assert adapt_channels(nn.Identity()) is not None and not isinstance(adapt_channels(nn.Identity()), ChannelAdapter)
    with pytest.raises(AdvshieldError):
        ChannelAdapter(rgb, 2)


def test_adapted_model_is_differentiable_and_attackable(tiny_zoo):
    model = adapt_channels(load_model("zoo:tiny-vgg"))
    x = torch.rand(3, 3, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and x.grad.shape == x.shape
    xa = x.detach()
    adv = PGD(model, eps=0.1, alpha=0.05, steps=2, seed=0)(xa)
    assert adv.shape == (3, 3, 28, 28) and (adv - xa).abs().max() <= 0.1 + 1e-6
    feats = SSP(model, eps=0.1, steps=2, seed=0)(xa)  # default_feature_layer read through the wrapper
    assert feats.shape == xa.shape and not torch.equal(feats, xa)
    assert model.card["name"] == "tiny-vgg"


def test_adapting_a_whole_ensemble_of_gray_members(tiny_zoo):
    from advshield.attacks import Ensemble

    members = [load_model("zoo:tiny-vgg"), load_model("zoo:tiny-lenet")]
    ens = Ensemble(members)
    adapted = adapt_channels(ens, channels=1)
    x = torch.rand(2, 3, 28, 28)
    luma = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(adapted(x), ens(luma), atol=1e-6)
