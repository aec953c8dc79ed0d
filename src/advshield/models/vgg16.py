"""VGG16 convolutional features with torchvision's layer indices, so the official ImageNet weights load.

``vgg16_features()[i]`` is the same layer as ``torchvision.models.vgg16().features[i]`` (parameter names
``0.weight``, ``0.bias``, ``2.weight``… ``28.bias``). SSP (Naseer et al.) uses ``features[:16]``: through the
ReLU after conv3_3 (256 channels at H/4).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..registry import MODELS
from .layers import Normalize

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# index (into features) of the ReLU after each named conv
VGG16_LAYERS = {"conv1_1": 1, "conv1_2": 3, "conv2_1": 6, "conv2_2": 8, "conv3_1": 11, "conv3_2": 13,
                "conv3_3": 15, "conv4_1": 18, "conv4_2": 20, "conv4_3": 22, "conv5_1": 25, "conv5_2": 27,
                "conv5_3": 29}


def vgg16_features(in_channels: int = 3) -> nn.Sequential:
    """The 31-layer ``features`` stack of VGG16 (no BN), indices as in torchvision."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(*layers)


@MODELS.register("vgg16-features", "VGG16 conv features (torchvision names), cut after a named layer")
class VGG16Features(nn.Module):
    """[0,1] RGB images N×3×H×W → feature map after ``layer`` (default conv3_3: N×256×H/4×W/4).

    ImageNet normalisation is applied inside. ``features`` keeps all torchvision indices up to the cut."""

    def __init__(self, layer: str = "conv3_3") -> None:
        super().__init__()
        if layer not in VGG16_LAYERS:
            raise ModelError(f"unknown VGG16 layer {layer!r} (known: {', '.join(VGG16_LAYERS)})")
        self.layer = layer
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.features = vgg16_features()[: VGG16_LAYERS[layer] + 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))

    def load_torchvision_weights(self, path: str | os.PathLike) -> "VGG16Features":
        """Load weights from a torchvision VGG16 checkpoint (``.pth`` state dict, read with
        ``weights_only=True``, or ``.safetensors``); keys ``features.N.*`` or ``N.*``."""
        state = read_state_dict(path)
        feats = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
        wanted = self.features.state_dict()
        missing = [k for k in wanted if k not in feats]
        if missing:
            raise ModelError(f"{path} lacks VGG16 feature weights {', '.join(missing[:3])}")
        for k, v in wanted.items():
            if feats[k].shape != v.shape:
                raise ModelError(f"{path}: {k} has shape {tuple(feats[k].shape)}, expected {tuple(v.shape)}")
        self.features.load_state_dict({k: feats[k] for k in wanted})
        return self


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` state dict (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse is the user's file being wrong
        raise ModelError(f"cannot read weights from {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state
