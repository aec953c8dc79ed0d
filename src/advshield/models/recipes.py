"""Seeded training recipes of the shipped zoo classifiers. ``advshield train classifier --recipe NAME`` runs one."""
from __future__ import annotations

from typing import Any

CLASSIFIER_RECIPES: dict[str, dict[str, Any]] = {
    "fmnist-vgg": dict(arch="vgg", arch_args={"widths": [32, 64, 128]}, epochs=10, lr=0.1),
    "fmnist-resnet": dict(arch="resnet", arch_args={"widths": [16, 32, 64], "blocks": 2}, epochs=10, lr=0.1),
    "fmnist-lenet": dict(arch="lenet", arch_args={"channels": [32, 64], "hidden": [256, 128]}, epochs=12,
                         lr=0.05),
}
