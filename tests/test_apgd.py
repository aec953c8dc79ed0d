"""APGD / APGD-T: the checkpoint schedule against Croce & Hein 2020, the DLR losses, the step-size rule and its
wiring, restarts, targets, EOT, argument checks; then robust accuracy against torchattacks' APGD / APGDT on 500
Fashion-MNIST test images with zoo:fmnist-lenet (within 1 point)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_fmnist
from torch import nn

import advshield.attacks.apgd as apgd_module
from advshield.attacks import APGD, APGDL2, APGDT, APGDTL2
from advshield.attacks.apgd import checkpoints, dlr_loss, dlr_targeted_loss, halve_step
from advshield.errors import AdvshieldError
from advshield.registry import ATTACKS

pytestmark = pytest.mark.usefixtures("one_thread")


# -- schedule, losses, step-size rule ---------------------------------------------------------------------------


def paper_checkpoints(steps: int) -> list[int]:
    """Section 3.2 of the paper, in exact rationals: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
    0.06); checkpoints w_j = ⌈p_j·N_iter⌉ for the p_j ≤ 1."""
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        p.append(nxt)
    ws = [math.ceil(pj * steps) for pj in p[1:]]
    return sorted(set(w for w in ws if w >= 1))


def test_checkpoints_match_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # the values given for 100 iterations
    for steps in (1, 2, 3, 5, 7, 10, 13, 25, 50, 64, 100, 250, 1000):
        ws = checkpoints(steps)
        assert ws == paper_checkpoints(steps), steps
        assert ws == sorted(set(ws)) and 1 <= ws[0] and ws[-1] <= steps
    with pytest.raises(AdvshieldError, match="steps"):
        checkpoints(0)


def test_dlr_loss_values():
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0],    # y = 0 on top: −(5 − 3) / (5 − 1)
                      [5.0, 3.0, 1.0, 0.0],    # y = 1 second: −(3 − 5) / (5 − 1)
                      [0.0, 2.0, 2.0, 1.0]])   # tie with another class: margin 0
    y = torch.tensor([0, 1, 1])
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-0.5, 0.5, 0.0]), atol=1e-6)
    scaled = dlr_loss(3 * z + 7, y)
    assert torch.allclose(scaled, dlr_loss(z, y), atol=1e-5)  # shift and scale invariant
    t = torch.tensor([2, 3, 0])
    expect = -(z[[0, 1, 2], y] - z[[0, 1, 2], t]) / torch.tensor([5 - 0.5 * (1 + 0), 5 - 0.5, 2 - 0.5 * (1 + 0)])
    assert torch.allclose(dlr_targeted_loss(z, y, t), expect, atol=1e-6)
    assert torch.allclose(dlr_targeted_loss(3 * z + 7, y, t), expect, atol=1e-5)


def test_halve_step_conditions():
    ups = torch.tensor([1.0, 4.0, 4.0, 4.0, 3.0])
    reduced = torch.tensor([False, False, True, False, False])
    best = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0])
    before = torch.tensor([0.5, 1.0, 1.0, 1.0, 0.5])
    # window 4, rho 0.75: condition 1 is "fewer than 3 increases"; condition 2 "not halved last time, no progress"
    assert halve_step(ups, 4, 0.75, reduced, best, before).tolist() == [True, True, False, False, False]


class Constant(nn.Module):
    """Logits that do not depend on the image (zero gradient): no sample can ever be fooled."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(1, 0, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("steps", [10, 37])
def test_step_size_checked_at_the_checkpoints(steps, monkeypatch):
    windows, sizes = [], []
    real = apgd_module.halve_step

    def spy(increases, window, *args):
        windows.append(window)
        return real(increases, window, *args)

    monkeypatch.setattr(apgd_module, "halve_step", spy)
    atk = APGD(Constant(), eps=0.1, steps=steps, seed=0)
    original = atk._direction
    monkeypatch.setattr(atk, "_direction", lambda g: (sizes.append(1), original(g))[1])
    x = torch.rand(3, 1, 8, 8)
    atk(x, torch.zeros(3, dtype=torch.long))
    ws = checkpoints(steps)
    assert windows == [b - a for a, b in zip([0] + ws[:-1], ws)]
    assert len(sizes) == steps


