"""The registered ``diffpure`` defense (DiffPure with the shipped zoo:ddpm-fmnist): card defaults, seeded
determinism, spec settings and their errors, channel rules, any image size, audit's automatic EOT and repeated
draws, and the ``purify`` / ``audit`` commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, pngs

import advshield
from advshield.cli.main import main
from advshield.defenses import DiffPureDefense, build_defense, defend
from advshield.defenses.diffusion import DiffPure, Schedule, UNet
from advshield.errors import AdvshieldError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cls, _, args = TINY["tiny-lenet"]
    return cls(**args).eval()


def test_defend_with_diffpure_uses_the_shipped_denoiser_and_its_card_settings():
    d = build_defense("diffpure", seed=0)
    assert isinstance(d, DiffPureDefense) and d.randomized and d.differentiable
    card = d.card
    assert card["name"] == "ddpm-fmnist" and card["kind"] == "diffusion"
    chosen = card.get("diffpure", {})
    assert (d.t_star, d.steps, d.sampler) == (chosen.get("t_star", 100), chosen.get("steps", 10),
                                              chosen.get("sampler", "ddim"))
    assert d.inner.sampler == d.sampler and build_defense("diffpure:sampler=ddim", seed=0).inner.sampler == "ddim"
    model = tiny_model()
    x = torch.rand(3, 1, 28, 28)
    a, b = defend(model, "diffpure", seed=0), defend(model, "diffpure", seed=0)
    with torch.no_grad():
        first = a(x)
        assert torch.equal(first, b(x))  # same seed: same noise sequence
        assert not torch.equal(a(x), first)  # randomized: the next call draws new noise
    assert torch.equal(d.substitute(x), x)  # BPDA substitute: the identity
    out = d(x)
    assert out.shape == x.shape and 0 <= float(out.min()) <= float(out.max()) <= 1


def test_diffpure_spec_settings_sizes_channels_and_errors():
    d = build_defense("diffpure:t_star=40,steps=4,sampler=ddpm", seed=1)
    assert (d.t_star, d.steps, d.sampler) == (40, 4, "ddpm")
    z = build_defense("zoo:ddpm-fmnist:t_star=30,steps=3")  # a diffusion checkpoint names DiffPure with it
    assert isinstance(z, DiffPureDefense) and (z.t_star, z.steps) == (30, 3) and z.name == "zoo:ddpm-fmnist"
    odd = torch.rand(2, 1, 30, 31)  # sides that are no multiple of the U-Net's 4: padded and cropped back
    assert d(odd).shape == odd.shape
    rgb = torch.rand(2, 3, 32, 32)
    with pytest.raises(AdvshieldError, match="takes 1-channel images, the input has 3 channels"):
        d(rgb)
    assert build_defense("diffpure:steps=2", adapt_channels=True)(rgb).shape == rgb.shape
    for bad, needle in (("diffpure:t_star=0", "t_star"), ("diffpure:t_star=20,steps=30", "steps"),
                        ("diffpure:sampler=euler", "sampler"), ("diffpure:t_star=1.5", "t_star")):
        with pytest.raises(AdvshieldError, match=needle) as e:
            build_defense(bad)
        assert "\n" not in str(e.value)


def test_audit_applies_full_gradient_eot_and_repeated_draws_to_diffpure():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base=8, mults=(1, 2), attention=False)
    pure = DiffPure(net.eval(), Schedule("linear", 100), t_star=10, steps=2, seed=0)
    model = tiny_model()
    x = torch.rand(12, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = advshield.audit(model, pure, x, y, 0.1, version="quick", steps=2, n_queries=5, eot=2, draws=3)
    assert res.meta["randomized"] and res.meta["differentiable"]
    assert res.meta["eot"] == 2 and res.meta["draws"] == 3
    assert any(k.startswith("full gradient") and "EOT 2" in k for k in res.per_attack)
    assert any(k.startswith("BPDA") for k in res.per_attack)
    assert res.robust_accuracy <= res.robust_accuracy_majority + 1e-9


def test_purify_and_audit_commands_take_diffpure(gray_tree, tmp_path, fake_fmnist):
    def run(name: str, seed: str) -> dict:
        assert main(["purify", "--dir", str(gray_tree), "--out-dir", str(tmp_path / name), "--purifier",
                     "diffpure:steps=2", "--seed", seed, "--batch-size", "4"]) == 0
        return pngs(tmp_path / name)

    a, b, c = run("a", "3"), run("b", "3"), run("c", "4")
    same = lambda u, v: all(np.array_equal(u[r][1], v[r][1]) for r in u)  # noqa: E731
    assert list(a) == list(pngs(gray_tree)) and same(a, b) and not same(a, c)
    assert all(m == "L" for m, _ in a.values())
    out = tmp_path / "audit"
    assert main(["audit", "--model", "zoo:fmnist-lenet", "--defense", "diffpure:steps=1", "--data", "fashion-mnist",
                 "--data-root", str(fake_fmnist), "--n", "6", "--version", "quick", "--steps", "2",
                 "--n-queries", "5", "--eot", "2", "--draws", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["meta"]["randomized"] and doc["meta"]["draws"] == 2 and "diffpure" in doc["meta"]["defense"]
    assert not (out / ".advshield-audit-blocks").exists()  # resume blocks go once the report is written
