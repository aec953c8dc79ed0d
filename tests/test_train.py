"""Classifier training: measured card accuracy, resume after a stop gives the same weights, CLI."""
import json

import pytest
import torch
from safetensors.torch import load_file

import advshield.train.classifier as tc
from advshield.cli.main import main
from advshield.errors import AdvshieldError
from advshield.models import load_model


def cfg(root, **kw):
    base = dict(name="t", arch="lenet", arch_args={"channels": [4, 8], "hidden": [16, 16]}, epochs=4, augment=False,
                batch_size=32, lr=0.1, data_root=str(root), device="cpu")
    return tc.ClassifierConfig(**{**base, **kw})


def test_card_holds_the_measured_accuracy(tmp_path, fake_fmnist):
    card = tc.train_classifier(cfg(fake_fmnist), tmp_path / "zoo", command="test", log=lambda s: None)
    model = load_model(str(tmp_path / "zoo" / "t.safetensors"))
    test = tc.load_dataset("fashion-mnist", "test", fake_fmnist)
    assert card["metrics"]["clean_accuracy"] == round(tc.evaluate_accuracy(model, test), 4)
    assert card["metrics"]["clean_accuracy"] > 0.5  # the synthetic classes are easy
    assert card["metrics"]["test_samples"] == 200 and card["command"] == "test"
    log = (tmp_path / "zoo" / ".train" / "t" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 5


def test_resume_after_a_stop_reproduces_the_uninterrupted_run(tmp_path, fake_fmnist, monkeypatch):
    tc.train_classifier(cfg(fake_fmnist), tmp_path / "a", log=lambda s: None)
    calls = {"n": 0}
    real = tc.evaluate_accuracy

    def stop_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tc, "evaluate_accuracy", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        tc.train_classifier(cfg(fake_fmnist), tmp_path / "b", log=lambda s: None)
    assert not (tmp_path / "b" / "t.safetensors").exists()
    monkeypatch.setattr(tc, "evaluate_accuracy", real)
    lines = []
    tc.train_classifier(cfg(fake_fmnist), tmp_path / "b", log=lines.append)
    assert lines[0].startswith("resuming t at epoch 1/4")
    a, b = load_file(str(tmp_path / "a" / "t.safetensors")), load_file(str(tmp_path / "b" / "t.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path, fake_fmnist):
    tc.train_classifier(cfg(fake_fmnist, epochs=1), tmp_path, log=lambda s: None)
    with pytest.raises(AdvshieldError, match="other settings"):
        tc.train_classifier(cfg(fake_fmnist, epochs=2), tmp_path, log=lambda s: None)


def test_augmentation_shapes_and_determinism():
    x = torch.rand(8, 1, 28, 28)
    a = tc.augment_batch(x, torch.Generator().manual_seed(3))
    b = tc.augment_batch(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_cli_train_refuses_to_overwrite(tmp_path, fake_fmnist, capsys):
    args = ["train", "classifier", "--name", "c", "--arch", "lenet", "--arch-args",
            '{"channels": [4, 8], "hidden": [16, 16]}', "--epochs", "1", "--data-root", str(fake_fmnist),
            "--out-dir", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    card = json.loads((tmp_path / "c.json").read_text())
    assert card["command"].startswith("advshield ") and card["kind"] == "classifier"
    before = (tmp_path / "c.safetensors").read_bytes()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "c.safetensors").read_bytes() == before
    assert main(["train", "classifier", "--name", "c", "--arch", "nope", "--out-dir", str(tmp_path)]) == 2
    assert main(["train", "classifier", "--name", "d", "--arch", "lenet", "--arch-args", "{bad",
                 "--out-dir", str(tmp_path)]) == 2


def test_adversarial_training_crafts_inside_the_ball_and_trains(tmp_path, fake_fmnist):
    """pgd, fgsm-rs and trades adversaries stay in the eps ball and [0,1], are seeded, and differ from x; a short
    TRADES run writes a card with its PGD-10 accuracy; a bad spec is one line."""
    from advshield.models.fmnist import LeNet
    from advshield.train import adversarial
    from advshield.train.classifier import ClassifierConfig, train_classifier

    torch.manual_seed(0)
    model = LeNet(channels=[4, 8], hidden=[16, 16])
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    for method in adversarial.METHODS:
        spec = {"method": method, "eps": 0.1, "steps": 2}
        a, b = (adversarial.craft(model, x, y, spec, seed=3, shard=None) for _ in range(2))
        assert torch.equal(a, b) and (a - x).abs().max() <= 0.1 + 1e-6 and 0 <= float(a.min()) <= float(a.max()) <= 1
        assert (a - x).abs().max() > 0.01 and model.training
        assert float(adversarial.loss(model, x, a, y, spec).detach()) > 0
    # a shard of the batch gets exactly its rows of the whole batch's adversaries
    whole = adversarial.craft(model, x, y, {"method": "pgd", "eps": 0.1, "steps": 2}, seed=3, shard=None)
    part = adversarial.craft(model, x[2:5], y[2:5], {"method": "pgd", "eps": 0.1, "steps": 2}, seed=3, shard=(2, 6))
    torch.testing.assert_close(part, whole[2:5])
    for bad in ({"method": "free", "eps": 0.1}, {"method": "pgd", "eps": 2}, {"method": "pgd", "eps": 0.1, "k": 1}):
        with pytest.raises(AdvshieldError):
            adversarial.check_adversarial(bad)
    cfg = ClassifierConfig(name="at", arch="lenet", arch_args={"channels": [4, 8], "hidden": [16, 16]}, epochs=1,
                           batch_size=200, lr=0.05, data_root=str(fake_fmnist), device="cpu",
                           adversarial={"method": "trades", "eps": 0.1, "steps": 2})
    card = train_classifier(cfg, tmp_path, log=lambda _: None)
    m = card["metrics"]
    assert 0 <= m["pgd10_accuracy"] <= 1 and m["pgd10_images"] == 200 and m["pgd10_eps"] == 0.1
    assert card["training"]["adversarial"]["method"] == "trades"


def test_cli_trades_beta_reaches_the_card(tmp_path, fake_fmnist, capsys):
    """--adv-beta sets TRADES' β (stated in the card); without --adversarial trades it is one line, exit 2."""
    base = ["train", "classifier", "--name", "t", "--arch", "lenet", "--arch-args",
            '{"channels": [4, 8], "hidden": [16, 16]}', "--epochs", "1", "--data-root", str(fake_fmnist),
            "--out-dir", str(tmp_path), "--device", "cpu", "--adv-steps", "1", "--adv-beta", "2"]
    assert main(base) == 2
    assert capsys.readouterr().err.startswith("advshield: error: --adv-beta") and not (tmp_path / "t.json").exists()
    assert main(base + ["--adversarial", "trades"]) == 0
    spec = json.loads((tmp_path / "t.json").read_text())["training"]["adversarial"]
    assert spec["method"] == "trades" and spec["beta"] == 2.0 and spec["steps"] == 1
