"""The contract every registered attack keeps (parametrised over all names in ATTACKS), plus statistical checks of
the random parts (random starts, input diversity) and unit checks of TI smoothing, momentum, SSP and Ensemble.

Models are tiny CNNs; the accuracy-drop checks use one trained for a few seconds on synthetic band images."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_images
from torch import nn

from advshield.attacks import (
    DIFGSM,
    MIFGSM,
    PGD,
    PGDL2,
    RFGSM,
    SSP,
    TIFGSM,
    Attack,
    Ensemble,
    input_diversity,
    ti_kernel,
)
from advshield.registry import ATTACKS

EPS, EPS_L2 = 0.1, 1.0
DETERMINISTIC = {"fgsm", "bim", "mifgsm"}
RANDOM = {"pgd", "pgdl2", "rfgsm", "difgsm", "tifgsm", "mi-di", "mi-di-ti", "ssp", "apgd", "apgdt", "apgd-l2",
          "apgdt-l2"}
LABEL_FREE = {"ssp"}
UNTARGETED_ONLY = {"autoattack"}  # an ensemble measuring robust accuracy: no target modes
RANDOM |= {"square", "square-l2", "cw-linf"}
DETERMINISTIC |= {"cw", "deepfool"}
FEWER_QUERIES = {"square": 1000, "square-l2": 1000}  # score-based: a smaller query budget keeps the contract fast
NAMES = ATTACKS.names()


class Tiny(nn.Module):
    """conv-BN-ReLU-pool, conv-ReLU, adaptive pool 4×4, dropout, linear. Any channel count and image size ≥ 8."""

    default_feature_layer = "body.relu2"

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(channels, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2), conv2=nn.Conv2d(8, 16, 3, padding=1), relu2=nn.ReLU(),
            pool2=nn.AdaptiveAvgPool2d(4)))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def band_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic band images N×1×28×28 at low contrast (in [0.4, 0.6]) so that eps = 0.1 can flip classes."""
    xs, ys = synthetic_images(n, seed)
    return 0.4 + 0.2 * torch.tensor(xs).float().div(255).unsqueeze(1), torch.tensor(ys).long()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(Tiny 1-channel model trained for ~60 Adam steps, 16 test images it classifies well, their labels)."""
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
    xt, yt = band_data(16, 9)
    return model, xt, yt


@pytest.fixture(scope="module")
def rgb() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(random-weight 3-channel Tiny, 8 random images 3×32×32, its own predictions)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Tiny(3).eval()
        x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.fixture(params=["1ch", "3ch"])
def setup(request, trained, rgb):
    if request.param == "1ch":
        model, x, y = trained
        return model, x[:8], y[:8]
    return rgb


def make(name: str, model: nn.Module, **kw) -> Attack:
    """The registered attack at its paper defaults for the test budget (L∞ 0.1, L2 1.0)."""
    cls = ATTACKS.get(name)
    if name in FEWER_QUERIES:
        kw = {"n_queries": FEWER_QUERIES[name], **kw}
    return cls.for_budget(model, EPS_L2 if getattr(cls, "norm", "linf") == "l2" else EPS, **kw)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# -- the contract, for every registered attack ---------------------------------------------------------------


def test_registry_entries_have_help_and_for_budget():
    assert {"fgsm", "bim", "pgd", "pgdl2", "rfgsm", "mifgsm", "difgsm", "tifgsm", "mi-di", "mi-di-ti",
            "ssp"} <= set(NAMES)
    for name in NAMES:
        help_line = ATTACKS.help(name)
        assert help_line and "\n" not in help_line, name
        assert callable(getattr(ATTACKS.get(name), "for_budget", None)), name
    assert ATTACKS.get("dim") is ATTACKS.get("mi-di") and ATTACKS.get("dim-ti") is ATTACKS.get("mi-di-ti")
    assert "dim" not in NAMES and "dim-ti" not in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_shape_range_budget(name, setup):
    model, x, y = setup
    x0 = x.clone()
    atk = make(name, model, seed=0)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    atk.threat.check(x_adv, x)
    assert atk.threat.eps == (EPS_L2 if atk.threat.norm == "l2" else EPS)
    assert not x_adv.requires_grad
    assert torch.equal(x, x0), "the attack modified its input"
    assert not torch.equal(x_adv, x), "the attack did nothing"


@pytest.mark.parametrize("name", NAMES)
def test_seed_determinism(name, trained):
    model, x, y = trained
    x, y = x[:8], y[:8]
    atk = make(name, model)
    rng_before = torch.get_rng_state()
    outs = {}
    for seed in (0, 0, 1):
        atk.seed = seed
        outs.setdefault(seed, []).append(atk(x, y))
    assert torch.equal(torch.get_rng_state(), rng_before), "a seeded attack changed the global RNG state"
    assert torch.equal(outs[0][0], outs[0][1]), "same seed, different output"
    if name in RANDOM:
        assert not torch.equal(outs[0][0], outs[1][0]), "different seeds, same output for a random attack"
    elif name in DETERMINISTIC:
        assert torch.equal(outs[0][0], outs[1][0]), "a deterministic attack depends on the seed"


@pytest.mark.parametrize("name", NAMES)
def test_model_state_restored(name):
    torch.manual_seed(3)
    model = Tiny(1)
    model.train()
    model.body.bn1.eval()  # a mixed state must come back exactly
    model.body.conv1.bias.requires_grad_(False)
    model.head[2].weight.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    make(name, model, seed=0)(x, torch.arange(4))
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed (BN statistics updated or weights touched?)"
    assert all(p.grad is None for p in model.parameters()), "the attack left .grad on the parameters"
    assert not any(m._forward_hooks for m in model.modules()), "a forward hook was left behind"


@pytest.mark.parametrize("name", NAMES)
def test_y_none(name, setup):
    """``atk(x)`` works; label-based attacks then attack the model's own predictions, SSP ignores labels."""
    model, x, y = setup
    atk = make(name, model, seed=4)
    x_adv = atk(x)
    atk.threat.check(x_adv, x)
    if name in LABEL_FREE:
        wrong = (y + 3) % 10
        assert torch.equal(x_adv, atk(x, wrong))
    else:
        with torch.no_grad():
            pred = model(x).argmax(1)
        assert torch.equal(x_adv, atk(x, pred))


