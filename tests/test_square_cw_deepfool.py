"""Square, CW (L2 and L∞) and DeepFool: unit checks on tiny / linear models, then peer checks against torchattacks
on the zoo's Fashion-MNIST LeNet (Square: robust accuracy on 500 images; CW: success rate, median L2 and the images
themselves; DeepFool: the images of torchattacks' variant, then success and L2 of the box-aware default)."""
from __future__ import annotations

import pytest
import torch
from conftest import needs_fmnist
from torch import nn

from advshield.attacks import CW, CWLinf, DeepFool, Square, SquareL2
from advshield.attacks.cw import UNBOUNDED, margin
from advshield.attacks.square import _eta, p_schedule
from advshield.errors import AdvshieldError

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.model(x)


def small_cnn(seed: int = 0, channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 10)).eval()


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# -- unit checks ----------------------------------------------------------------------------------------------------


def test_margin_untargeted_and_targeted():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(margin(logits, y), torch.tensor([1.0, -6.0]))
    assert torch.allclose(margin(logits, y, targeted=True), torch.tensor([-1.0, 6.0]))
    neg = torch.tensor([[-1.0, -5.0, -3.0]])  # all logits negative: the max over the others is -3, not 0
    assert torch.allclose(margin(neg, torch.tensor([0])), torch.tensor([2.0]))


