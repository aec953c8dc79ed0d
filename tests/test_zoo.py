"""The shipped zoo: offline loading, honest cards (the card's accuracy is the measured one), targets met."""
import json

import pytest
import torch
from conftest import needs_fmnist

from advshield.cli.main import main
from advshield.data import load_dataset
from advshield.models import load_model
from advshield.models.zoo import zoo_cards
from advshield.utils import sha256_file

TARGETS = {"fmnist-vgg": 0.92, "fmnist-resnet": 0.92, "fmnist-lenet": 0.90}


def shipped():
    return {c["name"]: c for c in zoo_cards() if c["name"] in TARGETS}


def test_the_three_classifiers_are_listed(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    cards = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(TARGETS) <= set(cards)
    for name in TARGETS:
        c = cards[name]
        assert c["kind"] == "classifier" and c["dataset"] == "fashion-mnist"
        assert {"clean_accuracy", "test_samples"} <= set(c["metrics"]) and c["metrics"]["test_samples"] == 10000
        assert c["command"].startswith("advshield train classifier")
    families = {cards[n]["architecture"] for n in TARGETS}
    assert families == {"vgg", "resnet", "lenet"}  # different families, so transfer is real


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_card_hash_matches_weights(name):
    card = shipped()[name]
    assert sha256_file(card["path"]) == card["sha256"]


@needs_fmnist
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_card_accuracy_is_measured_and_meets_target(name):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(f"zoo:{name}")
    test = load_dataset("fashion-mnist", "test")
    correct = 0
    with torch.no_grad():
        for x, y in test.batches(1000):
            correct += int((model(x).argmax(1) == y).sum())
    acc = correct / len(test)
    card = shipped()[name]
    assert abs(acc - card["metrics"]["clean_accuracy"]) <= 3e-4  # ≤ 3 images: thread-count rounding only
    assert acc >= TARGETS[name]
