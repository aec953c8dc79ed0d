"""Library ergonomics: bad API calls fail at once with a one-line AdvshieldError naming the argument, evaluate()
takes its data in every documented form with identical results, and reprs show the settings."""
from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import TensorDataset as TorchTensorDataset

from advshield.attacks import BIM, DIFGSM, FGSM, MIFGSM, PGD, PGDL2, RFGSM, SPGD, TIFGSM, UAP, Ensemble
from advshield.attacks.universal import apply_perturbation, fooling_rate
from advshield.data import TensorDataset
from advshield.defenses import Defense
from advshield.errors import AdvshieldError
from advshield.eval.grid import evaluate
from advshield.registry import ATTACKS, UNIVERSAL

pytestmark = pytest.mark.usefixtures("one_thread")

N, SIDE, CLASSES = 10, 8, 10


def tiny_model(seed: int = 0) -> nn.Module:
    """1×8×8 images → 10 logits: a conv (so FFF-style hooks have something) and a linear head."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIDE * SIDE, CLASSES))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def images_u8(n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def labels(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(seed))


X = images_u8().float() / 255
Y = labels()
MODEL = tiny_model()


def raises_naming(arg: str, fn) -> AdvshieldError:
    """``fn()`` raises an AdvshieldError (a ValueError) whose one-line message names ``arg`` as a word."""
    with pytest.raises(AdvshieldError) as e:
        fn()
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "\n" not in msg and "\x1b" not in msg, msg
    assert re.search(rf"(?<![\w-]){re.escape(arg)}(?![\w-])", msg), f"{arg!r} not named in: {msg}"
    return e.value


# -- constructors ------------------------------------------------------------------------------------------------
BAD_SETTINGS = {
    "eps-nan": ("eps", lambda: PGD(MODEL, eps=float("nan"))),
    "eps-inf": ("eps", lambda: PGD(MODEL, eps=float("inf"))),
    "eps-negative": ("eps", lambda: PGD(MODEL, eps=-1)),
    "eps-zero": ("eps", lambda: FGSM(MODEL, eps=0)),
    "eps-linf-above-1": ("eps", lambda: BIM(MODEL, eps=2)),
    "eps-l2-nan": ("eps", lambda: PGDL2(MODEL, eps=float("nan"))),
    "eps-string": ("eps", lambda: PGD(MODEL, eps="0.1")),
    "eps-for-budget-nan": ("eps", lambda: ATTACKS.get("mi-di").for_budget(MODEL, float("nan"))),
    "steps-negative": ("steps", lambda: PGD(MODEL, steps=-3)),
    "steps-zero-no-random-start": ("steps", lambda: BIM(MODEL, steps=0)),
    "steps-fraction": ("steps", lambda: PGD(MODEL, steps=2.5)),
    "alpha-nan": ("alpha", lambda: PGD(MODEL, alpha=float("nan"))),
    "alpha-negative": ("alpha", lambda: BIM(MODEL, alpha=-0.1)),
    "rfgsm-alpha-above-eps": ("alpha", lambda: RFGSM(MODEL, eps=0.1, alpha=0.2)),
    "decay-above-1": ("decay", lambda: MIFGSM(MODEL, decay=1.5)),
    "decay-nan": ("decay", lambda: MIFGSM(MODEL, decay=float("nan"))),
    "diversity-prob": ("diversity_prob", lambda: DIFGSM(MODEL, diversity_prob=-0.1)),
    "resize-rate": ("resize_rate", lambda: DIFGSM(MODEL, resize_rate=0)),
    "resize-mode": ("resize_mode", lambda: DIFGSM(MODEL, resize_mode="cubic")),
    "len-kernel-even": ("len_kernel", lambda: TIFGSM(MODEL, len_kernel=4)),
    "len-kernel-zero": ("len_kernel", lambda: TIFGSM(MODEL, len_kernel=0)),
    "nsig-zero": ("nsig", lambda: TIFGSM(MODEL, nsig=0)),
    "kernel-name": ("kernel_name", lambda: TIFGSM(MODEL, kernel_name="box", len_kernel=3)),
    "seed-float": ("seed", lambda: PGD(MODEL, seed=1.5)),
    "model-not-module": ("model", lambda: PGD(lambda x: x)),
    "target-mode": ("mode", lambda: PGD(MODEL).set_target_mode("bogus")),
    "ensemble-weights": ("weights", lambda: Ensemble([MODEL, MODEL], weights=[1, float("nan")])),
    "universal-eps-nan": ("eps", lambda: UAP(MODEL, eps=float("nan"))),
    "universal-eps-zero": ("eps", lambda: SPGD(MODEL, eps=0)),
    "universal-eps-linf-above-1": ("eps", lambda: UAP(MODEL, eps=2)),
    "universal-norm": ("norm", lambda: UAP(MODEL, eps=0.1, norm="l1")),
    "universal-epochs": ("epochs", lambda: SPGD(MODEL, epochs=0)),
    "universal-batch-size": ("batch_size", lambda: SPGD(MODEL, batch_size=2.5)),
    "universal-target-fooling": ("target_fooling", lambda: UAP(MODEL, target_fooling=1.5)),
    "universal-gap-lr": ("lr", lambda: UNIVERSAL.get("gap")(MODEL, lr=float("inf"))),
    "universal-fff-base": ("base", lambda: UNIVERSAL.get("fff")(MODEL, base=-0.5)),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_are_refused(case):
    arg, fn = BAD_SETTINGS[case]
    raises_naming(arg, fn)


def test_steps_zero_is_the_random_start_alone():
    x_start = PGD(MODEL, eps=0.1, steps=0, seed=0)(X, Y)
    d = (x_start - X).abs()
    assert float(d.max()) <= 0.1 + 1e-6 and float(d.max()) > 0.05  # moved, inside the ball


# -- calls -------------------------------------------------------------------------------------------------------
BAD_CALLS = {
    "x-uint8": ("x", lambda a: a(images_u8(4), Y[:4])),
    "x-0-255-float": ("x", lambda a: a(images_u8(4).float(), Y[:4])),
    "x-nan": ("x", lambda a: a(torch.where(torch.arange(4).view(4, 1, 1, 1) == 2, float("nan"), X[:4]), Y[:4])),
    "x-3d": ("x", lambda a: a(X[0], Y[:1])),
    "x-list": ("x", lambda a: a(X.tolist(), Y)),
    "y-out-of-range": ("y", lambda a: a(X[:4], torch.tensor([0, 1, CLASSES, 2]))),
    "y-negative": ("y", lambda a: a(X[:4], torch.tensor([0, -1, 2, 3]))),
    "y-float": ("y", lambda a: a(X[:4], Y[:4].float())),
    "y-wrong-length": ("y", lambda a: a(X[:4], Y[:3])),
    "y-missing-in-given-mode": ("y", lambda a: a.set_target_mode("given")(X[:4])),
}


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "mi-di-ti"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_calls_are_refused_before_any_work(attack, case):
    arg, fn = BAD_CALLS[case]
    calls = []
    atk = ATTACKS.get(attack).for_budget(MODEL, 0.1, steps=2, len_kernel=3) if attack == "mi-di-ti" else \
        ATTACKS.get(attack).for_budget(MODEL, 0.1)
    atk.perturb = lambda *a: calls.append(1)  # must never be reached
    raises_naming(arg, lambda: fn(atk))
    assert not calls


def test_label_range_comes_from_the_model_and_good_calls_pass():
    atk = PGD(MODEL, eps=0.1, alpha=0.02, steps=2, seed=0)
    x_adv = atk(X[:4], torch.tensor([0, 1, CLASSES - 1, 2]))  # the largest valid label is fine
    assert x_adv.shape == (4, 1, SIDE, SIDE)
    wide = nn.Sequential(MODEL, nn.Linear(CLASSES, 20))  # 20 classes: label 15 is now valid
    PGD(wide, eps=0.1, alpha=0.02, steps=1)(X[:2], torch.tensor([15, 19]))
    raises_naming("y", lambda: PGD(wide, eps=0.1, steps=1)(X[:2], torch.tensor([15, 20])))


def test_universal_fit_and_apply_check_their_images():
    atk = SPGD(MODEL, eps=0.1, epochs=1, batch_size=4, seed=0, show_progress=False)
    raises_naming("data", lambda: atk.fit(images_u8().float()))  # [0,255] floats
    raises_naming("data", lambda: atk.fit(torch.full((2, 1, SIDE, SIDE), float("nan"))))
    raises_naming("data", lambda: atk.fit(images_u8().long()))  # integer, not uint8
    raises_naming("data", lambda: atk.fit(X[0]))  # C×H×W
    delta = atk.fit(X)
    assert torch.equal(delta, SPGD(MODEL, eps=0.1, epochs=1, batch_size=4, seed=0, show_progress=False).fit((X, Y)))
    raises_naming("images", lambda: fooling_rate(MODEL, X * 255, delta))
    raises_naming("delta", lambda: fooling_rate(MODEL, X, delta[:, :4]))
    raises_naming("x", lambda: apply_perturbation(X * 2, delta))
    raises_naming("x", lambda: atk.apply(images_u8()))
    raises_naming("delta", lambda: apply_perturbation(X, torch.full_like(delta, float("inf"))))
    assert torch.equal(apply_perturbation(X, delta), (X + delta).clamp(0, 1))


# -- evaluate() --------------------------------------------------------------------------------------------------
class ItemDataset(Dataset):
    """A plain map-style Dataset of (image float C×H×W in [0,1], int label)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class Darken(Defense):
    name = "darken"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.1).clamp(0, 1)


