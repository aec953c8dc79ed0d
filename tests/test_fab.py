"""FAB (advshield.attacks.fab): the box-constrained hyperplane projection, minimal distances on linear models (known in
closed form), the budget / minimal() semantics, argument checks, EOT, and peer robust accuracy against torchattacks'
FAB on 500 Fashion-MNIST test images with zoo:fmnist-lenet."""
from __future__ import annotations

import pytest
import torch
from conftest import needs_fmnist
from torch import nn

from advshield.attacks import FAB, FABL2
from advshield.attacks.fab import boundary_projection
from advshield.errors import AdvshieldError, ModelError
from advshield.registry import ATTACKS

pytestmark = pytest.mark.usefixtures("one_thread")

DUAL = {"linf": 1, "l2": 2}  # the dual norm's p: distance to a hyperplane = |value| / ||w||_dual


class Linear(nn.Module):
    """Logits W·flatten(x) + c: the minimal adversarial distance (box inactive) is min_k |f_k − f_y| / ||w_k − w_y||."""

    def __init__(self, w: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.w, self.c = nn.Parameter(w), nn.Parameter(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t() + self.c


def linear_setup(k: int = 4, n: int = 32, seed: int = 0) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    """(random linear model on 1×4×4 images, n images in [0.45, 0.55], the model's predictions)."""
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(k, 16, generator=g), 0.3 * torch.randn(k, generator=g)).eval()
    x = 0.45 + 0.1 * torch.rand(n, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def exact_distance(model: Linear, x: torch.Tensor, y: torch.Tensor, norm: str, target: int | None = None):
    """Distance to the nearest hyperplane f_k = f_y (k ≠ y), or to f_target = f_y; N. Exact minimal adversarial
    distance when it moves no pixel out of [0,1] (all moves ≤ the distance, images within 0.45 of both bounds)."""
    with torch.no_grad():
        f = model(x)
    rows = torch.arange(len(x))
    df = (f - f[rows, y][:, None]).abs()
    dw = (model.w[None] - model.w[y][:, None]).detach().norm(p=DUAL[norm], dim=2)
    dist = df / dw.clamp_min(1e-12)
    dist[rows, y] = float("inf")
    return dist.min(1).values if target is None else dist[:, target]


# -- the projection ------------------------------------------------------------------------------------------


def random_problem(m: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points in [0,1] (30 % at the bounds), weights with 10 % zeros, offsets b of which ~30 % the box cannot reach."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(m, d, generator=g)
    z[z < 0.15] = 0.0
    z[z > 0.85] = 1.0
    w = torch.randn(m, d, generator=g)
    w[torch.rand(m, d, generator=g) < 0.1] = 0.0
    b = (w * torch.rand(m, d, generator=g)).sum(1) * 3 * torch.rand(m, generator=g)
    u = torch.rand(m, generator=g)
    b = torch.where(u < 0.15, w.clamp(min=0).sum(1) + 1, torch.where(u < 0.3, w.clamp(max=0).sum(1) - 1, b))
    return z, w, b


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("d", [3, 40, 784])
def test_projection_lands_on_hyperplane_in_box(norm, d):
    z, w, b = random_problem(300, d, seed=d)
    step = boundary_projection(z, w, b, norm)
    p = z + step
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert torch.all(step[w == 0] == 0)
    resid = ((w * p).sum(1) - b).abs()
    feasible = (b >= w.clamp(max=0).sum(1)) & (b <= w.clamp(min=0).sum(1))  # the range of w·p over the box
    assert feasible.any() and (~feasible).any(), "the random problems should include both kinds"
    assert float(resid[feasible].max()) < 1e-3
    # unreachable: every coordinate with w ≠ 0 is pushed to the bound on the hyperplane's side
    side = torch.sign(b - (w * z).sum(1))[:, None] * torch.sign(w)
    corner = torch.where(side > 0, 1.0, 0.0)
    far = ~feasible
    assert torch.allclose(p[far][w[far] != 0], corner[far][w[far] != 0])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_minimal(norm):
    """No point of the box on the hyperplane is closer: compare with many random feasible points (d = 3) and with a
    fine bisection on the step size along the (clipped) minimiser's path."""
    z, w, b = random_problem(200, 3, seed=7)
    step = boundary_projection(z, w, b, norm)
    p = 2 if norm == "l2" else float("inf")
    ours = step.norm(p=p, dim=1)
    on = ((w * (z + step)).sum(1) - b).abs() < 1e-4
    g = torch.Generator().manual_seed(1)
    for _ in range(50):  # random box points moved onto the hyperplane along one coordinate
        q = torch.rand(200, 3, generator=g)
        j = torch.randint(0, 3, (200,), generator=g)
        rows = torch.arange(200)
        wj = w[rows, j]
        q[rows, j] = q[rows, j] + (b - (w * q).sum(1)) / torch.where(wj == 0, torch.ones_like(wj), wj)
        valid = on & (wj != 0) & (q.min(1).values >= 0) & (q.max(1).values <= 1)
        other = (q - z).norm(p=p, dim=1)
        assert torch.all(ours[valid] <= other[valid] + 1e-5)


def test_projection_in_half_precision_computes_in_float32():
    z, w, b = random_problem(50, 64, seed=11)
    half = boundary_projection(z.half(), w.half(), b.half(), "l2")
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    full = boundary_projection(z.half().float(), w.half().float(), b.half().float(), "l2")
    assert torch.allclose(half.float(), full, atol=1e-3)


def test_projection_matches_torchattacks():
    fab = pytest.importorskip("torchattacks.attacks.fab")
    for norm, ref in (("linf", fab.projection_linf), ("l2", fab.projection_l2)):
        z, w, b = random_problem(400, 784, seed=3)
        ours, theirs = boundary_projection(z, w, b, norm), ref(z.clone(), w.clone(), b.clone())
        assert torch.allclose(ours, theirs, atol=1e-4), norm


# -- minimal distances on linear models -----------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("multi", [False, True])
def test_linear_model_minimal_distance(norm, multi):
    """FAB finds the exact minimal distance (up to its overshoot) on a linear model: never below it (that would be
    impossible), and within 3 % above it after 20 steps."""
    model, x, y = linear_setup()
    exact = exact_distance(model, x, y, norm.lower())
    assert float(exact.max()) < 0.45, "the box must be inactive for the closed form"
    atk = FAB(model, norm=norm, eps=0.1, steps=20, multi_targeted=multi, n_classes=4)
    x_min, dist = atk.minimal(x, y)
    with torch.no_grad():
        assert torch.all(model(x_min).argmax(1) != y)
    assert torch.allclose(dist, atk.threat.distance(x_min, x), atol=1e-6)
    assert torch.all(dist >= exact * (1 - 1e-4))
    assert torch.all(dist <= exact * 1.03), f"worst ratio {float((dist / exact).max()):.4f}"


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_targeted_mode_reaches_the_target(norm):
    model, x, y = linear_setup()
    target = (y + 1) % 4
    atk = FAB(model, norm=norm, eps=1.0 if norm == "Linf" else 4.0, steps=30).set_target_mode("given")
    x_min, dist = atk.minimal(x, target)
    with torch.no_grad():
        pred = model(x_min).argmax(1)
    found = torch.isfinite(dist)
    assert found.float().mean() > 0.9
    assert torch.all(pred[found] == target[found])
    # reaching the target needs at least crossing its own hyperplane with the label
    assert torch.all(dist[found] >= exact_distance(model, x, y, norm.lower())[found] * (1 - 1e-4))
    x_adv = atk(x, target)
    atk.threat.check(x_adv, x)
    with torch.no_grad():
        changed = (x_adv != x).flatten(1).any(1)
        assert torch.all(model(x_adv[changed]).argmax(1) == target[changed])


def test_budget_output_is_the_minimal_one_within_eps():
    """atk(x, y) changes exactly the samples whose smallest adversarial found lies within eps, to that adversarial."""
    model, x, y = linear_setup(n=48, seed=2)
    exact = exact_distance(model, x, y, "linf")
    eps = float(exact.median())
    atk = FAB(model, eps=eps, steps=15)
    x_min, dist = atk.minimal(x, y)
    x_adv = atk(x, y)
    atk.threat.check(x_adv, x)
    inside = dist <= eps
    assert 0 < int(inside.sum()) < len(x)
    assert torch.equal(x_adv[inside], x_min[inside])
    assert torch.equal(x_adv[~inside], x[~inside])


def test_unreachable_and_already_misclassified():
    """A class the box cannot leave: distance inf, image unchanged. A wrong label: distance 0, image unchanged."""
    w = torch.zeros(2, 16)
    w[1] = 0.01
    model = Linear(w, torch.tensor([100.0, 0.0])).eval()
    x = torch.rand(3, 1, 4, 4)
    y = torch.tensor([0, 1, 0])  # sample 1 is misclassified
    for norm in ("Linf", "L2"):
        atk = FAB(model, norm=norm, eps=0.5, steps=5, n_restarts=2)
        x_min, dist = atk.minimal(x, y)
        assert torch.isinf(dist[[0, 2]]).all() and float(dist[1]) == 0.0
        assert torch.equal(x_min, x) and torch.equal(atk(x, y), x)


def test_random_restarts_are_seeded():
    """Restarts (random starts at half the best distance) are reproducible under a seed and only ever improve."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
        x = torch.rand(32, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = FAB(model, eps=0.05, steps=3, n_restarts=3, seed=5)
    a, da = atk.minimal(x, y)
    b, db = atk.minimal(x, y)
    assert torch.equal(a, b) and torch.equal(da, db)
    atk.seed = 6
    c, _ = atk.minimal(x, y)
    assert not torch.equal(a, c), "the random restarts had no effect"
    assert torch.all(da <= FAB(model, eps=0.05, steps=3, n_restarts=1).minimal(x, y)[1] + 1e-7)


# -- settings --------------------------------------------------------------------------------------------------


def test_registered_with_norms_and_defaults():
    assert ATTACKS.get("fab") is FAB and ATTACKS.get("fab-l2") is FABL2
    model = linear_setup()[0]
    atk = FAB(model)
    assert (atk.norm, atk.threat.norm, atk.eps, atk.steps, atk.n_restarts, atk.alpha_max, atk.eta, atk.beta,
            atk.seed, atk.multi_targeted, atk.n_classes, atk.eot_iter) == (
        "linf", "linf", 8 / 255, 10, 1, 0.1, 1.05, 0.9, 0, False, 10, 1)
    assert FAB.transfer is False and FABL2.transfer is False
    assert FAB(model, norm="L2", eps=0.5).threat.norm == "l2" and FAB(model, norm="linf").norm == "linf"
    l2 = FABL2.for_budget(model, 1.5)
    assert (l2.norm, l2.threat.eps) == ("l2", 1.5)
    assert FAB.for_budget(model, 0.1, steps=3).steps == 3
    assert repr(atk).startswith("FAB(linf, eps=0.03137, steps=10, n_restarts=1")


@pytest.mark.parametrize("kw,name", [
    ({"norm": "L1"}, "norm"), ({"norm": 2}, "norm"), ({"eps": 0}, "eps"), ({"eps": 1.5}, "eps"),
    ({"steps": 0}, "steps"), ({"n_restarts": 0}, "n_restarts"), ({"alpha_max": 1.5}, "alpha_max"),
    ({"eta": 0.5}, "eta"), ({"beta": -0.1}, "beta"), ({"n_classes": 1}, "n_classes"), ({"eot_iter": 0}, "eot_iter"),
    ({"seed": 0.5}, "seed"),
])
def test_bad_settings(kw, name):
    with pytest.raises(AdvshieldError, match=f"^{name}"):
        FAB(linear_setup()[0], **kw)


def test_multi_targeted_refuses_target_modes():
    model, x, y = linear_setup()
    atk = FAB(model, multi_targeted=True)
    with pytest.raises(AdvshieldError, match="multi_targeted"):
        atk.set_target_mode("random")
    atk.target_mode = "random"  # set behind its back
    with pytest.raises(AdvshieldError, match="multi_targeted"):
        atk(x)


def test_needs_logits():
    with pytest.raises(ModelError, match="^model"):
        FAB(nn.Identity())(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))


class Noisy(nn.Module):
    """A randomized linear model: Gaussian noise (std 1) added to the logits on every call."""

    def __init__(self, model: Linear) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out + torch.randn_like(out)


def test_eot_averages_the_boundary_values():
    """With eot_iter = 64 (set as ``eot``, as the evaluation engine does) the linearised boundary's value varies
    about 8 times less between calls than with a single pass."""
    model, x, y = linear_setup(n=8)
    atk = FAB(Noisy(model), multi_targeted=True)
    target = (y + 1) % 4

    def spread() -> float:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            values = torch.stack([atk._boundary(x, y, target)[0] for _ in range(20)])
        return float(values.std(0).mean())

    single = spread()
    atk.eot = 64
    assert atk.eot_iter == 64
    assert spread() < single / 4
    assert repr(atk).endswith("n_classes=10, eot=64)")


# -- peer: robust accuracy against torchattacks on Fashion-MNIST -----------------------------------------------


@pytest.fixture(scope="module")
def fmnist_lenet():
    """(zoo:fmnist-lenet with frozen parameters, 500 Fashion-MNIST test images in [0,1], labels)."""
    import advshield
    from advshield.data import load_dataset

    model = advshield.load_model("zoo:fmnist-lenet").eval().requires_grad_(False)
    data = load_dataset("fashion-mnist", "test").subset(500)
    return model, data.images.float().div(255), data.labels.long()


PEER = {  # few steps / target classes: the comparison holds at any setting, and torchattacks' FAB is slow on CPU
    "linf-untargeted": {"norm": "Linf", "eps": 0.1, "steps": 3},
    "linf-multi-targeted": {"norm": "Linf", "eps": 0.1, "steps": 5, "multi_targeted": True},
    "l2-multi-targeted": {"norm": "L2", "eps": 1.0, "steps": 5, "multi_targeted": True, "n_classes": 4},
}


@needs_fmnist
@pytest.mark.parametrize("case", list(PEER))
def test_robust_accuracy_matches_torchattacks(fmnist_lenet, case):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fmnist_lenet
    kw = PEER[case]
    ours, theirs = FAB(model, **kw)(x, y), torchattacks.FAB(model, **kw)(x, y)
    FAB(model, **kw).threat.check(ours, x)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        acc_ours = float((model(ours).argmax(1) == y).float().mean())
        acc_theirs = float((model(theirs).argmax(1) == y).float().mean())
    assert acc_ours < clean - 0.3, f"{case}: the attack barely worked ({clean:.3f} → {acc_ours:.3f})"
    assert abs(acc_ours - acc_theirs) <= 0.01, f"{case}: robust accuracy {acc_ours:.3f}, torchattacks {acc_theirs:.3f}"
    same = float(((ours - theirs).abs() <= 1e-4).float().mean())
    assert same >= 0.98, f"{case}: only {same:.2%} of the pixels agree with torchattacks"
