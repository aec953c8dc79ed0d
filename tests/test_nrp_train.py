"""Purifier training (Algorithm 2): output and card, exact resume, ablation switches, data sources, CLI."""
import json

import pytest
import torch
from conftest import needs_fmnist
from safetensors.torch import load_file

import advshield.train.purifier as tp
from advshield.cli.main import main
from advshield.data.folder import save_png
from advshield.defenses.nrp import NRP_CONFIGS, Purifier
from advshield.defenses.purifier import load_purifier
from advshield.errors import AdvshieldError
from advshield.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_arch(monkeypatch):
    monkeypatch.setitem(NRP_CONFIGS, "nrp-tiny", ("nrp", {"in_channels": 1, "nf": 4, "nb": 1, "gc": 2}))
    return "nrp-tiny"


def cfg(root, **kw):
    base = dict(name="p", arch="nrp-tiny", data="fashion-mnist", data_root=str(root), feature_model="zoo:tiny-vgg",
                steps=6, batch_size=4, ssp_steps=2, critic_width=2, save_every=2, log_every=2, eval_images=8,
                device="cpu")
    return tp.PurifierConfig(**{**base, **kw})


def quiet(s):
    pass


def test_tiny_run_writes_a_loadable_purifier(tmp_path, fake_fmnist, tiny_zoo, tiny_arch):
    card = tp.train_purifier(cfg(fake_fmnist), tmp_path / "zoo", command="test", log=quiet)
    assert card["kind"] == "purifier" and card["architecture"] == "nrp" and card["config"] == "nrp-tiny"
    assert card["arch_args"] == {"in_channels": 1, "nf": 4, "nb": 1, "gc": 2} and card["command"] == "test"
    m = card["metrics"]
    assert all(torch.isfinite(torch.tensor(float(m[f"final_loss_{k}"]))) for k in tp.LOSS_KEYS)
    assert m["eval_images"] == 8 and "psnr_purified" in m and m["eval_set"].startswith("fashion-mnist test")
    assert card["training"]["feature_model"] == "zoo:tiny-vgg" and card["training"]["steps"] == 6
    on_disk = json.loads((tmp_path / "zoo" / "p.json").read_text())
    assert on_disk["sha256"] == card["sha256"]
    p = load_purifier(str(tmp_path / "zoo" / "p.safetensors"))
    assert isinstance(p, Purifier) and p(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    log = (tmp_path / "zoo" / ".train" / "p" / "log.csv").read_text().splitlines()
    assert log[0].split(",") == ["step", *[f"loss_{k}" for k in tp.LOSS_KEYS], "elapsed_s"]
    assert [int(r.split(",")[0]) for r in log[1:]] == [2, 4, 6]
    assert all(float(v) == float(v) for r in log[1:] for v in r.split(",")[1:])  # no NaN


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, fake_fmnist, tiny_zoo, tiny_arch,
                                                             monkeypatch):
    tp.train_purifier(cfg(fake_fmnist, eval_images=0), tmp_path / "a", log=quiet)
    real = tp.PurifierTrainer.step
    calls = {"n": 0}

    def stop_at_step_4(self, x, step):
        calls["n"] += 1
        if calls["n"] == 4:  # steps 1-2 checkpointed, step 3 done but not saved
            raise KeyboardInterrupt
        return real(self, x, step)

    monkeypatch.setattr(tp.PurifierTrainer, "step", stop_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        tp.train_purifier(cfg(fake_fmnist, eval_images=0), tmp_path / "b", log=quiet)
    assert not (tmp_path / "b" / "p.safetensors").exists()
    monkeypatch.setattr(tp.PurifierTrainer, "step", real)
    lines = []
    tp.train_purifier(cfg(fake_fmnist, eval_images=0), tmp_path / "b", log=lines.append)
    assert "resuming p at step 2/6" in lines
    a, b = load_file(str(tmp_path / "a" / "p.safetensors")), load_file(str(tmp_path / "b" / "p.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "a" / ".train" / "p" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / ".train" / "p" / "log.csv").read_text().splitlines()
    assert [r.split(",")[:-1] for r in log_a] == [r.split(",")[:-1] for r in log_b]  # same losses, one row each
    with pytest.raises(AdvshieldError, match="other settings"):
        tp.train_purifier(cfg(fake_fmnist, eval_images=0, steps=8, eps=8 / 255), tmp_path / "b", log=quiet)


def test_loss_weights_follow_the_switches():
    base = tp.PurifierConfig(name="w")
    assert tp.loss_weights(base) == {"adv": 5e-3, "img": 1e-2, "feat": 1.0}
    assert tp.loss_weights(tp.PurifierConfig(name="w", no_feat=True))["feat"] == 0
    assert tp.loss_weights(tp.PurifierConfig(name="w", no_pixel=True))["img"] == 0


def test_gan_losses():
    fake, real = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, 3.0])
    ra = tp.purifier_adv_loss(fake, real, relativistic=True)
    assert torch.isclose(ra, -torch.log(torch.sigmoid(fake - real.mean())).mean())
    assert torch.isclose(tp.purifier_adv_loss(fake, real, relativistic=False), -torch.log(torch.sigmoid(fake)).mean())
    c = tp.critic_loss(real, fake, relativistic=True)
    want = 0.5 * (-torch.log(torch.sigmoid(real - fake.mean())).mean()
                  - torch.log(1 - torch.sigmoid(fake - real.mean())).mean())
    assert torch.isclose(c, want) and not torch.isclose(c, tp.critic_loss(real, fake, relativistic=False))


@pytest.mark.parametrize("switch", [{}, {"no_feat": True}, {"no_pixel": True}, {"vanilla_gan": True},
                                    {"adversary": "gaussian"}, {"adversary": "fgsm"}])
def test_each_switch_sets_the_loss_composition(switch, tiny_zoo, tiny_arch):
    c = tp.PurifierConfig(name="s", arch="nrp-tiny", feature_model="zoo:tiny-vgg", ssp_steps=2, critic_width=2,
                          device="cpu", **switch)
    net, _ = tp.resolve_arch(c)
    model, layer, is_cls, _ = tp.load_feature_model(c.feature_model, None, quiet)
    trainer = tp.PurifierTrainer(c, net, model, layer, is_cls, torch.device("cpu"))
    assert trainer.relativistic is not switch.get("vanilla_gan", False)
    kind = {"ssp": "SSP", "fgsm": "FGSM", "gaussian": "NoneType"}[c.adversary]
    assert type(trainer.adversary.attack).__name__ == kind
    x = torch.rand(4, 1, 28, 28)
    x_adv = trainer.adversary(x, 0)
    assert (x_adv - x).abs().max() <= c.eps + 1e-6 and not torch.equal(x_adv, x)
    assert torch.equal(x_adv, trainer.adversary(x, 0))  # a function of (seed, step)
    losses = trainer.step(x, 0)
    w = trainer.weights
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    want = w["adv"] * losses["adv"] + w["img"] * losses["img"] + w["feat"] * losses["feat"]
    assert losses["total"] == pytest.approx(want, rel=1e-5)


def test_folder_source_is_deterministic_per_step(tmp_path):
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(40, 36), (33, 50), (20, 20)]):
        save_png(torch.rand(3, h, w, generator=g), tmp_path / f"im{i}.png")
    c = tp.PurifierConfig(name="f", data=str(tmp_path), crop=32, batch_size=5)
    lines = []
    src, held, desc = tp.make_source(c, 1, lines.append)
    assert held is None and "not held out" in desc and "skipping 1" in lines[0]
    b = src[3]
    assert b.shape == (5, 1, 32, 32) and b.min() >= 0 and b.max() <= 1
    assert torch.equal(b, src[3]) and not torch.equal(b, src[4])