@pytest.mark.parametrize("name", NAMES)
def test_works_inside_no_grad(name, trained):
    model, x, y = trained
    atk = make(name, model, seed=0)
    with torch.no_grad():
        x_adv = atk(x[:4], y[:4])
    assert torch.equal(x_adv, atk(x[:4], y[:4]))


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_drops(name, trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    assert clean >= 0.9, "the fixture model did not train"
    adv = accuracy(model, make(name, model, seed=0)(x, y), y)
    assert adv <= clean - 0.4, f"{name}: accuracy {clean:.2f} → {adv:.2f}"


# -- targeted modes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(NAMES) - LABEL_FREE - UNTARGETED_ONLY))
def test_targeted_random_never_label(name, trained):
    model, x, _ = trained
    atk = make(name, model, seed=0).set_target_mode("random")
    seen = []
    atk.perturb = lambda xx, yy: (seen.append(yy), xx.clone())[1]  # spy: record the targets only
    labels = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(0))
    xs = torch.zeros(200, 1, 28, 28)
    atk(xs, labels)
    assert (seen[0] != labels).all()
    assert len(seen[0].unique()) > 5  # targets spread over the classes
    atk(x)  # y=None: never the model's own prediction
    with torch.no_grad():
        assert (seen[1] != model(x).argmax(1)).all()


@pytest.mark.parametrize("name", sorted(set(NAMES) - LABEL_FREE - UNTARGETED_ONLY))
def test_targeted_given_raises_target_probability(name, trained):
    model, x, y = trained
    target = (y + 1) % 10
    atk = make(name, model, seed=0).set_target_mode("given")
    x_adv = atk(x, target)
    atk.threat.check(x_adv, x)
    with torch.no_grad():
        p_clean = model(x).softmax(1).gather(1, target[:, None]).mean()
        p_adv = model(x_adv).softmax(1).gather(1, target[:, None]).mean()
    assert p_adv > p_clean + 0.05, f"{name}: target probability {float(p_clean):.3f} → {float(p_adv):.3f}"


