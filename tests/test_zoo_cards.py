"""Every shipped zoo card tells the truth: strict JSON, an input spec, the sha256 of its weights and, for every
classifier, a ``clean_accuracy`` that is the top-1 on the FULL Fashion-MNIST test set (recomputed here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

import advshield
from advshield.data import load_dataset
from advshield.models import load_model
from advshield.utils import sha256_file

ZOO = Path(advshield.__file__).resolve().parent / "zoo"  # the shipped zoo (package data), not $ADVSHIELD_ZOO
CARD_FILES = sorted(ZOO.glob("*.json"))
FULL_TEST = 10_000  # images in the Fashion-MNIST test set


def _no_constants(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_card(path: Path) -> dict:
    """The card parsed as strict JSON (NaN/Infinity rejected)."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constants)


CARDS = {p.stem: strict_card(p) for p in CARD_FILES}
CLASSIFIERS = sorted(n for n, c in CARDS.items() if c["kind"] == "classifier")


def test_the_zoo_ships_in_the_package():
    assert ZOO.is_dir(), f"no zoo folder in the package: {ZOO}"
    assert {"fmnist-lenet", "fmnist-resnet", "fmnist-vgg", "nrp-fmnist", "ae-fmnist", "vae-fmnist"} <= set(CARDS)
    weights = {p.stem for p in ZOO.glob("*.safetensors")}
    assert weights == set(CARDS), "every card needs its weights and every weights file its card"


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_is_strict_json_with_input_channels(path):
    card = strict_card(path)
    assert card["name"] == path.stem
    assert card["weights"] == f"{path.stem}.safetensors"
    channels = card["input"]["channels"]
    assert isinstance(channels, int) and channels in (1, 3)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_card_sha256_matches_weights(name):
    assert sha256_file(ZOO / CARDS[name]["weights"]) == CARDS[name]["sha256"]


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if "base" in CARDS[n]])
def test_base_accuracy_on_a_derived_card_is_the_base_card(name):
    card = CARDS[name]
    base = CARDS[card["base"]]
    assert card["base_sha256"] == base["sha256"]
    if "base_clean_accuracy" in card["metrics"]:  # then measured on the same full test set
        assert card["metrics"]["base_clean_accuracy"] == base["metrics"]["clean_accuracy"]


@pytest.fixture(scope="module")
def fmnist_test():
    return load_dataset("fashion-mnist", "test")


@pytest.fixture
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # how the cards were measured; also kind to a busy machine
    yield
    torch.set_num_threads(n)


@needs_fmnist
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_card_accuracy_is_on_the_full_test_set(name, fmnist_test, single_thread):
    card = CARDS[name]
    assert card["dataset"] == "fashion-mnist"
    assert len(fmnist_test) == FULL_TEST
    assert card["metrics"]["test_samples"] == FULL_TEST
    model = load_model(str(ZOO / card["weights"])).eval()  # the shipped file (loading checks its sha256)
    correct = 0
    with torch.no_grad():
        for x, y in fmnist_test.batches(500):
            correct += int((model(x).argmax(1) == y).sum())
    assert f"{correct / FULL_TEST:.4f}" == f"{card['metrics']['clean_accuracy']:.4f}"