def test_cli_one_line_errors(tmp_path, fake_fmnist, tiny_zoo, tiny_arch, capsys):
    def err(argv, needle):
        assert main(["train", "purifier", *argv]) == 2
        e = capsys.readouterr().err.strip()
        assert e.startswith("advshield: error:") and "\n" not in e and needle in e

    base = ["--name", "c", "--out-dir", str(tmp_path), "--feature-model", "zoo:tiny-vgg", "--device", "cpu"]
    err([*base, "--data", str(tmp_path / "missing")], "neither a dataset")
    err([*base, "--arch", "nrp-huge"], "unknown purifier arch 'nrp-huge'")
    err([*base, "--adversary", "pgd"], "unknown adversary 'pgd'")
    err(base[2:], "give --name")
    err([*base, "--feature-model", "zoo:nope"], "unknown zoo model 'nope'")
    assert not (tmp_path / "c.safetensors").exists()


def test_cli_trains_and_refuses_to_overwrite(tmp_path, fake_fmnist, tiny_zoo, tiny_arch, capsys):
    args = ["train", "purifier", "--name", "c", "--arch", "nrp-tiny", "--data-root", str(fake_fmnist),
            "--feature-model", "zoo:tiny-vgg", "--steps", "2", "--batch-size", "4", "--ssp-steps", "1",
            "--critic-width", "2", "--eval-images", "4", "--out-dir", str(tmp_path), "--device", "cpu",
            "--adversary", "fgsm", "--no-pixel"]
    assert main(args) == 0
    card = json.loads((tmp_path / "c.json").read_text())
    assert card["command"].startswith("advshield ") and card["training"]["adversary"] == "fgsm"
    assert card["training"]["loss_weights"]["img"] == 0
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(AdvshieldError):  # a purifier is not a classifier
        load_model(str(tmp_path / "c.safetensors"))


