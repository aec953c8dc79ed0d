"""Three classifier families for 28×28 (or any size) images: VGG-style, residual and LeNet-5-style.

All take float images in [0,1], N×C×H×W, normalise inside and return logits N×num_classes.
Layers have stable names (``features.conv3_2``, ``layer2.1.conv1``...) so feature attacks can pick them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..registry import MODELS
from .layers import Normalize

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


def _norm(in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Normalize:
    mean = list(mean) if mean is not None else [0.5] * in_channels
    std = list(std) if std is not None else [0.5] * in_channels
    if len(mean) == 1 and in_channels > 1:
        mean, std = mean * in_channels, std * in_channels
    return Normalize(mean, std)


@MODELS.register("vgg", "VGG-style plain conv stacks (conv-BN-ReLU ×2 per block, max-pool)")
class VGGNet(nn.Module):
    """Blocks of ``convs_per_block`` 3×3 conv-BN-ReLU then 2×2 max-pool; global average pool; linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 convs_per_block: int = 2, dropout: float = 0.3, mean: Sequence[float] | None = FMNIST_MEAN,
                 std: Sequence[float] | None = FMNIST_STD) -> None:
        super().__init__()
        self.normalize = _norm(in_channels, mean, std)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c = in_channels
        for b, w in enumerate(widths, start=1):
            for i in range(1, convs_per_block + 1):
                layers[f"conv{b}_{i}"] = nn.Conv2d(c, w, 3, padding=1, bias=False)
                layers[f"bn{b}_{i}"] = nn.BatchNorm2d(w)
                layers[f"relu{b}_{i}"] = nn.ReLU(inplace=True)
                c = w
            layers[f"pool{b}"] = nn.MaxPool2d(2, ceil_mode=True)
        self.features = nn.Sequential(layers)
        # the conv3_3-equivalent of VGG16 for SSP: the last ReLU of the third block (or of the last block)
        self.default_feature_layer = f"features.relu{min(3, len(widths))}_{convs_per_block}"
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(self.normalize(x))))


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus identity (or 1×1 projection) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@MODELS.register("resnet", "residual network (ResNet basic blocks, 3 stages)")
class ResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` basic blocks (stride 1, 2, 2), global average pool, linear head."""

    default_feature_layer = "layer2"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 2, mean: Sequence[float] | None = FMNIST_MEAN,
                 std: Sequence[float] | None = FMNIST_STD) -> None:
        super().__init__()
        self.normalize = _norm(in_channels, mean, std)
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                              bn=nn.BatchNorm2d(widths[0]), relu=nn.ReLU(inplace=True)))
        c = widths[0]
        for s, w in enumerate(widths, start=1):
            stride = 1 if s == 1 else 2
            stage = [BasicBlock(c, w, stride)] + [BasicBlock(w, w) for _ in range(blocks - 1)]
            self.add_module(f"layer{s}", nn.Sequential(*stage))
            c = w
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("lenet", "LeNet-5-style: two 5×5 conv + max-pool stages, two hidden linear layers")
class LeNet(nn.Module):
    """conv5×5(c1)-ReLU-pool, conv5×5(c2)-ReLU-pool, linear(h1)-ReLU, linear(h2)-ReLU, linear(classes).

    Classic LeNet-5 is c1=6, c2=16, h1=120, h2=84 (here ReLU and max-pool); defaults are wider."""

    default_feature_layer = "features.relu2"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (32, 64),
                 hidden: Sequence[int] = (256, 128), image_size: int = 28, dropout: float = 0.3,
                 mean: Sequence[float] | None = FMNIST_MEAN, std: Sequence[float] | None = FMNIST_STD) -> None:
        super().__init__()
        self.normalize = _norm(in_channels, mean, std)
        c1, c2 = channels
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_channels, c1, 5, padding=2), relu1=nn.ReLU(inplace=True), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 5), relu2=nn.ReLU(inplace=True), pool2=nn.MaxPool2d(2)))
        side = ((image_size // 2) - 4) // 2
        h1, h2 = hidden
        self.classifier = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(), fc1=nn.Linear(c2 * side * side, h1), relu3=nn.ReLU(inplace=True),
            drop=nn.Dropout(dropout), fc2=nn.Linear(h1, h2), relu4=nn.ReLU(inplace=True),
            fc3=nn.Linear(h2, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
