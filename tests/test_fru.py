"""FRU insertion, training and loading (Borkar et al. 2020)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advshield import load_model
from advshield.cli.main import main
from advshield.defenses.fru import FRU, FRUNet, RegeneratedConv, conv_layers, default_layers, filter_ranking
from advshield.errors import ModelError
from advshield.models import ResNet, VGGNet


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return VGGNet(widths=[8, 16, 32], convs_per_block=2).eval()


def _perturb_frus(net: FRUNet) -> None:
    """Give every FRU a non-zero last layer (a trained FRU is not the identity)."""
    with torch.no_grad():
        for fru in net.frus():
            fru.body[-1].weight.normal_(0, 0.5)


def test_fresh_fru_is_identity_and_base_untouched():
    base = _vgg()
    x = torch.rand(4, 1, 28, 28)
    net = FRUNet(base).eval()
    assert torch.allclose(net(x), base(x), atol=1e-6)
    assert len(net.frus()) == 6 and net.layers == default_layers(base)
    assert all(isinstance(m, nn.Conv2d) for m in base.modules() if m.__class__.__name__.startswith("Conv"))
    assert not any(isinstance(m, RegeneratedConv) for m in base.modules())  # the caller's model is not modified


def test_fru_block_shape_and_parameter_formula():
    n = d = 16
    fru = FRU(n, d)
    assert fru(torch.rand(2, n, 7, 7)).shape == (2, n, 7, 7)
    convs = sum(p.numel() for m in fru.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    approx = 18 * d * d + 2 * n * d
    assert abs(convs - approx) / approx < 0.05  # biases make up the rest


def test_regenerates_top_l1_channels_and_keeps_order():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, 9, dtype=torch.float).view(8, 1, 1, 1).expand(8, 3, 3, 3)
                          * torch.tensor([1, -1, 1, -1, 1, -1, 1, -1.]).view(8, 1, 1, 1))
        conv.weight[2] *= 100  # channel 2 gets the largest l1 norm
    assert filter_ranking(conv)[0] == 2
    reg = RegeneratedConv(conv, fraction=0.5)
    assert reg.index.tolist() == [2, 5, 6, 7]  # the top half by l1 norm, in channel order
    with torch.no_grad():
        reg.fru.body[-1].bias.fill_(1.0)
    reg.eval()
    x = torch.rand(2, 3, 5, 5)
    y, out = conv(x), reg(x)
    untouched = [0, 1, 3, 4]
    assert torch.equal(out[:, untouched], y[:, untouched])
    assert not torch.allclose(out[:, reg.index], y[:, reg.index])


def test_only_fru_parameters_train_and_base_weights_never_change():
    base = _vgg()
    net = FRUNet(base)
    before = {k: v.clone() for k, v in net.state_dict().items() if ".fru." not in k}
    opt = torch.optim.SGD(net.fru_parameters(), lr=0.1)
    net.train()
    assert all(not m.training for m in net.base.modules() if not any(m is f or m in list(f.modules())
                                                                        for f in net.frus()))
    for _ in range(3):
        loss = net(torch.rand(8, 1, 28, 28)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats of the base
    assert all(not p.requires_grad for k, p in net.named_parameters() if ".fru." not in k)


def test_resnet_default_layers_skip_pointwise_shortcuts_and_bad_layer_errors():
    base = ResNet(widths=[4, 8, 16], blocks=1)
    layers = default_layers(base)
    assert len(layers) == 6 and all("shortcut" not in n for n in layers)
    assert any("shortcut" in n for n in conv_layers(base, include_pointwise=True))
    with pytest.raises(ModelError, match="not a conv layer"):
        FRUNet(base, layers=["fc"])
    with pytest.raises(ModelError, match="fraction"):
        FRUNet(base, fraction=0)


# -- training -------------------------------------------------------------------------------------------------
from safetensors.torch import load_file  # noqa: E402

import advshield.train.fru as tf  # noqa: E402


def fru_cfg(root, **kw):
    base = dict(name="t-fru", model="zoo:tiny-vgg", data="fashion-mnist", data_root=str(root), pool_size=2,
                pool_images=40, attack_args={"max_passes": 1, "show_progress": False}, steps=6, batch_size=8,
                save_every=2, log_every=2, eval_images=40, device="cpu")
    return tf.FRUConfig(**{**base, **kw})


def quiet(s):
    pass


def test_training_writes_a_zoo_classifier_whose_base_is_unchanged(tmp_path, fake_fmnist, tiny_zoo, one_thread):
    card = tf.train_fru(fru_cfg(fake_fmnist), tmp_path / "zoo", command="test", log=quiet)
    assert card["kind"] == "classifier" and card["architecture"] == "fru" and card["base"] == "tiny-vgg"
    assert card["training"]["pool_fit_time_s"] >= 0 and "pool_restoration_accuracy" in card["metrics"]
    net = load_model(str(tmp_path / "zoo" / "t-fru.safetensors"))
    assert isinstance(net, FRUNet) and net.layers == ["features.conv1_1", "features.conv2_1"]
    base = load_model("zoo:tiny-vgg")
    base_sd, net_sd = base.state_dict(), net.state_dict()
    for k, v in base_sd.items():  # every base tensor is saved unchanged
        k2 = k.replace("conv1_1.", "conv1_1.conv.").replace("conv2_1.", "conv2_1.conv.")
        assert torch.equal(net_sd[f"base.{k2}"], v), k
    x = torch.rand(3, 1, 28, 28)
    assert net(x).shape == (3, 10)
    pool = load_file(str(tmp_path / "zoo" / ".train" / "t-fru" / "pool.safetensors"))["pool"]
    assert pool.shape == (2, 1, 28, 28) and float(pool.abs().max()) <= 0.1 + 1e-6


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, fake_fmnist, tiny_zoo, one_thread,
                                                             monkeypatch):
    tf.train_fru(fru_cfg(fake_fmnist, eval_images=0), tmp_path / "a", log=quiet)
    real = tf.FRUTrainer.step
    calls = {"n": 0}

    def stop_at_step_4(self, step):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(tf.FRUTrainer, "step", stop_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        tf.train_fru(fru_cfg(fake_fmnist, eval_images=0), tmp_path / "b", log=quiet)
    monkeypatch.setattr(tf.FRUTrainer, "step", real)
    lines = []
    tf.train_fru(fru_cfg(fake_fmnist, eval_images=0), tmp_path / "b", log=lines.append)
    assert "resuming t-fru at step 2/6" in lines and any("from" in ln and "pool" in ln for ln in lines)
    a, b = load_file(str(tmp_path / "a" / "t-fru.safetensors")), load_file(str(tmp_path / "b" / "t-fru.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_draw_perturbations_stay_within_budget():
    gen = torch.Generator().manual_seed(0)
    pool = (torch.rand(3, 1, 8, 8) * 2 - 1) * 0.1
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        p = pool if norm == "linf" else pool / pool.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
        d = tf.draw_perturbations(p, 64, gen, eps, norm, synthetic=True)
        size = d.flatten(1).abs().amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
        assert d.shape == (64, 1, 8, 8) and float(size.max()) <= eps + 1e-6
    assert torch.equal(tf.draw_perturbations(pool, 5, torch.Generator().manual_seed(1), 0.1, "linf", False),
                       tf.draw_perturbations(pool, 5, torch.Generator().manual_seed(1), 0.1, "linf", False))


def test_zoomed_draws_are_smoother_and_within_budget():
    gen = torch.Generator().manual_seed(0)
    pool = (torch.rand(4, 1, 28, 28) * 2 - 1).sign() * 0.1  # a high-frequency ±eps pattern
    plain = tf.draw_perturbations(pool, 32, torch.Generator().manual_seed(3), 0.1, "linf", True)
    assert torch.equal(plain, tf.draw_perturbations(pool, 32, torch.Generator().manual_seed(3), 0.1, "linf", True,
                                                    zoom=0.0))  # zoom 0 keeps the old draws (old recipes)
    d = tf.draw_perturbations(pool, 32, gen, 0.1, "linf", True, zoom=1.0)
    assert d.shape == plain.shape and float(d.abs().amax()) <= 0.1 + 1e-6
    assert torch.allclose(d.flatten(1).abs().amax(1), torch.full((32,), 0.1))  # rescaled to the budget

    def roughness(x):  # mean absolute difference between horizontal neighbours, relative to the peak
        return float((x[..., 1:] - x[..., :-1]).abs().mean() / x.abs().amax())

    assert roughness(d) < 0.6 * roughness(pool)
    z = tf.zoomed(pool[:1].expand(3, -1, -1, -1), gen, 0.5, "l2")
    assert torch.allclose(z.flatten(1).norm(dim=1), torch.full((3,), 0.5), atol=1e-5)


def test_negated_draws_flip_the_sign_of_a_share():
    pool = torch.rand(4, 1, 28, 28) * 0.1  # all positive: a brightening pattern
    plain = tf.draw_perturbations(pool, 64, torch.Generator().manual_seed(3), 0.1, "linf", True)
    assert torch.equal(plain, tf.draw_perturbations(pool, 64, torch.Generator().manual_seed(3), 0.1, "linf", True,
                                                    negate=0.0))  # negate 0 keeps the old draws (old recipes)
    d = tf.draw_perturbations(pool, 64, torch.Generator().manual_seed(3), 0.1, "linf", True, negate=0.5)
    flipped = d.flatten(1).sum(1) < 0
    assert 16 <= int(flipped.sum()) <= 48  # about half
    assert torch.equal(d[flipped], -plain[flipped]) and torch.equal(d[~flipped], plain[~flipped])


def test_cli_train_fru_and_errors(tmp_path, fake_fmnist, tiny_zoo, one_thread, capsys):
    args = ["train", "fru", "--model", "zoo:tiny-vgg", "--data-root", str(fake_fmnist), "--pool-size", "1",
            "--pool-images", "30", "--steps", "2", "--batch-size", "4", "--eval-images", "20",
            "--out-dir", str(tmp_path / "z")]
    assert main(args) == 0
    assert (tmp_path / "z" / "tiny-vgg-fru.safetensors").exists()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    for bad, msg in ((["--attack", "nope"], "unknown universal attack"), (["--fraction", "1.5"], "fraction"),
                     (["--zoom", "2"], "zoom must be in [0, 1]"), (["--negate", "-1"], "negate must be in [0, 1]"),
                     (["--model", "zoo:missing"], "missing"), (["--layers", "fc"], "not a conv layer")):
        assert main(args[:2] + ["--model", "zoo:tiny-vgg"] + args[4:-2] + ["--out-dir", str(tmp_path / "e")] + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_eval_cli_with_universal_perturbations_and_fru_baseline(tmp_path, fake_fmnist, tiny_zoo, one_thread):
    import json

    import numpy as np

    from advshield.models import save_checkpoint

    base = load_model("zoo:tiny-vgg")
    net = FRUNet(base)
    _perturb_frus(net)
    card = {"name": "tiny-vgg-fru", "kind": "classifier", "dataset": "fashion-mnist", "architecture": "fru",
            "arch_args": {"base_arch": "vgg", "base_args": base.card["arch_args"], "layers": net.layers,
                          "fraction": 0.5, "depth": None}, "base": "tiny-vgg", "metrics": {}}
    save_checkpoint(net, tiny_zoo / "tiny-vgg-fru.safetensors", card)
    np.save(tmp_path / "u.npy", np.full((1, 28, 28), 0.05, dtype=np.float32))
    out = tmp_path / "out"
    assert main(["eval", "--models", "zoo:tiny-vgg,zoo:tiny-vgg-fru", "--perturbations", str(tmp_path / "u.npy"),
                 "--defenses", "none", "--data-root", str(fake_fmnist), "--n", "20", "--out", str(out)]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {(r["attack"], r["source"], r["target"]) for r in rows} == {
        ("u", "universal", "tiny-vgg"), ("u", "universal", "tiny-vgg-fru")}  # no per-image attack by default
    base_row = next(r for r in rows if r["target"] == "tiny-vgg")
    fru_row = next(r for r in rows if r["target"] == "tiny-vgg-fru")
    assert fru_row["undefended_clean_accuracy"] == base_row["clean_accuracy"]  # restoration against the base
    assert fru_row["restoration_accuracy"] == pytest.approx(
        (fru_row["clean_accuracy"] + fru_row["robust_accuracy"]) / (2 * base_row["clean_accuracy"]))
    assert main(["eval", "--models", "zoo:tiny-vgg", "--perturbations", str(tmp_path / "missing.npy"),
                 "--data-root", str(fake_fmnist), "--n", "5", "--out", str(tmp_path / "o2")]) == 2
    np.save(tmp_path / "wrong.npy", np.zeros((3, 28, 28), dtype=np.float32))
    assert main(["eval", "--models", "zoo:tiny-vgg", "--perturbations", str(tmp_path / "wrong.npy"),
                 "--data-root", str(fake_fmnist), "--n", "5", "--out", str(tmp_path / "o3")]) == 2


# -- the shipped FRU models -------------------------------------------------------------------------------------
from conftest import needs_fmnist  # noqa: E402


@needs_fmnist
@pytest.mark.parametrize("name", ["fmnist-vgg-fru", "fmnist-resnet-fru"])
def test_shipped_fru_models_load_offline_and_reproduce_their_cards(name, one_thread):
    from advshield.data import fashion_mnist
    from advshield.train.classifier import evaluate_accuracy

    net = load_model(f"zoo:{name}")
    card = net.card
    assert isinstance(net, FRUNet) and card["base"] == name[: -len("-fru")]
    assert card["training"]["attack"] == "uap" and card["training"]["eps"] == pytest.approx(0.1)
    test = fashion_mnist("test").subset(card["metrics"]["eval_images"])
    acc = evaluate_accuracy(net, test)
    assert abs(acc - card["metrics"]["clean_accuracy_first_2000"]) <= 1e-3  # thread-count rounding only
    # (the card's clean_accuracy is the full test set's; tests/test_zoo_cards.py recomputes it)
    base_acc = evaluate_accuracy(load_model(f"zoo:{card['base']}"), test)
    assert base_acc - acc <= 0.01  # the goal: clean accuracy within 1 point of the base