@needs_fmnist
@pytest.mark.parametrize("name", ["nrp-fmnist", "nrp-resg-fmnist"])
def test_shipped_purifiers_load_offline_and_reproduce_their_card(name):
    """The zoo purifier's card metrics (PSNR on seeded SSP adversaries of test[:256]) come back from its weights."""
    purifier = load_purifier(f"zoo:{name}")
    card, t = purifier.card, purifier.card["training"]
    assert card["kind"] == "purifier" and t["feature_model"] == "zoo:fmnist-vgg" and t["adversary"] == "ssp"
    fields = set(tp.PurifierConfig.__dataclass_fields__)
    c = tp.PurifierConfig(**{**{k: v for k, v in t.items() if k in fields}, "device": "cpu"})
    c.betas = tuple(c.betas)
    source, held_out, desc = tp.make_source(c, 1, quiet)
    assert desc == card["metrics"]["eval_set"] and held_out is not None
    model, layer, is_classifier, _ = tp.load_feature_model(c.feature_model, c.layer, quiet)
    trainer = tp.PurifierTrainer(c, purifier.net, model, layer, is_classifier, torch.device("cpu"))
    measured = tp.evaluate_purifier(trainer, held_out)
    for k, v in measured.items():
        assert v == pytest.approx(card["metrics"][k], abs=0.02), k
    assert measured["psnr_purified"] > measured["psnr_adv"] + 1  # purification moves adversaries toward x


def test_strength_mix_scales_each_sample_and_keeps_the_clean_share():
    x = torch.rand(8, 1, 6, 6) * 0.8 + 0.1
    x_adv = (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1)
    c = tp.PurifierConfig(name="p", eps=0.1, eps_min=0.02, clean_fraction=0.25)
    out = tp.mix_strengths(x, x_adv, c, step=3)
    assert torch.equal(out, tp.mix_strengths(x, x_adv, c, step=3))  # seeded by (seed, step)
    assert not torch.equal(out, tp.mix_strengths(x, x_adv, c, step=4))
    assert torch.equal(out[:2], x[:2]) and not torch.equal(out[2], x[2])  # 25 % of 8 stay clean
    scale = ((out - x).abs().flatten(1).amax(1) / 0.1)[2:]
    assert bool(((scale >= 0.2 - 1e-5) & (scale <= 1 + 1e-5)).all()) and scale.std() > 0.01
    # off by default: the paper's recipe sees the attack's output untouched
    assert tp.mix_strengths(x, x_adv, tp.PurifierConfig(name="p", eps=0.1), step=3) is x_adv


def test_strength_mix_flags_are_checked():
    with pytest.raises(AdvshieldError, match="eps-min"):
        tp.check_config(tp.PurifierConfig(name="p", eps=0.1, eps_min=0.2))
    with pytest.raises(AdvshieldError, match="clean fraction"):
        tp.check_config(tp.PurifierConfig(name="p", eps=0.1, clean_fraction=1.0))


def test_adversary_mix_splits_the_batch_among_its_kinds(tiny_zoo, tiny_arch):
    c = tp.PurifierConfig(name="s", arch="nrp-tiny", feature_model="zoo:tiny-vgg", ssp_steps=2, critic_width=2,
                          device="cpu", adversary="ssp+gaussian+mi-di")
    model, layer, is_cls, _ = tp.load_feature_model(c.feature_model, None, quiet)
    mix = tp.Adversary(c, model, layer, is_cls)
    assert [type(p.attack).__name__ for p in mix.parts] == ["SSP", "NoneType", "MIDIFGSM"]
    x = torch.rand(7, 1, 28, 28)
    out = mix(x, 5)
    assert out.shape == x.shape and (out - x).abs().max() <= c.eps + 1e-6
    for part, chunk, got in zip(mix.parts, x.tensor_split(3), out.tensor_split(3)):
        assert torch.equal(got, part(chunk, 5))  # each part is that kind's own (seeded) adversary
    with pytest.raises(AdvshieldError, match="unknown adversary 'pgd'"):
        tp.check_config(tp.PurifierConfig(name="p", adversary="ssp+pgd"))