@pytest.mark.parametrize("name", sorted(UNTARGETED_ONLY))
def test_untargeted_only_attacks_refuse_target_modes(name, trained):
    model = trained[0]
    for mode in ("random", "given", "least_likely"):
        with pytest.raises(ValueError, match="untargeted"):
            make(name, model, seed=0).set_target_mode(mode)


def test_ssp_rejects_targeted_modes(trained):
    model, x, _ = trained
    atk = SSP(model, eps=EPS, steps=2)
    for mode in ("random", "given", "least_likely"):
        with pytest.raises(ValueError, match="label-free"):
            atk.set_target_mode(mode)
    atk.set_target_mode(None)
    atk.target_mode = "random"  # set behind its back
    with pytest.raises(ValueError, match="label-free"):
        atk(x)


# -- random parts: distributions, budget, reproducibility ------------------------------------------------------


def test_linf_uniform_random_start():
    x = torch.full((64, 1, 28, 28), 0.5)
    eps = 0.1
    delta = PGD(nn.Flatten(), eps=eps, steps=0, random_start=True, seed=0)(x, torch.zeros(64, dtype=torch.long)) - x
    assert float(delta.abs().max()) <= eps + 1e-6
    assert abs(float(delta.mean())) < 0.01 * eps
    assert abs(float(delta.std()) - eps / 3 ** 0.5) < 0.02 * eps
    hist = torch.histc(delta, bins=4, min=-eps, max=eps) / delta.numel()
    assert torch.allclose(hist, torch.full((4,), 0.25), atol=0.01)


