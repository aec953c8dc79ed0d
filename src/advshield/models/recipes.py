"""Seeded training recipes of the shipped zoo classifiers. ``advshield train classifier --recipe NAME`` runs one."""
from __future__ import annotations

from typing import Any

CLASSIFIER_RECIPES: dict[str, dict[str, Any]] = {
    "fmnist-vgg": dict(arch="vgg", arch_args={"widths": [32, 64, 128]}, epochs=10, lr=0.1),
    "fmnist-resnet": dict(arch="resnet", arch_args={"widths": [16, 32, 64], "blocks": 2}, epochs=10, lr=0.1),
    "fmnist-lenet": dict(arch="lenet", arch_args={"channels": [32, 64], "hidden": [256, 128]}, epochs=12,
                         lr=0.05),
    # a classifier no purifier was trained with (NRP: fmnist-vgg features; AE/VAE: fmnist-lenet), for comparisons
    "fmnist-smallcnn": dict(arch="lenet", arch_args={"channels": [16, 32], "hidden": [128, 64]}, epochs=8,
                            lr=0.05),
    # adversarial-training baselines (PGD-AT at L∞ 0.1 = 25.5/255, 3 steps of eps/2 from a random start); epochs
    # chosen to keep each run under an hour on 2 CPU cores (each card states its training time)
    "fmnist-lenet-at": dict(arch="lenet", arch_args={"channels": [32, 64], "hidden": [256, 128]}, epochs=8,
                            lr=0.05, adversarial={"method": "pgd", "eps": 0.1, "steps": 3, "alpha": 0.05}),
    "fmnist-vgg-at": dict(arch="vgg", arch_args={"widths": [32, 64, 128]}, epochs=6, lr=0.1,
                          adversarial={"method": "pgd", "eps": 0.1, "steps": 3, "alpha": 0.05}),
}
