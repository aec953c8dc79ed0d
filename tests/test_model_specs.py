"""Model specs (py:, timm:, torchvision:, hf:, torchscript:, ?mean&std), output wrapping, card validation, zoo names."""
import json
import sys
import types
import warnings

import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file
from torch import nn

from advshield.attacks import PGD
from advshield.attacks.ssp import SSP
from advshield.errors import AdvshieldError, ModelError
from advshield.models import (
    LogitsOutput,
    find_layer,
    load_checkpoint,
    load_model,
    read_card,
    resolve_base,
    save_checkpoint,
    zoo_base_spec,
    zoo_path,
)
from advshield.models.checkpoint import build_from_card

USER_FILE = '''
import torch
from torch import nn
from helper_layers import double  # a sibling module: the file's folder is importable while it loads


class SmallNet(nn.Module):
    """RGB 32x32 -> 10 logits."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Linear(width * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.flatten(double(self.features(x)), 1))


def small_net():
    return SmallNet(4)


def wide_net():
    return SmallNet(6)


def needs_args(width):
    return SmallNet(width)


def broken():
    raise RuntimeError("no GPU here")


def not_a_model():
    return 42


class TupleNet(SmallNet):
    def forward(self, x):
        return (super().forward(x), x.mean())


class DictNet(SmallNet):
    def forward(self, x):
        return {"aux": x.mean(), "logits": super().forward(x)}


class Out:
    def __init__(self, logits):
        self.logits = logits


class ObjNet(SmallNet):
    def forward(self, x):
        return Out(super().forward(x))


class StrNet(SmallNet):
    def forward(self, x):
        return "not logits"


CONSTANT = 3
'''


@pytest.fixture
def user_file(tmp_path):
    (tmp_path / "helper_layers.py").write_text("def double(x):\n    return 2 * x\n")
    path = tmp_path / "user_model.py"
    path.write_text(USER_FILE)
    return path


def reference(user_file, name="small_net"):
    """The user's model built directly (same file), with fresh random weights."""
    spec_model = load_model(f"py:{user_file}:{name}")
    torch.manual_seed(1)
    for p in spec_model.parameters():
        p.data.normal_(0, 0.1)
    return spec_model.inner


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_py_spec_with_weights_predicts_like_the_original(tmp_path, user_file, suffix):
    orig = reference(user_file).eval()
    weights = tmp_path / f"w{suffix}"
    state = {k: v.clone() for k, v in orig.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(weights))
    elif suffix == ".pt":
        torch.save(state, weights)
    else:
        torch.save({"state_dict": state, "epoch": 3}, weights)
    model = load_model(f"py:{user_file}:small_net@{weights}")
    x = torch.rand(4, 3, 32, 32)
    assert not model.training and model.spec == f"py:{user_file}:small_net@{weights}"
    assert torch.allclose(model(x), orig(x), atol=1e-6)
    assert "features.0" in dict(model.named_modules())  # the user's layer names, unprefixed
    assert str(user_file.parent) not in sys.path  # only while importing


def test_py_spec_class_and_model_key(tmp_path, user_file):
    orig = reference(user_file, "SmallNet").eval()
    weights = tmp_path / "w.pt"
    torch.save({"model": orig.state_dict()}, weights)
    model = load_model(f"py:{user_file}:SmallNet@{weights}")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), orig(x), atol=1e-6)


def test_py_weights_mismatch_names_the_first_one(tmp_path, user_file):
    state = reference(user_file).state_dict()
    missing = {k: v for k, v in state.items() if k != "head.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match="missing key 'head.bias'"):
        load_model(f"py:{user_file}:small_net@{tmp_path / 'missing.safetensors'}")
    extra = {**state, "zzz.weight": torch.zeros(1)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelError, match="unexpected key 'zzz.weight'"):
        load_model(f"py:{user_file}:small_net@{tmp_path / 'extra.safetensors'}")
    save_file(state, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ModelError, match=r"'features.0.weight' has shape \(4, 3, 3, 3\), the model's is "
                                         r"\(6, 3, 3, 3\)") as e:
        load_model(f"py:{user_file}:wide_net@{tmp_path / 'narrow.safetensors'}")
    assert "\n" not in str(e.value)


def test_py_weights_are_never_unpickled(tmp_path, user_file):
    marker = tmp_path / "executed"
    torch.save({"x": Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="cannot read"):
        load_model(f"py:{user_file}:small_net@{tmp_path / 'evil.pt'}")
    assert not marker.exists()


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name,match", [
    ("nope", r"has no nope \(it defines .*small_net"),
    ("CONSTANT", "is a int, not a class or function"),
    ("needs_args", r"needs arguments \(width\)"),
    ("broken", "raised RuntimeError: no GPU here"),
    ("not_a_model", "returned a int, not a torch nn.Module"),
])
def test_py_spec_errors_are_one_line(user_file, name, match):
    with pytest.raises(ModelError, match=match) as e:
        load_model(f"py:{user_file}:{name}")
    assert "\n" not in str(e.value)


