"""AutoAttack peer checks: robust accuracy of advshield's AutoAttack against torchattacks' AutoAttack on the same
model and images (zoo:fmnist-lenet, 500 Fashion-MNIST test images), within 1 point for ``version="standard"``
(L∞ and L2); ``version="rand"`` on a randomized (input-noise) LeNet is expected within 2 points but is not there
yet (strict xfail, see the test).

torchattacks' AutoAttack builds its components with their own defaults: APGD, APGD-T and FAB-T run 10 steps
(advshield's standard version runs 100, the RobustBench protocol), Square 5000 queries. The peer runs therefore
pass ``steps=10`` to advshield's AutoAttack, so both sides run the same configuration.

Budgets: L∞ eps 0.1 and L2 eps 2.0 leave a few percent robust after APGD-CE, so FAB-T and Square (5000 queries,
the slow part on a CPU) run on few samples; each case takes well under a minute on one thread."""
from __future__ import annotations

import pytest
import torch
from conftest import needs_fmnist
from torch import nn

from advshield.attacks import AutoAttack

pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]

N_PEER, STEPS, MAX_GAP = 500, 10, 0.01


@pytest.fixture(scope="module")
def fmnist_lenet():
    """(zoo:fmnist-lenet, the first 500 Fashion-MNIST test images as float, labels)."""
    import advshield
    from advshield.data import load_dataset
    from advshield.data.tensors import to_float

    ds = load_dataset("fashion-mnist", "test").subset(N_PEER)
    return advshield.load_model("zoo:fmnist-lenet").eval(), to_float(ds.images), ds.labels


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, draws: int = 1) -> float:
    """Fraction classified as ``y``, averaged over ``draws`` seeded forward passes (for randomized models)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return sum(float((model(x_adv).argmax(1) == y).float().mean()) for _ in range(draws)) / draws


def torchattacks_autoattack(ta, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    """torchattacks' AutoAttack (n_classes=10, seed=0), leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):  # torchattacks seeds the global generator
        torch.manual_seed(0)
        return ta.AutoAttack(model, n_classes=10, seed=0, **kw)(x, y)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 2.0)])
def test_standard_matches_torchattacks(norm, eps, fmnist_lenet):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fmnist_lenet
    ours = AutoAttack(model, norm=norm, eps=eps, version="standard", n_classes=10, seed=0, steps=STEPS)
    x_ours = ours(x, y)
    ours.threat.check(x_ours, x)
    x_theirs = torchattacks_autoattack(torchattacks, model, x, y, norm=norm, eps=eps, version="standard")
    clean, a, b = (robust_accuracy(model, z, y) for z in (x, x_ours, x_theirs))
    assert a < clean - 0.5, f"{norm}: clean {clean:.3f}, ours {a:.3f}"  # the attack does real work
    stages = list(ours.robust_after.values())
    assert list(ours.robust_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert stages == sorted(stages, reverse=True) and stages[-1] == pytest.approx(a)
    assert abs(a - b) <= MAX_GAP + 1e-9, f"{norm} eps {eps}: robust accuracy ours {a:.3f}, torchattacks {b:.3f}"


class NoisyInput(nn.Module):
    """A randomized defense: Gaussian noise (std ``sigma``) on the [0,1] input, clamped, then ``model``."""

    def __init__(self, model: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


RAND_N, RAND_EPS, RAND_GAP, RAND_DRAWS = 200, 0.05, 0.02, 10


@pytest.mark.xfail(strict=True, reason=(
    "known gap, now about 2-3 points (was about 6): with EOT, advshield's APGD keeps ascending after a point fools "
    "some draws and returns the latest point fooling the largest share of a step's draws, retiring a sample once a "
    "point fools all 20; torchattacks ascends to the last step. Measured on these 200 images (robust %, 10 draws): "
    "advshield 45.5 / 43.7 (seeds 0 / 1; 45.0 / 42.9 without retiring; 45.6 / 44.3 with torchattacks' last-draw "
    "loss; 45.2 / 43.8 with the authors' integer checkpoint schedule), torchattacks 42.5 / 42.5 / 43.7 "
    "(seeds 0 / 1 / 2)"))
def test_rand_matches_torchattacks(fmnist_lenet):
    """``version="rand"`` (APGD-CE and APGD-DLR, EOT over 20 draws) on a noisy-input LeNet; robust accuracy averaged
    over 10 seeded draws of the noise, within 2 points (the single-draw checks inside both ensembles are noisy)."""
    torchattacks = pytest.importorskip("torchattacks")
    lenet, x, y = fmnist_lenet
    model = NoisyInput(lenet).eval()
    x, y = x[:RAND_N], y[:RAND_N]
    ours = AutoAttack(model, eps=RAND_EPS, version="rand", seed=0, steps=STEPS)
    assert ours.attacks == ("apgd-ce", "apgd-dlr") and ours.eot_iter == 20
    x_ours = ours(x, y)
    ours.threat.check(x_ours, x)
    x_theirs = torchattacks_autoattack(torchattacks, model, x, y, norm="Linf", eps=RAND_EPS, version="rand")
    clean, a, b = (robust_accuracy(model, z, y, RAND_DRAWS) for z in (x, x_ours, x_theirs))
    assert a < clean - 0.2, f"clean {clean:.3f}, ours {a:.3f}"
    assert abs(a - b) <= RAND_GAP + 1e-9, f"rand: robust accuracy ours {a:.3f}, torchattacks {b:.3f}"
