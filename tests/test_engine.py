"""The engine's metrics on a toy problem whose answers are worked out by hand."""
import pytest
import torch
from torch import nn

from advshield.attacks import Attack, BudgetError, ThreatModel
from advshield.defenses import Defense, Identity
from advshield.eval.engine import Engine
from advshield.eval.metrics import restoration_accuracy
from advshield.report.tables import grid_report

X = torch.tensor([0.1, 0.4, 0.6, 0.9, 0.35]).view(5, 1, 1, 1)
Y = torch.tensor([0, 0, 1, 1, 1])


class Threshold(nn.Module):
    """Predicts class 1 when the single pixel exceeds 0.5."""

    def forward(self, x):
        v = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - v, v - 0.5], 1)


class Shift(Attack):
    calls = 0

    def __init__(self, model, d, eps=0.2, clamp=True):
        super().__init__(model, ThreatModel("linf", eps))
        self.d, self.clamp = d, clamp

    def perturb(self, x, y):
        Shift.calls += 1
        out = x + self.d
        return out.clamp(0, 1) if self.clamp else out


class Darken(Defense):
    def forward(self, x):
        return (x - 0.1).clamp(0, 1)


def batches(bs):
    return [(X[i:i + bs], Y[i:i + bs]) for i in range(0, len(X), bs)]


def make_engine(**kw):
    return Engine(targets={"toy": Threshold()},
                  attacks={"up": lambda m: Shift(m, 0.2), "down": lambda m: Shift(m, -0.2)},
                  defenses={"none": Identity(), "darken": Darken()}, **kw)


@pytest.mark.parametrize("bs", [1, 2, 5])
def test_metrics_match_hand_computed_values(bs):
    res = make_engine().run(batches(bs))
    rows = {(r["attack"], r["defense"]): r for r in res.rows()}
    up = rows[("up", "none")]
    assert up["setting"] == "white-box" and up["n"] == 5
    assert up["clean_accuracy"] == pytest.approx(0.8)
    assert up["robust_accuracy"] == pytest.approx(0.8)
    assert up["attack_success_rate"] == pytest.approx(0.25)  # 1 of the 4 clean-correct samples flipped
    assert up["fooling_rate"] == pytest.approx(0.4)  # samples 1 and 4 change prediction
    assert up["restoration_accuracy"] == pytest.approx(1.0)
    dark = rows[("up", "darken")]
    assert dark["setting"] == "defense-unaware"
    assert dark["clean_accuracy"] == pytest.approx(0.6) and dark["robust_accuracy"] == pytest.approx(0.8)
    assert dark["restoration_accuracy"] == pytest.approx((0.6 + 0.8) / (2 * 0.8))
    worst = {r["defense"]: r for r in res.worst_case()}
    assert worst["none"]["worst_case_accuracy"] == pytest.approx(0.4)
    assert sorted(worst["none"]["attacks"]) == ["down@toy", "up@toy"]
    assert torch.equal(res.labels, Y)


def test_transfer_rows_are_labelled():
    eng = Engine(targets={"a": Threshold(), "b": Threshold()}, attacks={"up": lambda m: Shift(m, 0.2)})
    settings = {(r["source"], r["target"]): r["setting"] for r in eng.run(batches(5)).rows()}
    assert settings == {("a", "a"): "white-box", ("a", "b"): "transfer", ("b", "a"): "transfer",
                        ("b", "b"): "white-box"}


def test_each_attack_is_crafted_once_per_source_and_batch_then_cached(tmp_path):
    Shift.calls = 0
    eng = Engine(targets={"a": Threshold(), "b": Threshold()}, attacks={"up": lambda m: Shift(m, 0.2)},
                 defenses={"none": Identity(), "darken": Darken()}, cache_dir=tmp_path)
    eng.run(batches(2))
    assert Shift.calls == 2 * 3  # 2 sources × 3 batches, shared by 2 targets × 2 defenses
    make = lambda: Engine(targets={"a": Threshold(), "b": Threshold()}, attacks={"up": lambda m: Shift(m, 0.2)},  # noqa: E731
                          defenses={"none": Identity(), "darken": Darken()}, cache_dir=tmp_path)
    res = make().run(batches(2))
    assert Shift.calls == 6  # everything came from the cache
    assert res.rows()[0]["robust_accuracy"] == pytest.approx(0.8)


@pytest.mark.parametrize("attack,msg", [
    (lambda m: Shift(m, 0.3, eps=0.2), "exceeds eps"),
    (lambda m: Shift(m, 0.2, clamp=False), "leaves"),
    (lambda m: Shift(m, float("nan")), "NaN"),
])
def test_budget_range_and_nan_are_checked_after_every_attack(attack, msg):
    eng = Engine(targets={"toy": Threshold()}, attacks={"bad": attack})
    with pytest.raises(BudgetError, match=msg):
        eng.run(batches(5))


def test_l2_threat_model_projection_and_check():
    tm = ThreatModel("l2", eps=1.0)
    x = torch.zeros(2, 1, 2, 2)
    far = torch.full_like(x, 1.0)  # L2 distance 2
    proj = tm.project(far, x)
    assert torch.allclose(tm.distance(proj, x), torch.ones(2))
    tm.check(proj, x)
    with pytest.raises(BudgetError):
        tm.check(far, x)


def test_restoration_accuracy_definition():
    assert restoration_accuracy(0.9, 0.8, 0.85) == pytest.approx(1.7 / 1.7)
    assert restoration_accuracy(0.5, 0.5, 1.0) == pytest.approx(0.5)


