"""One ``defend()``: defense objects, spec strings, stacks, keyword settings, purifier domains, input checks."""
import warnings

import pytest
import torch
from torch import nn

import advshield
import advshield.defenses
from advshield.defenses import (
    JPEG,
    Median,
    NRPDefense,
    PerChannel,
    Stack,
    base,
    build_defense,
    compatible_defenses,
    defend,
    describe_defense,
    load_purifier,
    parse_defense_spec,
)
from advshield.defenses import purifier as purifier_module
from advshield.defenses import spec as spec_module
from advshield.defenses.nrp import NRP, DynamicPurifier
from advshield.errors import AdvshieldError
from advshield.models import save_checkpoint


class TinyClassifier(nn.Module):
    """Any channel count and size → 4 logits (global average pool + linear)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(channels, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class Half(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


def images(n=2, c=3, h=16, w=16, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def one_line_error(fn, *words):
    """``fn()`` raises a one-line AdvshieldError mentioning every word; returns the message."""
    with pytest.raises(AdvshieldError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg, msg
    for word in words:
        assert word in msg, (word, msg)
    return msg


@pytest.fixture
def gray_purifier(tmp_path, monkeypatch):
    """A tiny 1-channel NRP checkpoint (card input: 1 channel) as ``zoo:tp`` and as a file; returns the file."""
    torch.manual_seed(0)
    net = NRP(in_channels=1, nf=4, nb=1, gc=2)
    path = tmp_path / "tp.safetensors"
    save_checkpoint(net, path, {"name": "tp", "kind": "purifier", "dataset": "fashion-mnist", "architecture": "nrp",
                                "arch_args": {"in_channels": 1, "nf": 4, "nb": 1, "gc": 2},
                                "input": {"channels": 1, "size": "any", "range": [0, 1]}, "metrics": {}})
    monkeypatch.setenv("ADVSHIELD_ZOO", str(tmp_path))
    return path


# -- one function ---------------------------------------------------------------------------------------------
def test_one_defend_everywhere():
    assert advshield.defend is advshield.defenses.defend is purifier_module.defend
    assert base.defend is advshield.defend  # the old import path gives the same function
    assert base.build_defense is spec_module.build_defense is advshield.defenses.build_defense
    from advshield.cli import purify

    assert not hasattr(purify, "BypassPGD")  # library code lives in advshield.attacks.bypass, not in cli/


def test_keyword_settings_equal_objects_and_spec_strings():
    model, x = TinyClassifier(), images()
    by_kw = defend(model, "jpeg", quality=50)
    by_obj = defend(model, JPEG(quality=50))
    by_spec = defend(model, "jpeg:quality=50")
    assert by_kw.defense.quality == by_spec.defense.quality == 50
    assert torch.equal(by_kw.defense(x), by_obj.defense(x)) and torch.equal(by_kw(x), by_obj(x))
    assert torch.equal(by_spec(x), by_obj(x))
    assert not torch.equal(by_kw.defense(x), defend(model, "jpeg").defense(x))  # the setting took effect
    assert defend(model, None) is model and defend(model, "none") is model


def test_module_objects_and_lists():
    model, x = TinyClassifier(), images()
    assert torch.allclose(defend(model, Half())(x), model(x * 0.5))
    mixed = defend(model, [Half(), "median"])
    assert torch.allclose(mixed.defense(x), Median()(x * 0.5))


def test_stacks_apply_left_to_right_and_combine_flags():
    model, x = TinyClassifier(), images(seed=1)
    s = defend(model, "median+jpeg").defense
    assert isinstance(s, Stack) and [type(m) for m in s.members] == [Median, JPEG]
    expected = JPEG()(Median()(x))
    for form in ("median+jpeg", " Median + JPEG ", ["median", "jpeg"], [Median(), JPEG()], ["median+jpeg"]):
        assert torch.equal(defend(model, form).defense(x), expected), form
    assert not torch.equal(defend(model, "jpeg+median").defense(x), expected)  # order matters
    assert s.differentiable is False and s.randomized is False
    assert build_defense("median+gaussian-blur").differentiable is True
    rp = build_defense("median+resize-pad", seed=0)
    assert rp.randomized is True and rp.differentiable is True
    assert repr(build_defense("jpeg:quality=50+median")) == "jpeg(quality=50)+median(window=3)"


def test_stack_bpda_keeps_the_forward_value_and_gives_gradients():
    d = build_defense("jpeg:quality=40+median")
    x = images(seed=2).requires_grad_(True)
    out = d.bpda(x)
    assert torch.allclose(out, d(x.detach()))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    defended = defend(TinyClassifier(), d, bpda=True)
    assert torch.allclose(defended(x.detach()), TinyClassifier()(d(x.detach())))


def test_seeds_reach_randomized_members():
    a, b = build_defense("tvm", 3), build_defense("tvm", 3)
    x = images(seed=3)
    assert a.seed == 3 and torch.equal(a(x), b(x))
    stack = build_defense("tvm:iters=5+resize-pad", seed=3)
    assert [m.seed for m in stack.members] == [3, 4]
    assert build_defense("tvm:seed=9", seed=3).seed == 9  # the spec's own seed wins
    assert torch.equal(stack(x), build_defense("tvm:iters=5+resize-pad", seed=3)(x))


def test_dynamic_and_eps_sigma():
    model = TinyClassifier()
    dyn = defend(model, "median", dynamic=True, eps=4 / 255, sigma=0.1, seed=1)
    assert isinstance(dyn.defense, DynamicPurifier) and dyn.defense.seed == 1 and dyn.defense.sigma == 0.1
    assert isinstance(dyn.defense.purifier, Median)
    one_line_error(lambda: defend(model, None, dynamic=True), "dynamic")
    one_line_error(lambda: defend(model, "median", sigma=0.1), "sigma")  # median takes no sigma
    assert defend(model, "gaussian-blur", sigma=0.5).defense.sigma == 0.5  # a defense's own sigma


def test_describe_and_parse():
    assert describe_defense("JPEG: quality=50 + median:window=3") == "jpeg:quality=50+median"
    assert describe_defense("jpeg:quality=75") == "jpeg" and describe_defense(None) == "none"
    assert describe_defense("jpeg", quality=20) == "jpeg:quality=20"
    assert describe_defense(build_defense("median:window=5+jpeg")) == "median:window=5+jpeg"
    items = parse_defense_spec("zoo:nrp-fmnist:adapt_channels=true,seed=3+gaussian-blur:sigma=1e+0")
    assert [i.name for i in items] == ["zoo:nrp-fmnist", "gaussian-blur"]
    assert items[0].settings == {"adapt_channels": True, "seed": 3} and items[1].settings == {"sigma": 1.0}
    assert parse_defense_spec("/a/b.safetensors:adapt_channels=false")[0].name == "/a/b.safetensors"
    assert repr(JPEG(quality=75)) == "JPEG(quality=75)" and repr(Median(5)) == "Median(window=5)"


# -- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ("jpg", ["'jpg'", "jpeg", "median"]),
    ("jpeg:qualty=5", ["qualty", "accepted", "quality"]),
    ("jpeg:quality=abc", ["quality", "int"]),
    ("jpeg:quality=true", ["quality", "int"]),
    ("jpeg:quality=0", ["quality"]),
    ("jpeg:quality=101", ["quality"]),
    ("jpeg:quality=50.5", ["quality"]),
    ("median:window=4", ["window"]),
    ("median:window=0", ["window"]),
    ("bit-depth:bits=0", ["bits"]),
    ("bit-depth:bits=9", ["bits"]),
    ("gaussian-blur:sigma=-1", ["sigma"]),
    ("gaussian-blur:sigma=nan", ["sigma"]),
    ("resize-pad:max_scale=0.5", ["max_scale"]),
    ("tvm:drop_prob=1", ["drop_prob"]),
    ("tvm:weight=inf", ["weight"]),
    ("jpeg+", ["empty"]),
    ("jpeg:quality", ["KEY=VALUE"]),
    ("", ["empty"]),
])
def test_bad_specs_are_one_line_errors(bad, words):
    one_line_error(lambda: build_defense(bad), *words)
    one_line_error(lambda: defend(TinyClassifier(), bad), *words)


def test_bad_keyword_arguments():
    model = TinyClassifier()
    one_line_error(lambda: defend(model, "jpeg", qualty=5), "qualty", "quality")
    one_line_error(lambda: defend(model, "jpeg", quality=float("nan")), "quality")
    one_line_error(lambda: defend(model, "jpeg+median", quality=50), "single named defense")
    one_line_error(lambda: defend(model, JPEG(), quality=50), "single named defense")
    one_line_error(lambda: defend(model, "jpeg:quality=50", quality=40), "quality", "both")
    one_line_error(lambda: defend(model, 42), "int")
    one_line_error(lambda: defend(model, "jpeg", bpda="yes"), "bpda")


# -- input checks ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    (lambda: torch.full((1, 3, 8, 8), float("nan")), ["NaN"]),
    (lambda: (torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), ["uint8", "255"]),
    (lambda: torch.rand(1, 3, 8, 8) * 255, ["[0,1]", "255"]),
    (lambda: torch.rand(3, 8, 8), ["N×C×H×W"]),
])
def test_bad_images_are_refused(bad, words):
    x = bad()
    defended = defend(TinyClassifier(), "median")
    one_line_error(lambda: defended(x), *words)
    for d in (Median(), build_defense("median+jpeg"), build_defense("resize-pad")):
        one_line_error(lambda d=d: d(x), *words)
        one_line_error(lambda d=d: d.bpda(x), *words)


def test_checked_once_and_quietly(monkeypatch):
    calls = []
    real = base.check_images
    monkeypatch.setattr(base, "check_images", lambda x, name="x": calls.append(1) or real(x, name))
    x = images().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "requires_grad to scalar" warning from the check
        defend(TinyClassifier(), "median+gaussian-blur+resize-pad")(x).sum().backward()
    assert len(calls) == 1


# -- purifier domains -----------------------------------------------------------------------------------------
def test_gray_purifier_refuses_rgb_unless_adapted(gray_purifier):
    model, x = TinyClassifier(3), images(c=3)
    for form in (str(gray_purifier), "zoo:tp", load_purifier("zoo:tp")):
        defended = defend(model, form)
        one_line_error(lambda defended=defended: defended(x), "takes 1-channel images", "the input has 3 channels",
                       "adapt_channels=True")
    p = load_purifier("zoo:tp")
    per_channel = torch.cat([p(x[:, k : k + 1]) for k in range(3)], 1)
    for form, kw in ((str(gray_purifier), {"adapt_channels": True}), ("zoo:tp:adapt_channels=true", {}),
                     (p, {"adapt_channels": True})):
        d = defend(model, form, **kw)
        assert torch.allclose(d.defense(x), per_channel)
        assert d(x).shape == (2, 4)
    gray = images(c=1)  # its own domain needs no adaptation
    assert torch.allclose(defend(TinyClassifier(1), "zoo:tp").defense(gray), p(gray))


def test_per_channel_is_differentiable_and_keeps_randomized(gray_purifier):
    p = load_purifier("zoo:tp")
    pc = PerChannel(p)
    x = images(c=3).requires_grad_(True)
    pc(x).sum().backward()
    assert x.grad.abs().sum() > 0 and pc.differentiable and not pc.randomized
    assert PerChannel(DynamicPurifier(p, seed=0)).randomized
    assert build_defense("zoo:tp:dynamic=true,adapt_channels=true", seed=0).randomized


def test_registered_purifier_channels_without_loading_weights(monkeypatch):
    def no_weights(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(purifier_module, "load_checkpoint", no_weights)
    assert NRPDefense.input_channels() == 1  # the shipped nrp-fmnist card: 1 channel
    assert JPEG.input_channels() is None


def test_compatible_defenses(gray_purifier):
    names = ["jpeg", "zoo:tp", "median+zoo:tp", "zoo:tp:adapt_channels=true", "nrp"]
    kept, left = compatible_defenses(names, 3)
    assert kept == ["jpeg", "zoo:tp:adapt_channels=true"]
    assert set(left) == {"zoo:tp", "median+zoo:tp", "nrp"}
    assert "1-channel" in left["zoo:tp"] and "3-channel" in left["nrp"]
    assert compatible_defenses(names, 1) == (names, {})
    with pytest.raises(AdvshieldError, match="unknown defense"):
        compatible_defenses(["jpg"], 1)