def test_py_spec_bad_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"py:{tmp_path / 'absent.py'}:Net")
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_anywhere\n")
    with pytest.raises(ModelError, match="importing .* failed: ModuleNotFoundError"):
        load_model(f"py:{bad}:Net")
    with pytest.raises(ModelError, match="py:FILE.py:NAME"):
        load_model(f"py:{tmp_path / 'x.txt'}")


@pytest.mark.parametrize("name", ["TupleNet", "DictNet", "ObjNet"])
def test_outputs_are_reduced_to_logits(user_file, name):
    model = load_model(f"py:{user_file}:{name}")
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    inner = model.inner
    expected = nn.Module.__call__(inner, x)
    expected = expected[0] if isinstance(expected, tuple) else (
        expected["logits"] if isinstance(expected, dict) else expected.logits)
    assert torch.equal(out, expected)


def test_output_that_is_no_logits_is_refused(user_file):
    model = load_model(f"py:{user_file}:StrNet")
    with pytest.raises(ModelError, match="returned str, not a logits tensor"):
        model(torch.rand(1, 3, 32, 32))


def test_wrapped_model_keeps_layer_names_for_ssp(user_file):
    model = load_model(f"py:{user_file}:TupleNet?mean=0.5,0.5,0.5&std=0.25,0.25,0.25")
    assert find_layer(model, "features.1") is model.inner.inner.features[1]
    assert list(model.state_dict()) == list(model.inner.inner.state_dict())
    x = torch.rand(2, 3, 32, 32)
    adv = SSP(model, eps=8 / 255, steps=2, layer="features.1", seed=0)(x)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(adv, x)
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_mean_std_query_and_arguments(user_file):
    plain = load_model(f"py:{user_file}:small_net")
    normed = load_model(f"py:{user_file}:small_net?mean=0.485,0.456,0.406&std=0.229,0.224,0.225")
    normed.inner.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normed(x), plain((x - mean) / std), atol=1e-5)
    kw = load_model(f"py:{user_file}:small_net", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    kw.inner.load_state_dict(plain.state_dict())
    assert torch.allclose(kw(x), normed(x), atol=1e-6)
    assert normed.spec.endswith("std=0.229,0.224,0.225")


@pytest.mark.parametrize("query,match", [
    ("mean=0.5,0.5&std=0.2", "mean has 2 values, std 1"),
    ("mean=0.5&std=0", "std must be > 0"),
    ("mean=nan&std=1", "finite"),
    ("mean=a&std=1", "numbers separated by commas"),
    ("scale=2", "unknown query"),
])
def test_bad_normalisation_is_refused(user_file, query, match):
    with pytest.raises(ModelError, match=match):
        load_model(f"py:{user_file}:small_net?{query}")


def test_query_and_arguments_together_are_refused(user_file):
    with pytest.raises(ModelError, match="not both"):
        load_model(f"py:{user_file}:small_net?mean=0.5", mean=[0.4])


# -- timm / torchvision / hf with fake packages ------------------------------------------------------------
class FakeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2, 5)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def fake_timm(calls):
    mod = types.ModuleType("timm")

    def create_model(name, pretrained=True, **kw):
        calls.append((name, pretrained))
        if name != "fakenet":
            raise RuntimeError(f"Unknown model ({name})")
        net = FakeNet()
        net.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        return net

    mod.create_model = create_model
    return mod


def test_timm_spec_builds_without_download_and_warns(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(sys.modules, "timm", fake_timm(calls))
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = load_model("timm:fakenet")
    assert calls == [("fakenet", False)]
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.25, 0.25, 0.25)  # pretrained_cfg
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model(x), model.inner.inner((x - 0.5) / 0.25), atol=1e-6)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(weights))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no warning
        again = load_model(f"timm:fakenet@{weights}", mean=[0.1], std=[0.2])
    assert again.mean == (0.1,) and torch.equal(again.inner.inner.fc.weight, model.inner.inner.fc.weight)
    with pytest.raises(ModelError, match="could not be built: RuntimeError: Unknown model"):
        load_model("timm:nonet")