def run(data, **kw):
    args = {"attacks": ["fgsm", "pgd"], "defenses": ["none"], "eps": 0.1, "batch_size": 4, "seed": 3, **kw}
    return evaluate({"a": MODEL, "b": tiny_model(1)}, data, **args)


@pytest.fixture(scope="module")
def reference():
    return run((X, Y))


@pytest.mark.parametrize("form", ["tensor-dataset", "dataset", "loader"])
def test_evaluate_data_forms_agree(form, reference):
    data = {"tensor-dataset": lambda: TensorDataset(images_u8(), Y, name="u8"),
            "dataset": lambda: ItemDataset(X, Y),
            "loader": lambda: DataLoader(TorchTensorDataset(X, Y), batch_size=4, shuffle=False)}[form]()
    res = run(data)
    ref_flags, flags = reference.flags(), res.flags()
    assert ref_flags.keys() == flags.keys()
    for k in ref_flags:
        assert torch.equal(ref_flags[k], flags[k]), k
    assert repr(res.rows()) == repr(reference.rows())  # NaN-safe equality
    assert res.meta["n"] == N and res.meta["eps_l2"] is None and res.meta["batch_size"] == 4
    # the attacks did something, so agreement is not trivial
    assert any(not torch.equal(reference.clean_pred[("none", t)], p)
               for (_, _, _, t), p in reference.adv_pred.items())


