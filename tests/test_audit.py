"""``audit`` with known answers: a gradient-masking defense is caught and broken, a randomized one gets EOT and
repeated draws, an undefended model gets AutoAttack's number; plus AutoAttack itself and the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_fmnist

import advshield
from advshield.attacks import PGD, AutoAttack
from advshield.cli.main import main
from advshield.defenses.base import Defense
from advshield.errors import AdvshieldError

pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]
EPS = 0.1


class Round(Defense):
    """Quantise to 8 levels: the identity almost everywhere, with zero gradient (shattered gradients)."""

    name = "round"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 8).round() / 8


class Noise(Defense):
    """Gaussian noise σ=0.1 on the input (randomized; it declares nothing: audit must detect it)."""

    name = "noise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)


@pytest.fixture(scope="module")
def data():
    from advshield.data import load_dataset

    x, y = next(load_dataset("fashion-mnist", "test").subset(100).batches(100))
    return advshield.load_model("zoo:fmnist-lenet"), x, y


def test_gradient_masking_is_flagged_and_broken(data):
    model, x, y = data
    res = advshield.audit(model, Round(), x, y, EPS, version="quick")
    assert "zero-gradients" in res.flags and not res.meta["differentiable"]
    assert not any(k.startswith("full") for k in res.per_attack)  # no useless full-gradient attack
    # a BPDA PGD written here: forward through the rounding, backward as the identity
    straight = torch.nn.Sequential(_StraightThrough(), model)
    x_adv = PGD(straight, eps=EPS, alpha=EPS / 8, steps=20, random_start=True, seed=0)(x, y)
    with torch.no_grad():
        bpda_acc = float((model(Round()(x_adv)).argmax(1) == y).float().mean())
    assert res.robust_accuracy <= bpda_acc
    with torch.no_grad():
        naive = float((model(Round()(PGD(torch.nn.Sequential(Round(), model), eps=EPS, alpha=EPS / 8, steps=20)(
            x, y))).argmax(1) == y).float().mean())
    assert res.robust_accuracy < naive  # plain gradients through the rounding get nowhere


class _StraightThrough(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (Round()(x) - x).detach()


def test_randomized_defense_gets_eot_and_repeated_draws(data):
    model, x, y = data
    res = advshield.audit(model, Noise(), x[:40], y[:40], EPS, version="quick", eot=3, draws=4)
    assert res.meta["randomized"] and res.meta["eot"] == 3 and res.meta["draws"] == 4
    assert res.meta["eot_rule"] == 2  # APGD-EOT ascends until a point fools every draw (see attacks/apgd.py)
    assert res.meta["eps_curve_eot"] == 3 and len(res.meta["eps_curve"]) == 3  # ≤ CURVE_EOT: the audit's own EOT
    assert any("EOT 3" in k for k in res.per_attack)
    assert res.robust_accuracy <= res.robust_accuracy_majority + 1e-9  # worst of R is the headline
    for k, v in res.per_attack.items():
        assert res.robust_accuracy <= v + 1e-9, k
    lo, hi = res.ci95
    assert lo <= res.robust_accuracy <= hi


def test_undefended_audit_matches_autoattack(data):
    model, x, y = data
    eps = 0.05
    res = advshield.audit(model, None, x, y, eps, steps=100, n_queries=1000)
    aa = AutoAttack(model, eps=eps, version="standard", seed=0)
    with torch.no_grad():
        aa_acc = float((model(aa(x, y)).argmax(1) == y).float().mean())
    assert abs(res.robust_accuracy - aa_acc) <= 0.01 + 1e-9
    assert list(aa.robust_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a >= b for a, b in zip(list(aa.robust_after.values()), list(aa.robust_after.values())[1:]))
    assert res.flags == [] and res.meta["unbounded_accuracy"] <= 0.1


def test_autoattack_arguments_are_checked(data):
    model = data[0]
    with pytest.raises(AdvshieldError, match="version"):
        AutoAttack(model, version="fast")
    with pytest.raises(AdvshieldError, match="component"):
        AutoAttack(model, version="custom", attacks=["apgd-ce", "pgd"])
    assert AutoAttack(model, version="rand").attacks == ("apgd-ce", "apgd-dlr")


def test_audit_result_serialises(data):
    model, x, y = data
    res = advshield.audit(model, "jpeg:quality=50", x[:30], y[:30], EPS, version="quick")
    doc = res.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False))["n"] == 30
    assert "non-differentiable" in res.flags  # JPEG has no autograd path: BPDA instead
    assert "Robust accuracy" in res.to_markdown() and len(res.robust) == 30
    with pytest.raises(AdvshieldError):
        advshield.audit(model, None, x * 255, y, EPS)


def test_cli_audit_writes_its_reports(tmp_path, capsys):
    out = tmp_path / "a"
    argv = ["audit", "--model", "zoo:fmnist-lenet", "--defense", "median", "--n", "20", "--version", "quick",
            "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["n"] == 20 and doc["meta"]["defense"] == "median" and "clean" in doc["per_attack"]
    assert (out / "audit.md").exists() and (out / "flags.safetensors").exists()
    capsys.readouterr()
    assert main(argv) == 2  # not overwritten without --overwrite
    assert main(["audit", "--model", "zoo:fmnist-lenet", "--defense", "jpeg:quality=0", "--n", "5",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("advshield: error: --defense jpeg:quality=0") and not (tmp_path / "b").exists()


def test_cli_audit_of_a_batch_norm_model_resumes_and_cleans_up(tmp_path):
    """fmnist-vgg has batch norm (a 0-dim ``num_batches_tracked`` buffer): the block fingerprint must take it."""
    out = tmp_path / "vgg"
    assert main(["audit", "--model", "zoo:fmnist-vgg", "--defense", "median", "--n", "6", "--version", "quick",
                 "--steps", "2", "--n-queries", "5", "--batch-size", "3", "--out", str(out)]) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["n"] == 6 and 0.0 <= doc["robust_accuracy"] <= doc["clean_accuracy"]
    assert not (out / ".advshield-audit-blocks").exists()