def test_torchvision_spec_uses_no_weights_and_imagenet_normalisation(monkeypatch):
    calls = []
    tv = types.ModuleType("torchvision")
    tvm = types.ModuleType("torchvision.models")

    def get_model(name, weights="DEFAULT"):
        calls.append((name, weights))
        return FakeNet()

    tvm.get_model = get_model
    tv.models = tvm
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tvm)
    with pytest.warns(UserWarning, match="torchvision:resnet18 has RANDOM weights"):
        model = load_model("torchvision:resnet18")
    assert calls == [("resnet18", None)] and model.mean == (0.485, 0.456, 0.406)
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 5)


@pytest.mark.parametrize("package", ["timm", "torchvision", "transformers"])
def test_missing_package_is_one_line(monkeypatch, tmp_path, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    spec = f"hf:{tmp_path}" if package == "transformers" else f"{package}:somenet@{tmp_path / 'w.pt'}"
    with pytest.raises(ModelError, match=f"needs {package}, which is not installed"):
        load_model(spec)


def test_hf_spec_with_fake_transformers(monkeypatch, tmp_path):
    seen = {}

    class Config:
        def __init__(self) -> None:
            self.id2label = {"0": "cat", "1": "dog", "2": "bird", "3": "fish", "4": "frog"}

    class Output:
        def __init__(self, logits):
            self.logits = logits

    class HFNet(FakeNet):
        config = Config()

        def forward(self, pixel_values):
            return Output(super().forward(pixel_values))

    class Auto:
        @staticmethod
        def from_pretrained(path, **kw):
            seen.update(kw, path=path)
            return HFNet()

    tf = types.ModuleType("transformers")
    tf.AutoModelForImageClassification = Auto
    monkeypatch.setitem(sys.modules, "transformers", tf)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                                   "image_std": [0.5, 0.5, 0.5]}))
    model = load_model(f"hf:{tmp_path}")
    assert seen["local_files_only"] is True and seen["use_safetensors"] is True and seen["path"] == str(tmp_path)
    assert model.class_names == ["cat", "dog", "bird", "fish", "frog"] and model.mean == (0.5, 0.5, 0.5)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model(x), model.inner.inner.forward((x - 0.5) / 0.5).logits, atol=1e-6)
    with pytest.raises(ModelError, match="is not a directory"):
        load_model(f"hf:{tmp_path / 'absent'}")


# -- torchscript --------------------------------------------------------------------------------------------
def scripted(tmp_path):
    cls, _, args = TINY["tiny-vgg"]
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.jit.script(cls(**args).eval()).save(str(path))
    return load_model(f"torchscript:{path}"), path


def test_ssp_layer_refuses_torchscript(tmp_path):
    model, _ = scripted(tmp_path)
    with pytest.raises(AdvshieldError, match="SSP --layer needs hooks, which TorchScript models do not support"):
        SSP(model, layer="inner.features.relu1_1")
    from advshield.train.purifier import load_feature_model

    with pytest.raises(AdvshieldError, match="py:FILE.py:NAME@WEIGHTS instead"):
        load_feature_model(f"torchscript:{tmp_path / 'm.pt'}", "features.relu1_1")


def test_pgd_runs_on_a_torchscript_model(tmp_path):
    model, _ = scripted(tmp_path)
    x = torch.rand(4, 1, 28, 28)
    y = model(x).argmax(1)
    model.train()
    adv = PGD(model, eps=0.1, alpha=0.05, steps=3, seed=0)(x, y)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 0.1 + 1e-6
    assert not torch.equal(adv, x)
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored


# -- cards ----------------------------------------------------------------------------------------------------
def tiny_card(**over):
    _, arch, args = TINY["tiny-lenet"]
    card = {"name": "t", "kind": "classifier", "dataset": "x", "architecture": arch, "arch_args": dict(args),
            "metrics": {}, "sha256": "0"}
    card.update(over)
    return card


@pytest.mark.parametrize("over,match", [
    ({"architecture": "no-such-arch"}, "unknown model architecture 'no-such-arch'"),
    ({"architecture": "../evil"}, "is not a name"),
    ({"arch_args": {"channels": [4, 8], "hidden": [100000000, 128]}}, r"arch_args.hidden\[0\] = 100000000 is too"),
    ({"arch_args": {"channels": list(range(65))}}, "has 65 items"),
    ({"arch_args": {"dropout": float("nan")}}, "must be finite"),
    ({"arch_args": [1, 2]}, "arch_args must be an object"),
    ({"arch_args": {"channels": [[4], [8]]}}, r"channels\[0\] must be a number"),
    ({"kind": 3}, "kind must be a string"),
    ({"arch_args": {"image_size": 60000}}, "would have .* parameters"),
])
def test_bad_cards_are_refused_before_building(over, match):
    with pytest.raises(ModelError, match=match) as e:
        build_from_card(tiny_card(**over))
    assert "\n" not in str(e.value)


