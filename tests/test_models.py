import json

import pytest
import torch
from conftest import TINY

import advshield
from advshield.errors import ModelError
from advshield.models import VGG16Features, load_checkpoint, load_model, save_checkpoint, vgg16_features
from advshield.models.vgg16 import VGG16_LAYERS
from advshield.registry import MODELS


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_registered_architectures_shapes(name, channels, size):
    if name.endswith("-features"):  # feature extractors: RGB in, feature map out
        out = MODELS.get(name)()(torch.rand(1, 3, size, size))
        assert out.ndim == 4 and out.shape[0] == 1
        return
    args = {"in_channels": channels}
    if name == "fru":  # a wrapper: FRUs on a VGG base
        args = {"base_arch": "vgg", "base_args": {"in_channels": channels}}
    if name == "lenet":
        args["image_size"] = size
    model = MODELS.get(name)(**args).eval()
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    layer = dict(model.named_modules())[model.default_feature_layer]
    assert isinstance(layer, torch.nn.Module)


def test_normalisation_is_inside_the_model():
    m = MODELS.get("lenet")().eval()
    assert m.normalize.mean.item() == pytest.approx(0.2860) and m.normalize.std.item() == pytest.approx(0.3530)
    assert not any("normalize" in n for n, _ in m.named_parameters())  # buffers, not trained


TORCHVISION_VGG16_FEATURE_KEYS = [f"{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
                                  for p in ("weight", "bias")]


def test_vgg16_features_match_torchvision_names_and_shapes():
    feats = vgg16_features()
    assert list(feats.state_dict()) == TORCHVISION_VGG16_FEATURE_KEYS
    assert len(feats) == 31 and isinstance(feats[30], torch.nn.MaxPool2d)
    assert feats[28].weight.shape == (512, 512, 3, 3) and feats[0].weight.shape == (64, 3, 3, 3)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg16_loads_torchvision_style_weights_from_file(tmp_path, suffix):
    torch.manual_seed(0)
    full = {f"features.{k}": v.clone().normal_() for k, v in vgg16_features().state_dict().items()}
    full["classifier.0.weight"] = torch.zeros(4, 4)  # the classifier part of the official file is ignored
    path = tmp_path / f"vgg16{suffix}"
    if suffix == ".pth":
        torch.save(full, path)
    else:
        from safetensors.torch import save_file

        save_file(full, str(path))
    m = VGG16Features("conv3_3").load_torchvision_weights(path)
    assert torch.equal(m.features[14].weight, full["features.14.weight"])
    out = m(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 256, 16, 16) and len(m.features) == VGG16_LAYERS["conv3_3"] + 1


def test_vgg16_refuses_wrong_files(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelError):
        VGG16Features().load_torchvision_weights(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="cannot read"):
        VGG16Features().load_torchvision_weights(garbage)
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "executed"
    torch.save({"features.0.weight": Evil(str(marker))}, evil)
    with pytest.raises(ModelError, match="cannot read"):
        VGG16Features().load_torchvision_weights(evil)
    assert not marker.exists()  # weights_only=True: nothing was unpickled


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_round_trip_and_card(tmp_path, tiny_zoo):
    m = load_model("zoo:tiny-vgg")
    assert not m.training and m.card["kind"] == "classifier"
    x = torch.rand(3, 1, 28, 28)
    model, card = load_checkpoint(tiny_zoo / "tiny-vgg.safetensors")
    # zoo models run channels-last: equal to float rounding
    assert torch.allclose(model(x), m(x), atol=1e-5) and card["sha256"] and card["weights"] == "tiny-vgg.safetensors"
    assert load_model(str(tiny_zoo / "tiny-vgg.safetensors"))(x).shape == (3, 10)


def test_unknown_zoo_name_lists_known(tiny_zoo):
    with pytest.raises(ModelError, match="unknown zoo model 'nope'.*tiny-lenet"):
        load_model("zoo:nope")


def test_tampered_weights_fail_the_hash_check(tiny_zoo):
    p = tiny_zoo / "tiny-lenet.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its card"):
        load_model("zoo:tiny-lenet")


def test_card_architecture_mismatch_is_reported(tiny_zoo):
    card_file = tiny_zoo / "tiny-lenet.json"
    card = json.loads(card_file.read_text())
    card["arch_args"]["channels"] = [5, 8]
    card_file.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match its card's architecture"):
        load_model("zoo:tiny-lenet")
    card["architecture"] = "no-such-arch"
    card_file.write_text(json.dumps(card))
    with pytest.raises(advshield.AdvshieldError, match="unknown model architecture"):
        load_model("zoo:tiny-lenet")


def test_bad_specs(tmp_path):
    with pytest.raises(ModelError, match="cannot load model"):
        load_model("foo.bin")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"torchscript:{tmp_path / 'missing.pt'}")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="needs torchvision"):
            load_model("torchvision:resnet18")


def test_torchscript_spec(tmp_path):
    cls, _, args = TINY["tiny-lenet"]
    m = cls(**args).eval()
    path = tmp_path / "m.pt"
    torch.jit.script(m).save(str(path))
    loaded = load_model(f"torchscript:{path}")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(loaded(x), m(x), atol=1e-6)


def test_kind_is_checked(tmp_path):
    cls, arch, args = TINY["tiny-lenet"]
    save_checkpoint(cls(**args), tmp_path / "p.safetensors", {"name": "p", "kind": "purifier", "dataset": "x",
                                                               "architecture": arch, "arch_args": args, "metrics": {}})
    with pytest.raises(ModelError, match="is a purifier"):
        load_model(str(tmp_path / "p.safetensors"))
