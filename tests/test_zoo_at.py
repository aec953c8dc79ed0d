"""The shipped adversarially trained baselines load offline, reproduce the PGD-10 accuracy their cards state (seeded,
as the trainer measured it) and keep the recipe's settings on the card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

import advshield
from advshield.data import load_dataset
from advshield.models.recipes import CLASSIFIER_RECIPES
from advshield.train.classifier import ClassifierConfig, pgd_accuracy

ZOO = Path(advshield.__file__).resolve().parent / "zoo"
AT = sorted(n for n, r in CLASSIFIER_RECIPES.items() if r.get("adversarial"))


@pytest.mark.parametrize("name", AT)
def test_at_card_states_its_recipe(name):
    card = json.loads((ZOO / f"{name}.json").read_text())
    recipe = CLASSIFIER_RECIPES[name]
    assert card["training"]["adversarial"] == recipe["adversarial"] and card["training"]["epochs"] == recipe["epochs"]
    assert card["command"].startswith(f"advshield train classifier --recipe {name}")
    assert card["metrics"]["pgd10_eps"] == recipe["adversarial"]["eps"]


@needs_fmnist
@pytest.mark.parametrize("name", AT)
def test_at_model_reproduces_its_pgd10_accuracy(name, one_thread):
    card = json.loads((ZOO / f"{name}.json").read_text())
    n = card["metrics"]["pgd10_images"]
    model = advshield.load_model(f"zoo:{name}")
    cfg = ClassifierConfig(name=name, **CLASSIFIER_RECIPES[name])
    got = pgd_accuracy(model, load_dataset("fashion-mnist", "test").subset(n), cfg, torch.device("cpu"))
    assert abs(got - card["metrics"]["pgd10_accuracy"]) <= 3 / n  # ≤ 3 images: thread-count rounding only
    assert got >= 0.6  # far above an undefended model (≈ 0 % at this budget)