def test_l2_random_start_inside_ball():
    x = torch.full((400, 1, 8, 8), 0.5)
    delta = PGDL2(nn.Flatten(), eps=1.0, steps=0, random_start=True, seed=0)(x, torch.zeros(400, dtype=torch.long))
    norms = (delta - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5
    assert abs(float(norms.mean()) - 0.5) < 0.05  # radius uniform in [0, eps]


@pytest.mark.parametrize("make_start,size", [
    (lambda: RFGSM(nn.Flatten(), eps=0.1, alpha=0.03, steps=0, seed=0), 0.03),
    (lambda: SSP(nn.Identity(), eps=0.1, steps=0, seed=0), 0.1),
])
def test_sign_random_starts(make_start, size):
    """R+FGSM starts at x ± alpha, SSP at x ± eps, each sign a fair coin; clipped to [0,1] at the edges."""
    x = torch.full((32, 3, 16, 16), 0.5)
    start = make_start()(x, torch.zeros(32, dtype=torch.long))
    delta = start - x
    assert torch.allclose(delta.abs(), torch.full_like(delta, size), atol=1e-6)
    assert abs(float((delta > 0).float().mean()) - 0.5) < 0.02
    edge = torch.zeros(4, 1, 8, 8)
    out = make_start()(edge, torch.zeros(4, dtype=torch.long))
    assert float(out.min()) >= 0 and float(out.max()) <= size + 1e-6


def _bbox(img: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the non-zero region of a 2-D map."""
    rows, cols = img.abs().sum(1).nonzero(), img.abs().sum(0).nonzero()
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("side,rate", [(28, 0.9), (32, 0.9), (28, 1.15)])
def test_input_diversity_statistics(side, rate):
    x = torch.ones(2, 3, side, side)
    out_side = side if rate < 1 else int(side * rate)
    lo, hi = (int(side * rate), side) if rate < 1 else (side, int(side * rate))
    applied, sizes, draws = 0, set(), []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(400):
            out = input_diversity(x, rate, 0.7)
            if out is x:
                continue
            applied += 1
            assert out.shape == (2, 3, out_side, out_side)
            assert torch.equal(out[0], out[1]) and torch.equal(out[:, 0], out[:, 2])  # one draw per batch
            top, left, h, w = _bbox(out[0, 0])
            assert h == w and lo <= h < hi
            assert 0 <= top < out_side - h and 0 <= left < out_side - w
            assert float(out.max()) <= 1 + 1e-6 and float(out.min()) >= 0
            sizes.add(h)
            draws.append((top, left, h))
    assert abs(applied / 400 - 0.7) < 0.08
    assert sizes == set(range(lo, hi))
    with torch.random.fork_rng(devices=[]):  # reproducible under a seed
        torch.manual_seed(0)
        again = [_bbox(o[0, 0])[:2] + (_bbox(o[0, 0])[2],) for o in (input_diversity(x, rate, 0.7)
                                                                     for _ in range(400)) if o is not x]
    assert again == draws


def test_input_diversity_edge_cases():
    x = torch.rand(2, 1, 28, 28)
    assert input_diversity(x, 0.9, 0.0) is x
    assert input_diversity(x, 1.0, 1.0) is x
    assert input_diversity(torch.rand(1, 1, 2, 2), 0.9, 1.0).shape == (1, 1, 2, 2)  # too small: unchanged
    rect = input_diversity(torch.rand(1, 1, 20, 30), 0.9, 1.0)
    assert rect.shape == (1, 1, 20, 30)


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_diverse_attack_budget_and_reproducibility(trained, rate):
    model, x, y = trained
    atk = DIFGSM(model, eps=EPS, alpha=EPS / 4, steps=5, decay=1.0, resize_rate=rate, diversity_prob=1.0,
                 random_start=True, seed=11)
    a, b = atk(x, y), atk(x, y)
    assert torch.equal(a, b)
    atk.threat.check(a, x)
    atk.seed = 12
    assert not torch.equal(a, atk(x, y))


# -- TI smoothing, momentum, SSP, ensemble -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaussian", "linear", "uniform"])
def test_ti_kernel_shape_and_sum(name):
    k = ti_kernel(name, 7, 3)
    assert k.shape == (7, 7) and k.dtype == torch.float32
    assert abs(float(k.sum()) - 1) < 1e-6
    assert torch.allclose(k, k.t()) and torch.allclose(k, k.flip(0))
    assert float(k[3, 3]) == float(k.max())
    with pytest.raises(ValueError):
        ti_kernel("box", 7)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_ti_smoothing_is_depthwise_same_size(channels):
    atk = TIFGSM(nn.Flatten(), len_kernel=5, nsig=2)
    grad = torch.zeros(2, channels, 11, 11)
    grad[:, :, 5, 5] = torch.arange(1, channels + 1, dtype=torch.float32)  # impulse of height c+1 per channel
    out = atk.smooth(grad)
    assert out.shape == grad.shape
    for c in range(channels):
        assert torch.allclose(out[0, c, 3:8, 3:8], (c + 1) * atk.kernel, atol=1e-7)
    assert float(out[0, :, :3].abs().sum()) == 0
    atk.smooth(grad)
    atk.smooth(torch.zeros(1, channels + 1, 9, 9))
    assert len(atk._weights) == 2  # one cached weight per (device, dtype, channels)


def test_momentum_state_reset_between_calls(trained):
    model, x, y = trained
    atk = MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=5)
    fresh = MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=5)(x[8:], y[8:])
    atk(x[:8], y[:8])
    assert atk._momentum is None
    assert torch.equal(atk(x[8:], y[8:]), fresh)


def test_momentum_zero_decay_is_bim(trained):
    from advshield.attacks import BIM

    model, x, y = trained
    assert torch.equal(MIFGSM(model, eps=EPS, alpha=0.02, steps=5, decay=0.0)(x, y),
                       BIM(model, eps=EPS, alpha=0.02, steps=5)(x, y))


def test_for_budget_settings(trained):
    model = trained[0]
    r = RFGSM.for_budget(model, 0.06)
    assert (r.alpha, r.steps) == (pytest.approx(0.02), 1)
    m = ATTACKS.get("mifgsm").for_budget(model, 0.1)
    assert (m.alpha, m.steps, m.decay) == (pytest.approx(0.01), 10, 1.0)
    d = ATTACKS.get("difgsm").for_budget(model, 0.1)
    assert (d.diversity_prob, d.decay) == (0.7, 0.0)
    md = ATTACKS.get("mi-di").for_budget(model, 0.1)
    assert (md.diversity_prob, md.decay) == (0.7, 1.0)
    mdt = ATTACKS.get("mi-di-ti").for_budget(model, 0.1, len_kernel=5)
    assert (mdt.diversity_prob, mdt.decay, mdt.kernel.shape) == (0.7, 1.0, (5, 5))
    s = SSP.for_budget(model, 0.1, steps=7)
    assert (s.steps, s.alpha, s.eps) == (7, 0.01, 0.1)


class Features(nn.Module):
    """A pure feature extractor (no ``default_feature_layer``): N×1×28×28 → N×8×14×14."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def feature_distance(distance: str, a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(1), b.flatten(1)
    d = {"mse": lambda: (a - b).pow(2).mean(1), "mae": lambda: (a - b).abs().mean(1),
         "cosine": lambda: 1 - F.cosine_similarity(a, b, dim=1)}[distance]()
    return float(d.mean())


@pytest.mark.parametrize("distance", ["mse", "mae", "cosine"])
def test_ssp_increases_feature_distance(distance, trained):
    """From the random start (x ± eps), the sign-gradient steps increase the chosen distance well beyond it."""
    x = trained[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        feats = Features().eval()
    x_adv = SSP(feats, eps=EPS, alpha=0.01, steps=30, distance=distance, seed=0)(x)
    x_start = SSP(feats, eps=EPS, alpha=0.01, steps=0, distance=distance, seed=0)(x)
    with torch.no_grad():
        f0 = feats(x)
        d_adv, d_start = (feature_distance(distance, feats(z), f0) for z in (x_adv, x_start))
    assert d_adv > 1.4 * d_start > 0


def test_ssp_layer_hook_skips_the_head(trained):
    model, x, _ = trained
    calls = []
    handle = model.head.register_forward_hook(lambda *a: calls.append(1))
    try:
        atk = SSP(model, eps=EPS, steps=3, seed=0)  # default layer: body.relu2
        assert atk.layer == "body.relu2"
        atk(x)
        assert not calls, "SSP ran the classifier head"
        explicit = SSP(model, eps=EPS, steps=3, seed=0, layer="body.relu1")(x)
        atk.threat.check(explicit, x)
    finally:
        handle.remove()
    assert not model.body.relu2._forward_hooks
    with pytest.raises(ValueError, match="no module"):
        SSP(model, layer="body.nope")
    with pytest.raises(ValueError, match="distance"):
        SSP(model, distance="l7")


def test_ensemble_averages_weighted_logits(trained):
    torch.manual_seed(0)
    m1, m2 = Tiny(1).eval(), Tiny(1).eval()
    x = trained[1][:4]
    ens = Ensemble([m1, m2], weights=[1, 3])
    with torch.no_grad():
        assert torch.allclose(ens(x), 0.25 * m1(x) + 0.75 * m2(x), atol=1e-6)
        assert torch.allclose(Ensemble([m1, m2])(x), (m1(x) + m2(x)) / 2, atol=1e-6)
    for bad in ([1], [-1, 2], [0, 0]):
        with pytest.raises(ValueError):
            Ensemble([m1, m2], weights=bad)
    with pytest.raises(ValueError):
        Ensemble([])


def test_ensemble_as_attack_model(trained):
    model, x, y = trained
    torch.manual_seed(2)
    other = Tiny(1)
    other.train()
    ens = Ensemble([model, other])
    x_adv = PGD(ens, eps=EPS, alpha=0.02, steps=5, seed=0)(x, y)
    PGD(ens, eps=EPS).threat.check(x_adv, x)
    assert other.training and not model.training  # members' modes restored individually
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