def test_p_schedule_is_the_papers():
    assert p_schedule(0.8, 0, 10000) == 0.8 and p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4 and p_schedule(0.8, 201, 10000) == 0.1
    assert p_schedule(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    assert p_schedule(0.8, 30, 300) == pytest.approx(0.8 / 16)  # iteration 30 of 300 → 1000 of 10 000
    assert p_schedule(0.8, 30, 300, rescale=False) == 0.4


def test_eta_pattern():
    for s in (3, 5, 7, 8):
        eta = _eta(s)
        assert eta.shape == (s, s) and abs(float(eta.norm()) - 1) < 1e-5
        assert (eta[: s // 2] > 0).all() and (eta[s // 2:] < 0).all()
        top = eta[: s // 2]
        assert float(top[(s // 2) // 2, s // 2]) == float(top.max())  # peaked at the centre of its half


def test_square_linf_start_is_vertical_stripes():
    x = torch.full((4, 2, 8, 8), 0.5)
    atk = Square(nn.Flatten(), eps=0.1, seed=0)
    start = atk._start(x) - x
    assert torch.allclose(start.abs(), torch.full_like(start, 0.1))
    assert (start == start[:, :, :1]).all(), "one sign per column and channel"
    assert (start > 0).any() and (start < 0).any()


def test_square_queries_only_unfooled_and_respects_budget():
    model = Counting(small_cnn())
    x = torch.rand(16, 1, 12, 12) * 0.2 + 0.4
    y = predictions(model.model, x)
    y[:4] = (y[:4] + 1) % 10  # four samples the model already gets wrong
    atk = Square(model, eps=0.02, n_queries=40, seed=0)
    x_adv = atk(x, y)
    atk.threat.check(x_adv, x)
    assert torch.equal(x_adv[:4], x[:4]), "already-misclassified samples are left alone"
    sizes = model.sizes[model.sizes.index(16):]  # from the clean pass on (the label check may run x[:1] first)
    assert sizes[0] == 16 and sizes[1] == 12, "the clean pass, then the start of the 12 correctly classified"
    assert len(sizes) <= 2 + 40 + 1 and all(a >= b for a, b in zip(sizes[2:], sizes[3:]))
    fooled = predictions(model.model, x_adv[4:]) != y[4:]
    if fooled.any():  # the queried batch shrinks as samples get fooled
        assert sizes[-1] <= 12 - int(fooled.sum()) + 1


@pytest.mark.parametrize("cls,eps", [(Square, 0.05), (SquareL2, 0.5)])
def test_square_budget_seed_and_strength(cls, eps):
    model = small_cnn(1, 3)
    x = torch.rand(12, 3, 16, 16)
    y = predictions(model, x)
    atk = cls(model, eps=eps, n_queries=200, seed=3)
    a, b = atk(x, y), atk(x, y)
    atk.threat.check(a, x)
    assert torch.equal(a, b)
    with torch.no_grad():
        assert float(margin(model(a), y).mean()) < float(margin(model(x), y).mean())
    if cls is SquareL2:  # on the sphere of radius eps (up to clipping to [0,1])
        d = atk.threat.distance(a, x)
        assert float(d.max()) <= eps + 1e-5 and float(d.median()) > 0.8 * eps


def test_square_resample_never_wastes_a_query():
    """With ``resample`` every L∞ proposal changes the image; without it some proposals are no-ops."""
    x = torch.rand(64, 1, 10, 10)
    best = Square(nn.Flatten(), eps=0.1, seed=0)._start(x)
    for resample, expect_noop in ((True, False), (False, True)):
        atk = Square(nn.Flatten(), eps=0.1, resample=resample)
        torch.manual_seed(0)
        noop = [bool(((atk._linf_step(x, best, 0.01) - best).abs() < 1e-7).flatten(1).all(1).any())
                for _ in range(30)]
        assert any(noop) == expect_noop


def test_bad_arguments_name_themselves():
    model = small_cnn()
    for make, word in [(lambda: Square(model, norm="L1"), "norm"), (lambda: Square(model, loss="hinge"), "loss"),
                       (lambda: Square(model, n_queries=0), "n_queries"), (lambda: Square(model, p_init=1.5), "p_init"),
                       (lambda: CW(model, c=0), "c"), (lambda: CW(model, eot_iter=0), "eot_iter"),
                       (lambda: CW(model, eps=-1.0), "eps"), (lambda: DeepFool(model, steps=0), "steps"),
                       (lambda: CWLinf(model, kappa=-1), "kappa")]:
        with pytest.raises(AdvshieldError, match=word):
            make()
    assert Square(model, norm="L2").threat.norm == "l2" and Square(model, norm="linf").threat.norm == "linf"


def test_minimal_norm_unbounded_and_budgeted():
    model = small_cnn()
    x = torch.rand(8, 1, 12, 12)
    y = predictions(model, x)
    free = DeepFool(model)
    assert free.eps is None and free.threat.eps == UNBOUNDED and "eps=None" in repr(free)
    x_free = free(x, y)
    d = free.threat.distance(x_free, x)
    assert (predictions(model, x_free) != y).all() and float(d.min()) > 0
    radius = float(d.median())
    capped = DeepFool.for_budget(model, radius)
    assert capped.eps == radius and f"eps={radius:.4g}" in repr(capped)
    x_cap = capped(x, y)
    capped.threat.check(x_cap, x)
    small = d <= radius
    assert torch.allclose(x_cap[small], x_free[small])  # inside the ball: unchanged
    assert torch.allclose(capped.threat.distance(x_cap, x)[~small], torch.tensor(radius), atol=1e-4)  # scaled down


def test_deepfool_linear_model_is_exact():
    """On an affine classifier one DeepFool step lands (1 + overshoot) times the exact distance to the nearest
    boundary away, along its normal."""
    torch.manual_seed(0)
    lin = nn.Linear(3 * 8 * 8, 5)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.5 + 0.01 * torch.rand(6, 3, 8, 8)  # far from 0 and 1: no clipping
    y = predictions(model, x)
    with torch.no_grad():
        z = model(x)
        w = lin.weight
        dist = torch.tensor([min(float((z[i, y[i]] - z[i, k]).abs() / (w[k] - w[y[i]]).norm())
                                for k in range(5) if k != y[i]) for i in range(6)])
    x_adv = DeepFool(model, overshoot=0.02)(x, y)
    got = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.allclose(got, 1.02 * dist, rtol=1e-3)
    assert (predictions(model, x_adv) != y).all()
    on_boundary = DeepFool(model, overshoot=0.0, steps=1)(x, y)
    assert torch.allclose((on_boundary - x).flatten(1).norm(dim=1), dist, rtol=1e-3)


def test_cw_keeps_smallest_adversarial_or_clean():
    model = small_cnn(2)
    x = torch.rand(8, 1, 12, 12)
    y = predictions(model, x)
    weak = CW(model, c=1e-4, steps=5)(x, y)  # too weak to fool: every sample comes back clean
    assert torch.equal(weak, x)
    strong = CW(model, c=50.0, steps=60, lr=0.05)
    x_adv = strong(x, y)
    fooled = predictions(model, x_adv) != y
    assert fooled.float().mean() >= 0.5
    assert torch.equal(x_adv[~fooled], x[~fooled])


@pytest.mark.parametrize("cls", [CW, DeepFool, CWLinf])
def test_eot_iter_averages_over_forward_passes(cls):
    model = Counting(small_cnn())
    x = torch.rand(4, 1, 12, 12)
    y = predictions(model.model, x)
    kw = {"steps": 2, "eot_iter": 3}
    atk = cls(model, **kw)
    assert atk.eot == 3 and "eot=3" in repr(atk)
    model.sizes.clear()
    atk(x, y)
    one = cls(model, steps=2)
    n3 = len(model.sizes)
    model.sizes.clear()
    one(x, y)
    assert n3 > len(model.sizes), "eot_iter=3 ran no more forward passes than eot_iter=1"


def test_cw_linf_stops_once_fooled():
    model = small_cnn(4)
    x = torch.rand(8, 1, 12, 12)
    y = predictions(model, x)
    atk = CWLinf(model, eps=0.3, alpha=0.05, steps=20, random_start=False)
    x_adv = atk(x, y)
    atk.threat.check(x_adv, x)
    with torch.no_grad():
        m = margin(model(x_adv), y)
    assert (m <= 0.5).float().mean() >= 0.5  # pushed to (or just past) the boundary, not far beyond it
    assert int((predictions(model, x_adv) != y).sum()) >= 4


# -- peer checks against torchattacks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist():
    """(zoo:fmnist-lenet, 500 Fashion-MNIST test images in [0,1], labels)."""
    import advshield
    from advshield.data import load_dataset

    try:
        model = advshield.load_model("zoo:fmnist-lenet").eval()
    except AdvshieldError as e:
        pytest.skip(f"zoo:fmnist-lenet not available: {e}")
    data = load_dataset("fashion-mnist", "test").subset(500)
    x = data.images.float() / 255 if not data.images.is_floating_point() else data.images.float()
    return model, x, data.labels.long()


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return float((predictions(model, x_adv) == y).float().mean())


@needs_fmnist
def test_square_matches_torchattacks_robust_accuracy(fmnist):
    """500 images, L∞ 0.1, 300 queries, both seeded: without ``resample`` (torchattacks' proposal rule) the robust
    accuracy is within 1 point of torchattacks'; the default (the authors' rule) is at least as strong."""
    ta = pytest.importorskip("torchattacks")
    model, x, y = fmnist
    theirs = robust_accuracy(model, ta.Square(model, eps=0.1, n_queries=300, seed=0)(x, y), y)
    plain = Square(model, eps=0.1, n_queries=300, seed=0, resample=False)
    ours = robust_accuracy(model, plain(x, y), y)
    assert abs(ours - theirs) <= 0.01, f"robust accuracy: ours {ours:.3f}, torchattacks {theirs:.3f}"
    assert robust_accuracy(model, x, y) - ours > 0.5, "the attack barely worked"
    default = robust_accuracy(model, Square(model, eps=0.1, n_queries=300, seed=0)(x, y), y)
    assert default <= theirs + 0.01, f"resample=True: {default:.3f} vs torchattacks {theirs:.3f}"


@needs_fmnist
def test_cw_matches_torchattacks(fmnist):
    """200 images at torchattacks' defaults: same success rate and median L2 (and nearly the same images)."""
    ta = pytest.importorskip("torchattacks")
    model, x, y = fmnist
    x, y = x[:200], y[:200]
    a, b = CW(model)(x, y), ta.CW(model)(x, y)
    sa, sb = predictions(model, a) != y, predictions(model, b) != y
    assert abs(float(sa.float().mean()) - float(sb.float().mean())) <= 0.02
    assert float(sa.float().mean()) > 0.3, "CW fooled almost nothing"
    la, lb = ((t - x).flatten(1).norm(dim=1) for t in (a, b))
    assert abs(float(la[sa].median()) / float(lb[sb].median()) - 1) <= 0.05
    assert float(((a - b).abs() <= 1e-3).float().mean()) >= 0.99


@needs_fmnist
def test_deepfool_matches_torchattacks(fmnist):
    """40 images, 10 steps. ``box_aware=False`` is torchattacks' algorithm: the same images. The box-aware default
    fools at least as many, with L2 within 10 % (median) on the samples both fool."""
    ta = pytest.importorskip("torchattacks")
    model, x, y = fmnist
    x, y = x[:40], y[:40]
    theirs = ta.DeepFool(model, steps=10)(x, y)
    plain = DeepFool(model, steps=10, box_aware=False)(x, y)
    assert float(((plain - theirs).abs() <= 1e-4).float().mean()) >= 0.998
    ours = DeepFool(model, steps=10)(x, y)
    with torch.no_grad():
        m_ours, m_theirs = margin(model(ours), y), margin(model(theirs), y)
    fooled_ours, fooled_theirs = m_ours < 0, m_theirs < 0
    assert float(fooled_ours.float().mean()) >= float(fooled_theirs.float().mean())
    assert float(fooled_ours.float().mean()) >= 0.95
    both = fooled_ours & fooled_theirs
    assert int(both.sum()) >= 5
    la, lb = ((t - x).flatten(1).norm(dim=1)[both] for t in (ours, theirs))
    assert float(la.median()) <= 1.1 * float(lb.median())
