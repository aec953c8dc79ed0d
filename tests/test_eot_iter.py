"""Issue 15: every gradient attack takes ``eot_iter`` in its constructor (stored as ``eot``): each step's gradient is
averaged over that many forward passes of a randomized model. Tiny linear models on 1×8×8 images."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import advshield
from advshield.attacks import GradientAttack
from advshield.attacks.bypass import BypassPGD, bypass_attack
from advshield.errors import AdvshieldError

K, HW = 10, 8
GRADIENT_FREE = {"Square", "SquareL2"}  # query attacks: no gradient to average
FORWARDING = {"AutoAttack"}  # takes eot_iter and hands it to its APGD components (version "rand")


def eot_attacks() -> list[str]:
    """Registered attacks that must take ``eot_iter``: all but the gradient-free and the forwarding ones."""
    names = [n for n in advshield.ATTACKS.names()
             if advshield.ATTACKS.get(n).__name__ not in GRADIENT_FREE | FORWARDING]
    assert len(names) >= 15, names  # the registry is populated (a broken import would empty this test)
    return names


def params(name: str) -> inspect.Signature:
    return inspect.signature(advshield.ATTACKS.get(name)).parameters


class Counting(nn.Module):
    """A randomized toy classifier N×1×8×8 → N×K logits: linear logits plus a per-call random draw from its own
    generator (so the attacks' own randomness is untouched). ``grad_calls`` counts the forward passes whose input
    requires grad (the passes a gradient is taken through).

    ``mode="shift"``: each sample's logits are shifted by one random number for all classes, which no
    classification loss (CE, margin, DLR) sees, so an attack follows the same path whatever its ``eot``.
    ``mode="scale"``: the input is multiplied by random noise, so each draw has its own gradient."""

    def __init__(self, mode: str = "shift", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(HW * HW, K)
        self.mode = mode
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.grad_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            self.grad_calls += 1
        if self.mode == "scale":
            return self.fc((x * (1 + 0.5 * torch.randn(x.shape, generator=self.gen))).flatten(1))
        shift = torch.randn(len(x), 1, generator=self.gen)
        return self.fc(x.flatten(1)) + shift


def images(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, HW, HW, generator=g), torch.randint(0, K, (n,), generator=g)


def small(name: str, eot: int, **extra) -> dict:
    """Constructor keywords for a quick run: few steps / restarts, ``eot_iter=eot``."""
    p = params(name)
    kw = {"eot_iter": eot, **extra}
    for key, value in (("steps", 3), ("n_restarts", 1), ("n_target_classes", 2), ("n_classes", K)):
        if key in p:
            kw[key] = value
    return kw


# -- the constructor --------------------------------------------------------------------------------------------
def test_every_gradient_attack_takes_eot_iter():
    missing = [n for n in eot_attacks() if "eot_iter" not in params(n)]
    assert not missing, f"attacks without eot_iter in their constructor: {missing}"


@pytest.mark.parametrize("name", eot_attacks())
def test_eot_iter_is_stored_shown_and_passed_through(name):
    cls = advshield.ATTACKS.get(name)
    assert params(name)["eot_iter"].default == 1
    model = Counting()
    atk = cls(model, eot_iter=3)
    assert atk.eot == 3
    assert "eot=3" in repr(atk) and "eot_iter" not in atk.settings(), repr(atk)
    plain = cls(model)
    assert plain.eot == 1 and "eot" not in repr(plain), repr(plain)
    assert cls.for_budget(model, 0.1, eot_iter=4).eot == 4
    assert cls.for_budget(model, 0.1).eot == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "2"])
@pytest.mark.parametrize("name", eot_attacks())
def test_bad_eot_iter_is_refused(name, bad):
    with pytest.raises(AdvshieldError, match="eot_iter") as info:
        advshield.ATTACKS.get(name)(Counting(), eot_iter=bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [n for n in eot_attacks() if issubclass(advshield.ATTACKS.get(n), GradientAttack)])
def test_eot_iter_setter_checks(name):
    atk = advshield.ATTACKS.get(name)(Counting())
    atk.eot_iter = 5
    assert atk.eot == atk.eot_iter == 5
    with pytest.raises(AdvshieldError, match="eot_iter"):
        atk.eot_iter = 0
    atk.eot = 2  # the evaluation engine sets the attribute directly
    assert atk.eot_iter == 2 and "eot=2" in repr(atk)


# -- forward passes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eot", [1, 3])
@pytest.mark.parametrize("name", [n for n in eot_attacks() if issubclass(advshield.ATTACKS.get(n), GradientAttack)])
def test_gradient_attacks_take_eot_passes_per_step(name, eot):
    cls = advshield.ATTACKS.get(name)
    model = Counting()
    atk = cls(model, seed=0, **small(name, eot))
    x, y = images()
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape
    assert model.grad_calls == atk.steps * eot


@pytest.mark.parametrize("name", [n for n in eot_attacks() if not issubclass(advshield.ATTACKS.get(n), GradientAttack)])
def test_other_attacks_scale_their_passes_with_eot(name):
    """APGD, FAB, CW, DeepFool: the same run (the model's randomness is invisible to the losses) with eot_iter=2
    takes exactly twice the gradient passes of eot_iter=1."""
    cls = advshield.ATTACKS.get(name)
    x, y = images()
    counts, outs = [], []
    for eot in (1, 2):
        model = Counting()
        out = cls(model, **small(name, eot, seed=0))(x, y)
        counts.append(model.grad_calls)
        outs.append(out)
    assert counts[0] > 0 and counts[1] == 2 * counts[0], counts
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_autoattack_rand_forwards_eot_iter():
    aa = advshield.ATTACKS.get("autoattack")
    model = Counting()
    rand = aa(model, version="rand", eot_iter=3, n_classes=K)
    assert {rand._component(n).eot for n in rand.attacks} == {3}
    standard = aa(model, eot_iter=3, n_classes=K)
    assert {getattr(standard._component(n), "eot", 1) for n in standard.attacks} == {1}


# -- EOT semantics -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pgd", "mifgsm", "ssp"])
def test_gradient_is_the_mean_over_draws(name):
    """``gradient`` with eot=3 equals the mean of three single-draw gradients taken from the same random state."""
    x, y = images()
    y = None if name == "ssp" else y
    cls = advshield.ATTACKS.get(name)

    def grads(eot: int, calls: int) -> list[torch.Tensor]:
        model = Counting(mode="scale")
        atk = cls(model, eot_iter=eot)
        if name == "ssp":
            atk._clean = model(x).detach()
        return [atk.gradient(x, y) for _ in range(calls)]

    (mean,) = grads(3, 1)
    singles = grads(1, 3)
    assert not torch.allclose(singles[0], singles[1])  # the model really is random
    torch.testing.assert_close(mean, sum(singles) / 3, rtol=1e-5, atol=1e-6)


def test_eot_helps_against_a_randomized_model():
    """More draws: a gradient closer to the expected one (the same model's mean over many draws)."""
    x, y = images()
    model = Counting(mode="scale")
    reference = advshield.ATTACKS.get("pgd")(model, eot_iter=400).gradient(x, y)

    def error(eot: int) -> float:
        g = advshield.ATTACKS.get("pgd")(model, eot_iter=eot).gradient(x, y)
        return float((g - reference).norm() / reference.norm())

    assert error(50) < error(1)


# -- the bypass attack ---------------------------------------------------------------------------------------
class _Defense(nn.Module):
    def __init__(self, randomized: bool) -> None:
        super().__init__()
        self.randomized = randomized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Defended(nn.Module):
    def __init__(self, randomized: bool) -> None:
        super().__init__()
        self.defense = _Defense(randomized)
        self.classifier = Counting()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.defense(x))


def test_bypass_attack_eot():
    assert bypass_attack(_Defended(True), eot=4).eot == 4
    assert bypass_attack(_Defended(False), eot=4).eot == 1  # a deterministic defense needs one pass
    assert BypassPGD(_Defended(False), eot_iter=3).eot == 3
    with pytest.raises(AdvshieldError, match="eot"):
        bypass_attack(_Defended(True), eot=0)
    defended = _Defended(True)
    bypass_attack(defended, steps=2, eot=3)(*images())
    assert defended.classifier.grad_calls == 6