def test_evaluate_single_module_string_attack_and_module_defenses():
    res = evaluate(MODEL, (X, Y), "fgsm", ["none", Darken()], eps=0.1, batch_size=5)
    assert list(res.base_pred) == ["model"]
    assert {d for d, _ in res.clean_pred} == {"none", "darken"}
    res2 = evaluate(MODEL, (X, Y), ["fgsm"], {"plain": Darken()}, 0.1)
    assert {d for d, _ in res2.clean_pred} == {"plain"}
    assert torch.equal(res.clean_pred[("darken", "model")], res2.clean_pred[("plain", "model")])


def test_evaluate_eps_l2_only_when_needed():
    raises_naming("eps_l2", lambda: run((X, Y), attacks=["fgsm", "pgdl2"]))
    res = run((X, Y), attacks="pgdl2", eps_l2=0.5)
    assert res.meta["eps_l2"] == 0.5 and {k[0] for k in res.adv_pred} == {"pgdl2"}


BAD_EVALUATE = {
    "images-0-255": ("data", lambda: run((X * 255, Y))),
    "images-uint8-pair": ("data", lambda: run((images_u8(), Y))),
    "labels-negative": ("data", lambda: run((X, Y - 5))),
    "labels-too-large": ("data", lambda: run((X, Y + CLASSES))),
    "labels-float": ("data", lambda: run((X, Y.float()))),
    "dataset-nan": ("data", lambda: run(ItemDataset(torch.full_like(X, float("nan")), Y))),
    "loader-labels-too-large": ("data", lambda: run(DataLoader(TorchTensorDataset(X, Y + CLASSES), batch_size=4))),
    "data-type": ("data", lambda: run([1, 2, 3])),
    "models-empty": ("models", lambda: evaluate({}, (X, Y), ["fgsm"], ["none"], 0.1)),
    "models-type": ("models", lambda: evaluate([MODEL], (X, Y), ["fgsm"], ["none"], 0.1)),
    "eps": ("eps", lambda: run((X, Y), eps=float("nan"))),
    "eps-l2": ("eps_l2", lambda: run((X, Y), eps_l2=-1.0)),
    "batch-size": ("batch_size", lambda: run((X, Y), batch_size=0)),
    "defenses-type": ("defenses", lambda: run((X, Y), defenses=[3])),
    "defenses-empty": ("defenses", lambda: run((X, Y), defenses=[])),
}