def test_first_fooling_point_and_early_exit():
    """A linear model on 2 features: each iteration evaluates only the samples not yet fooled, samples misclassified
    from the start come back unchanged, and each returned fooling point is misclassified."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 4  # already "fooled": label ≠ prediction
    sizes = []
    handle = model.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    try:
        x_adv = APGD(model, eps=0.3, steps=20, seed=0)(x, y)
    finally:
        handle.remove()
    assert torch.equal(x_adv[:3], x[:3])
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    sizes = sizes[1:]  # the first forward pass is the class-count probe on one image (base Attack)
    assert sizes[0] == 12 and sizes[1] == 9  # the clean pass, then only the 9 to fool
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 9  # fooled samples leave the batch
    assert len(sizes) <= 2 + 20


def test_unfooled_samples_get_their_best_loss_point():
    """A linear model with a margin of 5 for class 0 cannot be fooled at eps 0.01; APGD still returns, per image,
    a point whose CE is as high as that of the signed-gradient corner (the optimum for a near-linear loss)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        model[1].weight.mul_(0.5)
        model[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    x = 0.25 + 0.5 * torch.rand(6, 1, 4, 4)
    y = torch.zeros(6, dtype=torch.long)
    x_adv = APGD(model, eps=0.01, steps=20, n_restarts=2, seed=1)(x, y)
    APGD(model, eps=0.01).threat.check(x_adv, x)
    x_in = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    corner = x + 0.01 * g.sign()
    with torch.no_grad():
        ce = [F.cross_entropy(model(z), y, reduction="none") for z in (x, corner, x_adv)]
        assert (model(x_adv).argmax(1) == 0).all()
    assert (ce[1] > ce[0]).all() and (ce[2] - ce[0] >= 0.95 * (ce[1] - ce[0])).all(), ce  # ≥ 95 % of the gain
    assert torch.equal(APGD(Constant(), eps=0.05, steps=3)(x, y) == x, torch.zeros_like(x, dtype=torch.bool))


def test_restarts_only_help(trained_small):
    model, x, y = trained_small
    one = APGD(model, eps=0.05, steps=10, n_restarts=1, seed=3)
    three = APGD(model, eps=0.05, steps=10, n_restarts=3, seed=3)
    with torch.no_grad():
        fooled_one = model(one(x, y)).argmax(1) != y
        fooled_three = model(three(x, y)).argmax(1) != y
    assert bool((fooled_three | ~fooled_one).all())  # the first run is the same: what it fooled stays fooled
    assert int(fooled_three.sum()) >= int(fooled_one.sum())


@pytest.fixture(scope="module")
def trained_small():
    """(a small CNN trained for a few seconds on synthetic band images, 32 test images, labels)."""
    from test_attacks_contract import Tiny, band_data

    x, y = band_data(512, 5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Tiny(1)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(60):
            i = torch.randint(0, len(x), (64,))
            loss = F.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = band_data(32, 9)
    return model, xt, yt


def test_apgdt_targets_the_top_classes_in_order(trained_small, monkeypatch):
    seen = []
    real = apgd_module.dlr_targeted_loss

    def spy(z, yy, target):
        seen.append(target.clone())
        return real(z, yy, target)

    monkeypatch.setattr(apgd_module, "dlr_targeted_loss", spy)
    # unfoolable: classes ranked 0, 1, 2, ... for every image; runs toward 1, 2, 3, each start + 3 steps
    APGDT(Constant(), eps=0.02, steps=3, n_target_classes=3, seed=0)(torch.rand(5, 1, 8, 8),
                                                                    torch.zeros(5, dtype=torch.long))
    assert [t.tolist() for t in seen] == [[c] * 5 for c in (1, 2, 3) for _ in range(4)]
    seen.clear()
    model, x, y = trained_small  # the first run aims every correctly classified image at its runner-up class
    APGDT(model, eps=0.02, steps=3, n_target_classes=9, seed=0)(x, y)
    with torch.no_grad():
        ranked = model(x).argsort(1, descending=True)
    assert torch.equal(seen[0], ranked[ranked[:, 0] == y, 1])
    assert sum(len(t) for t in seen) <= 9 * 4 * len(x)


def test_targeted_modes_reach_the_target(trained_small):
    model, x, y = trained_small
    target = (y + 1) % 10
    for atk in (APGD(model, eps=0.1, steps=20, seed=0), APGD(model, eps=0.1, steps=20, loss="dlr", seed=0),
                APGDT(model, eps=0.1, steps=20, seed=0)):
        atk.set_target_mode("given")
        x_adv = atk(x, target)
        atk.threat.check(x_adv, x)
        with torch.no_grad():
            hit = float((model(x_adv).argmax(1) == target).float().mean())
        assert hit >= 0.6, f"{atk!r}: {hit:.2f} reach the target"


class Noisy(nn.Module):
    """A randomized model: Gaussian noise on the input, then a linear layer; counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
        with torch.no_grad():
            self.lin[1].bias[0] = 10.0  # always class 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x + 0.05 * torch.randn_like(x))


def test_eot_averages_over_draws():
    torch.manual_seed(0)
    model = Noisy()
    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    atk = APGD(model, eps=1e-3, steps=4, eot_iter=5, seed=0)  # too small to fool: every step runs
    assert atk.eot == 5 and atk.eot_iter == 5
    atk(x, y)
    # the class-count probe, the clean pass, then 5 draws at the start and at each of the 4 steps
    assert model.calls == 2 + 5 * (1 + 4)
    a, b = atk(x, y), atk(x, y)
    assert torch.equal(a, b)  # seeded: the draws repeat too
    atk.eot = 1  # what the evaluation engine sets
    assert "eot" not in repr(atk) and atk.eot_iter == 1


class Coin(nn.Module):
    """Two classes; after the class-count probe and the clean pass (both correct), the wrong class wins on about
    half of the draws whatever the input (logit noise σ=5)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        z = x.flatten(1).mean(1, keepdim=True)
        noise = 5 * torch.randn_like(z) if self.calls > 2 else -1.0
        return torch.cat([torch.zeros_like(z) + 0.1, z + noise], 1)


def test_eot_keeps_ascending_until_every_draw_is_fooled():
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, dtype=torch.long)
    torch.manual_seed(0)
    model = Coin()
    adv = APGD(model, eps=0.1, steps=6, eot_iter=8, seed=3)(x, y)
    # some draws of the start fool the model, yet the sample stays: 8 draws at the start and at each of 6 steps
    assert model.calls == 2 + 8 * (1 + 6)
    assert not torch.equal(adv, x) and (adv - x).abs().max() <= 0.1 + 1e-6
    torch.manual_seed(0)
    model = Coin()
    APGD(model, eps=0.1, steps=6, eot_iter=1, seed=3)(x, y)
    assert model.calls < 2 + 1 * (1 + 6)  # without EOT the first fooling point ends the run


def test_settings_names_and_for_budget():
    model = Constant()
    assert ATTACKS.get("apgd") is APGD and ATTACKS.get("apgdt") is APGDT
    assert APGD.transfer is False and APGDT.transfer is False and APGD.norm == "linf"
    a = APGD(model, norm="L2", eps=0.5, loss="dlr")
    assert a.threat.norm == "l2" and a.norm == "l2" and a.loss == "dlr"
    assert APGD(model, norm="linf").threat.norm == "linf"
    assert repr(a) == "APGD(l2, eps=0.5, steps=10, n_restarts=1, loss='dlr', rho=0.75)"
    t = APGDT(model, n_classes=10)
    assert t.n_target_classes == 9 and "n_classes" not in repr(t)
    b = APGD.for_budget(model, 0.1)
    assert (b.eps, b.steps, b.n_restarts, b.loss) == (0.1, 100, 1, "ce")
    bt = APGDT.for_budget(model, 0.1, n_target_classes=3)
    assert (bt.steps, bt.n_target_classes, bt.loss) == (100, 3, "dlr")
    assert ATTACKS.get("apgd-l2") is APGDL2 and ATTACKS.get("apgdt-l2") is APGDTL2
    assert APGDL2.norm == "l2" and APGDTL2.norm == "l2" and not APGDL2.transfer and not APGDTL2.transfer
    l2 = APGDTL2.for_budget(model, 2.0)
    assert (l2.threat.norm, l2.eps, l2.steps, l2.n_target_classes) == ("l2", 2.0, 100, 9)
    assert APGDL2(model).threat == APGD(model, norm="L2", eps=0.5).threat


def test_l2_classes_are_apgd_with_norm_l2(trained_small):
    model, x, y = trained_small
    assert torch.equal(APGDL2(model, eps=1.0, loss="dlr", seed=2)(x, y),
                       APGD(model, norm="L2", eps=1.0, loss="dlr", seed=2)(x, y))
    assert torch.equal(APGDTL2(model, eps=1.0, n_target_classes=2, seed=2)(x, y),
                       APGDT(model, norm="L2", eps=1.0, n_target_classes=2, seed=2)(x, y))


@pytest.mark.parametrize("make,arg", [
    (lambda m: APGD(m, norm="L1"), "norm"),
    (lambda m: APGD(m, eps=0), "eps"),
    (lambda m: APGD(m, eps=1.5), "eps"),
    (lambda m: APGD(m, steps=0), "steps"),
    (lambda m: APGD(m, n_restarts=0), "n_restarts"),
    (lambda m: APGD(m, loss="cw"), "loss"),
    (lambda m: APGD(m, eot_iter=0), "eot_iter"),
    (lambda m: APGD(m, rho=1.5), "rho"),
    (lambda m: APGDT(m, n_target_classes=0), "n_target_classes"),
    (lambda m: APGDT(m, n_classes=1), "n_classes"),
])
def test_bad_settings(make, arg):
    with pytest.raises(AdvshieldError, match=arg) as info:
        make(Constant())
    assert "\n" not in str(info.value)


def test_too_few_classes_for_dlr():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(AdvshieldError, match="loss 'dlr'.*3 classes"):
        APGD(Constant(2), loss="dlr")(x)
    with pytest.raises(AdvshieldError, match="APGDT.*4 classes"):
        APGDT(Constant(3))(x)
    APGD(Constant(2), loss="ce", steps=2)(x)  # CE works with any class count


# -- peer comparison with torchattacks ------------------------------------------------------------------------

N_PEER, STEPS, MAX_GAP = 500, 10, 0.01


@pytest.fixture(scope="module")
def fmnist_lenet():
    """(zoo:fmnist-lenet, the first 500 Fashion-MNIST test images as float, labels)."""
    import advshield
    from advshield.data import load_dataset
    from advshield.data.tensors import to_float

    ds = load_dataset("fashion-mnist", "test").subset(N_PEER)
    return advshield.load_model("zoo:fmnist-lenet").eval(), to_float(ds.images), ds.labels


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


PEER = {  # name: (ours, theirs); the 0.1 L∞ case leaves ~3 % robust, the others 20-50 %
    "ce-linf-0.03": (lambda m: APGD(m, eps=0.03, steps=STEPS, loss="ce", seed=0),
                     lambda ta, m: ta.APGD(m, eps=0.03, steps=STEPS, loss="ce", seed=0)),
    "dlr-linf-0.1": (lambda m: APGD(m, eps=0.1, steps=STEPS, loss="dlr", seed=0),
                     lambda ta, m: ta.APGD(m, eps=0.1, steps=STEPS, loss="dlr", seed=0)),
    "apgdt-linf-0.05": (lambda m: APGDT(m, eps=0.05, steps=STEPS, n_target_classes=3, seed=0),
                        lambda ta, m: ta.APGDT(m, eps=0.05, steps=STEPS, n_classes=4, seed=0)),
    "dlr-l2-1.0": (lambda m: APGD(m, norm="L2", eps=1.0, steps=STEPS, loss="dlr", seed=0),
                   lambda ta, m: ta.APGD(m, norm="L2", eps=1.0, steps=STEPS, loss="dlr", seed=0)),
}


@needs_fmnist
@pytest.mark.parametrize("case", list(PEER))
def test_robust_accuracy_matches_torchattacks(case, fmnist_lenet):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fmnist_lenet
    mk_ours, mk_theirs = PEER[case]
    ours = mk_ours(model)
    x_ours = ours(x, y)
    ours.threat.check(x_ours, x)
    with torch.random.fork_rng(devices=[]):  # torchattacks seeds the global generator
        x_theirs = mk_theirs(torchattacks, model)(x, y)
    clean, a, b = (robust_accuracy(model, z, y) for z in (x, x_ours, x_theirs))
    assert a < clean - 0.2, f"{case}: clean {clean:.3f}, ours {a:.3f}"  # the attack does real work
    assert abs(a - b) <= MAX_GAP + 1e-9, f"{case}: robust accuracy ours {a:.3f}, torchattacks {b:.3f}"
