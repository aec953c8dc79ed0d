"""Classifier families, VGG16 features, checkpoints and the zoo. ``load_model(spec)`` is the entry point."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import ModelError
from .checkpoint import card_path, load_checkpoint, read_card, save_checkpoint
from .fmnist import LeNet, ResNet, VGGNet
from .layers import Normalize
from .vgg16 import IMAGENET_MEAN, IMAGENET_STD, VGG16Features, vgg16_features
from .zoo import zoo_cards, zoo_path

CLASSIFIER_KINDS = ("classifier",)


def load_model(spec: str, kinds: tuple[str, ...] = CLASSIFIER_KINDS) -> nn.Module:
    """Load a classifier (eval mode) taking [0,1] N×C×H×W images and returning logits.

    ``spec``: ``zoo:NAME``; a ``.safetensors`` path with its JSON card beside it; ``torchscript:PATH``;
    ``torchvision:NAME`` (ImageNet weights from torchvision's cache, normalisation added; needs torchvision)."""
    spec = str(spec)
    if spec.startswith("zoo:"):
        return _load_card_checked(zoo_path(spec[4:]), kinds)
    if spec.startswith("torchscript:"):
        return _load_torchscript(Path(spec[len("torchscript:"):]))
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec[len("torchvision:"):])
    path = Path(spec)
    if path.suffix == ".safetensors":
        return _load_card_checked(path, kinds)
    if path.suffix == ".json" and path.with_suffix(".safetensors").exists():
        return _load_card_checked(path.with_suffix(".safetensors"), kinds)
    raise ModelError(f"cannot load model {spec!r}: use zoo:NAME, a .safetensors file with its card, "
                     "torchscript:PATH or torchvision:NAME")


def _load_card_checked(path: Path, kinds: tuple[str, ...]) -> nn.Module:
    if path.is_file():
        card = read_card(card_path(path))
        if card["kind"] not in kinds:
            raise ModelError(f"{card['name']!r} is a {card['kind']}, not a {' or '.join(kinds)}")
    return load_checkpoint(path)[0]


def _load_torchscript(path: Path) -> nn.Module:
    import torch

    if not path.is_file():
        raise ModelError(f"TorchScript file {path} does not exist")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report the user's bad file in one line
        raise ModelError(f"cannot load TorchScript {path}: {str(e).strip().splitlines()[0]}") from None
    return model.eval()


def _load_torchvision(name: str) -> nn.Module:
    try:
        import torchvision  # noqa: F401
        from torchvision import models as tvm
    except ImportError:
        raise ModelError("torchvision:NAME needs torchvision, which is not installed") from None
    try:
        net = tvm.get_model(name, weights="DEFAULT")
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"torchvision model {name!r} could not be loaded: {str(e).strip().splitlines()[0]}") from None
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), net).eval()


__all__ = ["LeNet", "Normalize", "ResNet", "VGG16Features", "VGGNet", "load_checkpoint", "load_model", "read_card",
           "save_checkpoint", "vgg16_features", "zoo_cards", "zoo_path"]