@pytest.mark.parametrize("case", list(BAD_EVALUATE))
def test_bad_evaluate_calls(case):
    arg, fn = BAD_EVALUATE[case]
    raises_naming(arg, fn)


# -- reprs -------------------------------------------------------------------------------------------------------
def test_gradient_attack_reprs_show_settings():
    assert repr(PGD(MODEL, eps=0.1, alpha=0.01, steps=10)) == \
        "PGD(linf, eps=0.1, alpha=0.01, steps=10, random_start=True)"
    assert repr(FGSM(MODEL, eps=8 / 255)) == "FGSM(linf, eps=0.03137)"
    assert repr(PGDL2(MODEL, eps=1.5, alpha=0.3, steps=7)) == \
        "PGDL2(l2, eps=1.5, alpha=0.3, steps=7, random_start=True)"
    mi = MIFGSM(MODEL, eps=0.1, alpha=0.02, steps=5, decay=0.5).set_target_mode("least_likely")
    mi.eot = 4
    text = repr(mi)
    assert text.startswith("MIFGSM(linf, eps=0.1, alpha=0.02, steps=5, decay=0.5")
    assert "target_mode='least_likely'" in text and "eot=4" in text
    ti = repr(TIFGSM(MODEL, len_kernel=5, nsig=2.5, diversity_prob=0.3, kernel_name="linear"))
    for part in ("len_kernel=5", "nsig=2.5", "diversity_prob=0.3", "kernel_name='linear'", "resize_rate=0.9"):
        assert part in ti, ti
    assert "eot" not in repr(PGD(MODEL)) and "target_mode" not in repr(PGD(MODEL))
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        params = inspect.signature(cls.__init__).parameters
        key = next((k for k in ("steps", "n_queries") if k in params), None)  # FGSM: one step by definition
        kw = {key: 3} if key else {}
        r = repr(cls.for_budget(MODEL, 0.5, **kw))
        assert (f"{key}=3" in r or not kw) and "eps=0.5" in r and "\n" not in r, r


def test_universal_reprs_show_settings():
    r = repr(UAP(MODEL, eps=0.1, max_passes=3, target_fooling=0.5, seed=7, show_progress=False))
    assert r.startswith("UAP(linf, eps=0.1, ") and "max_passes=3" in r and "target_fooling=0.5" in r
    assert "seed=7" in r and "show_progress" not in r
    s = repr(SPGD(MODEL, eps=2.0, norm="l2", epochs=2, alpha=0.5))
    assert s.startswith("SPGD(l2, eps=2.0, ") and "epochs=2" in s and "alpha=0.5" in s and "seed" not in s


def test_registry_repr():
    r = repr(ATTACKS)
    assert r.startswith(f"Registry('attack', {len(ATTACKS)} entries: ")
    names = ATTACKS.names()
    assert all(n in r for n in names[:20]) and "dim-ti" not in r  # aliases are not listed
    assert len(names) <= 20 or f"({len(names) - 20} more)" in r  # long registries are cut after 20 names
    assert repr(UNIVERSAL) == "Registry('universal attack', 4 entries: fff, gap, spgd, uap)"


def test_grid_results_repr(reference):
    r = repr(reference)
    assert r.startswith(f"GridResults({N} images; 2 attacks (fgsm, pgd), 2 sources (a, b), 1 defense (none), 2 targets")
    from advshield.eval.metrics import accuracy

    assert f"a {accuracy(reference.clean_pred[('none', 'a')], Y):.3f}" in r
    assert "tensor(" not in r and len(r) < 300