def test_card_with_bare_nan_is_refused(tmp_path, tiny_zoo):
    card_file = tiny_zoo / "tiny-lenet.json"
    card_file.write_text(card_file.read_text().replace('"clean_accuracy": 0.1', '"clean_accuracy": NaN'))
    with pytest.raises(ModelError, match="NaN is not valid JSON"):
        read_card(card_file)
    with pytest.raises(ModelError, match="not readable JSON"):
        load_model("zoo:tiny-lenet")


def test_save_checkpoint_refuses_an_unloadable_architecture(tmp_path):
    cls, _, args = TINY["tiny-lenet"]
    model = cls(**args)
    target = tmp_path / "out" / "m.safetensors"
    card = tiny_card(arch_args={**args, "hidden": [16, 32]})
    with pytest.raises(ModelError, match=r"'classifier.fc2.weight' has shape \(16, 16\), the model's is "
                                         r"\(32, 16\)"):
        save_checkpoint(model, target, card)
    with pytest.raises(ModelError, match="unknown model architecture"):
        save_checkpoint(model, target, tiny_card(architecture="nope"))
    with pytest.raises(ModelError, match="not strict JSON"):
        save_checkpoint(model, target, tiny_card(metrics={"loss": float("nan")}))
    assert not target.parent.exists() or not any(target.parent.iterdir())  # nothing written
    save_checkpoint(model, target, tiny_card())
    loaded, _ = load_checkpoint(target)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


# -- zoo names --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/abs/path", "../tiny-lenet", "a/b", "tiny..lenet", "", ".hidden"])
def test_zoo_names_are_not_paths(tiny_zoo, name):
    with pytest.raises(ModelError, match="is not a zoo name"):
        load_model(f"zoo:{name}")


def test_zoo_name_cannot_reach_a_checkpoint_outside_the_zoo(tiny_zoo, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.safetensors").write_bytes((tiny_zoo / "tiny-lenet.safetensors").read_bytes())
    with pytest.raises(ModelError):
        zoo_path(str(outside / "x"))
    assert zoo_path("tiny-lenet") == tiny_zoo / "tiny-lenet.safetensors"


def test_card_base_is_a_zoo_name(tiny_zoo):
    assert zoo_base_spec({"name": "f", "base": "tiny-vgg"}) == "zoo:tiny-vgg"
    assert resolve_base({"name": "f", "base": "tiny-vgg"}).card["name"] == "tiny-vgg"
    for bad in ("/etc/passwd", "../tiny-vgg", 3):
        with pytest.raises(ModelError, match="base .* is not a zoo name"):
            zoo_base_spec({"name": "f", "base": bad})
    with pytest.raises(ModelError, match="names no base"):
        zoo_base_spec({"name": "f"})


def test_zoo_models_are_not_wrapped(tiny_zoo):
    model = load_model("zoo:tiny-vgg")
    assert not isinstance(model, LogitsOutput) and model.spec == "zoo:tiny-vgg" and model.card["name"] == "tiny-vgg"


def test_load_models_names_and_refuses_twice():
    from advshield.models import load_models, short_name

    assert short_name("zoo:fmnist-vgg") == "fmnist-vgg" and short_name("a/b.safetensors") == "a/b.safetensors"
    models = load_models(["zoo:fmnist-lenet", "zoo:fmnist-vgg"])
    assert list(models) == ["fmnist-lenet", "fmnist-vgg"] and all(not m.training for m in models.values())
    with pytest.raises(ModelError, match="given twice"):
        load_models(["zoo:fmnist-lenet", "zoo:fmnist-lenet"])


def test_hold_one_out_ensembles_average_the_others():
    from advshield.attacks import hold_one_out

    a, b, c = (nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(3))
    ens = hold_one_out({"a": a, "b": b, "c": c})
    assert list(ens) == ["b+c", "a+c", "a+b"]
    x = torch.rand(2, 1, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(ens["a+b"](x), (a(x) + b(x)) / 2)
    assert hold_one_out({"a": a}) == {}