def test_report_holds_tables_and_definitions():
    res = make_engine().run(batches(5))
    md = grid_report(res, "toy")
    assert "## Clean accuracy" in md and "ASR" in md and "Restoration accuracy" in md
    assert "| up ← toy | 0.800* (25.0%) |" in md
    js = res.to_json()
    assert len(js["rows"]) == 4 and {"meta", "attacks", "worst_case"} <= set(js)


class Noisy(Defense):
    randomized = True

    def forward(self, x):
        return (x + 0.01 * torch.randn_like(x)).clamp(0, 1)


def test_adaptive_cells_attack_through_each_defense():
    from advshield.attacks import PGD

    built = []

    def factory(m):
        atk = PGD(m, eps=0.2, alpha=0.05, steps=5, random_start=False)
        built.append((m, atk))
        return atk

    eng = Engine(targets={"toy": Threshold()}, attacks={"pgd": factory},
                 defenses={"none": Identity(), "darken": Darken(), "noisy": Noisy()}, adaptive=("full", "bpda"), eot=3)
    res = eng.run(batches(5))
    settings = {(r["source"], r["defense"]): r["setting"] for r in res.rows()}
    assert settings[("adaptive-full", "darken")] == "adaptive-full"
    assert settings[("adaptive-bpda", "noisy")] == "adaptive-bpda"
    assert ("adaptive-full", "none") not in settings  # the undefended model needs no adaptive attack
    from advshield.defenses.base import Defended

    adaptive = [(m, a) for m, a in built if isinstance(m, Defended)]
    assert len(adaptive) == 4 and {a.eot for m, a in adaptive if isinstance(m.defense, Noisy)} == {3}
    assert {m.use_bpda for m, a in adaptive} == {True, False}
    md = grid_report(res, "toy")
    assert "pgd ← adaptive-full" in md


class Flip(nn.Module):
    """Predicts class 1 when the single pixel is below 0.5 (the opposite of Threshold)."""

    def forward(self, x):
        return -Threshold()(x)


@pytest.mark.parametrize("bs", [1, 5])
def test_universal_perturbation_cells_and_restoration_against_a_baseline(bs):
    delta = torch.full((1, 1, 1), 0.3)
    eng = Engine(targets={"toy": Threshold(), "flip": Flip()}, attacks={}, defenses={"none": Identity()},
                 perturbations={"uap": delta}, baselines={"flip": Threshold()})
    res = eng.run(batches(bs))
    rows = {(r["attack"], r["source"], r["target"]): r for r in res.rows()}
    r = rows[("uap", "universal", "toy")]
    assert r["setting"] == "universal"
    # x + 0.3 clamped: [0.4, 0.7, 0.9, 1.0, 0.65] → predictions [0, 1, 1, 1, 1]: 4/5 correct
    assert r["robust_accuracy"] == pytest.approx(0.8)
    assert r["fooling_rate"] == pytest.approx(0.4)  # clean predictions [0, 0, 1, 1, 0]
    f = rows[("uap", "universal", "flip")]
    # flip: clean predictions [1, 1, 0, 0, 1] (1/5 correct), perturbed [1, 0, 0, 0, 0] (1/5)
    assert (f["clean_accuracy"], f["robust_accuracy"]) == (pytest.approx(0.2), pytest.approx(0.2))
    assert f["undefended_clean_accuracy"] == pytest.approx(0.8)  # the baseline's clean accuracy
    assert f["restoration_accuracy"] == pytest.approx((f["clean_accuracy"] + f["robust_accuracy"]) / (2 * 0.8))
    assert "universal" in res.attack_info["uap"]
    with pytest.raises(ValueError, match="C×H×W"):
        Engine(targets={"toy": Threshold()}, attacks={}, perturbations={"bad": torch.zeros(1, 1, 1, 1)})


def test_grid_builds_randomized_defenses_with_its_seed():
    from advshield.defenses.base import build_defense

    x = torch.rand(2, 1, 28, 28)
    for name in ("tvm", "resize-pad"):
        assert torch.equal(build_defense(name, 3)(x), build_defense(name, 3)(x))  # a rerun repeats exactly
    assert build_defense("jpeg", 3)(x).shape == x.shape  # defenses without a seed build as before


class Counting(Defense):
    """Randomized by construction: each call adds (calls × 0.01) to the image; ``restart_noise`` resets the count, as
    a seeded defense restarts its generator."""

    randomized = True

    def __init__(self):
        super().__init__()
        self.calls = 0

    def restart_noise(self, stream):
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return (x + 0.01 * self.calls).clamp(0, 1)


def test_a_batch_does_not_depend_on_the_batches_before_it():
    """What torchrun sharding relies on: after the probe, batch b gives the same results whether or not other
    batches ran first — every attack is built (and has counted its model's classes, a forward pass through the
    defense) before any batch, so no first-use draw lands inside one."""
    from advshield.attacks.fgsm import FGSM

    def engine():
        e = Engine(targets={"toy": Threshold()}, attacks={"fgsm": lambda m: FGSM(m, eps=0.2)},
                   defenses={"none": Identity(), "count": Counting()}, adaptive=("bpda",), eot=2, draws=2, seed=0)
        e._probe(X[:2])
        return e

    first, alone = engine(), engine()
    assert set(first._built) == {("fgsm", "toy"), ("fgsm", "adaptive-bpda|count|toy")}
    assert all(atk._classes is not None for atk in first._built.values())
    first._batch(X[:2], Y[:2], 0)
    a, b = (e._batch(X[2:], Y[2:], 2) for e in (first, alone))
    assert first.defenses["count"].calls == alone.defenses["count"].calls  # the same draws inside the batch
    assert a["adv"] and all(torch.equal(a["adv"][k], b["adv"][k]) for k in a["adv"])
