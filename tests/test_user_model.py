"""A new user's model and data, end to end: a classifier class in the user's own ``.py`` file (RGB, 32×32, not in
the zoo) with safetensors and ``.pt`` weights, loaded with ``py:`` by the API and every command, on an RGB image
folder whose class folders are named by words (with and without a class map, with an empty class folder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import advshield
from advshield.cli.main import main
from advshield.eval.grid import evaluate

USER_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    """4-way RGB classifier for 32x32 images (normalised input: (x - 0.5) / 0.25)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.head = nn.Linear(16 * 16 * 16, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return {"logits": self.head(x.flatten(1))}   # HuggingFace-style output: adapted to logits


def make_net():
    return Net()
'''
MEAN, STD = "0.5,0.5,0.5", "0.25,0.25,0.25"
# the model's class index of each word-named folder; sorted names (bird, cat, dog, fish) give other indices
CLASS_INDEX = {"cat": 2, "dog": 0, "bird": 3, "fish": 1}
COLOURS = {0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200), 3: (200, 200, 40)}


def _images(cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n 32×32 RGB uint8 images of a class: its colour plus noise."""
    base = np.array(COLOURS[cls], dtype=np.int64).reshape(1, 1, 1, 3)
    return np.clip(base + rng.integers(-40, 41, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict:
    """The user's file, its trained weights (.safetensors and .pt) and an RGB tree pets/<word>/*.png."""
    root = tmp_path_factory.mktemp("user")
    (root / "mynet.py").write_text(USER_FILE)
    ns: dict = {}
    exec(compile(USER_FILE, "mynet", "exec"), ns)
    torch.manual_seed(0)
    net = ns["Net"]()
    rng = np.random.default_rng(0)
    xs = np.concatenate([_images(c, 64, rng) for c in range(4)])
    x = torch.from_numpy(xs).permute(0, 3, 1, 2).float().div(255)
    y = torch.arange(4).repeat_interleave(64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net((x - 0.5) / 0.25)["logits"], y).backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(root / "net.safetensors"))
    torch.save(state, root / "net.pt")
    pets = root / "pets"
    for word, cls in CLASS_INDEX.items():
        (pets / word).mkdir(parents=True)
        for i, img in enumerate(_images(cls, 4, rng)):
            Image.fromarray(img, "RGB").save(pets / word / f"{i}.png")
    (root / "pets-map.json").write_text(json.dumps(CLASS_INDEX))
    return {"root": root, "net": net, "file": root / "mynet.py", "pets": pets, "map": root / "pets-map.json",
            "spec": f"py:{root / 'mynet.py'}:Net@{root / 'net.safetensors'}"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def pngs(root: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


# -- the API ------------------------------------------------------------------------------------------------
def test_api_loads_the_users_model_with_both_weight_formats(user):
    x = torch.rand(5, 3, 32, 32)
    want = user["net"]((x - 0.5) / 0.25)["logits"]
    for weights in ("net.safetensors", "net.pt"):
        spec = f"py:{user['file']}:Net@{user['root'] / weights}"
        by_kw = advshield.load_model(spec, mean=(0.5,) * 3, std=(0.25,) * 3)
        by_query = advshield.load_model(f"{spec}?mean={MEAN}&std={STD}")
        assert torch.allclose(by_kw(x), want, atol=1e-5) and torch.allclose(by_query(x), want, atol=1e-5)
    factory = advshield.load_model(f"py:{user['file']}:make_net@{user['root'] / 'net.pt'}?mean={MEAN}&std={STD}")
    assert torch.allclose(factory(x), want, atol=1e-5)


def test_api_attack_and_evaluate_on_the_users_model(user):
    from advshield.attacks import PGD

    model = advshield.load_model(user["spec"], mean=(0.5,) * 3, std=(0.25,) * 3)
    rng = np.random.default_rng(5)
    x = torch.from_numpy(np.concatenate([_images(c, 3, rng) for c in range(4)])).permute(0, 3, 1, 2).float() / 255
    y = torch.arange(4).repeat_interleave(3)
    assert (model(x).argmax(1) == y).float().mean() >= 0.9  # the user's model is right on its own data
    x_adv = PGD(model, eps=16 / 255, alpha=2 / 255, steps=10)(x, y)
    assert (x_adv - x).abs().max() <= 16 / 255 + 1e-6
    res = evaluate(model, (x, y), ["fgsm"], ["none", "jpeg:quality=50", "median+jpeg"], eps=8 / 255)
    assert {r["defense"] for r in res.rows()} == {"none", "jpeg:quality=50", "median+jpeg"}
    with pytest.raises(advshield.AdvshieldError, match="1-channel"):  # a grayscale purifier on RGB: refused
        advshield.defend(model, "ae")(x)
    assert advshield.defend(model, "ae", adapt_channels=True)(x).shape == (12, 4)


# -- the command line ---------------------------------------------------------------------------------------
def test_attack_with_class_map_prints_accuracy_and_writes_rgb(user, tmp_path, capsys):
    out = tmp_path / "adv"
    rc, so, se = run(capsys, "attack", "--attack", "pgd", "--model", user["spec"], "--mean", MEAN, "--std", STD,
                     "--source-dir", user["pets"], "--class-map", user["map"], "--out-dir", out, "--eps", "8",
                     "--steps", "3")
    assert rc == 0, se
    assert "labels: from class folders by class map" in so and "dog→0" in so
    assert "clean accuracy of --model" in so and "100.0 % (16/16)" in so and "warning" not in se
    a, b = pngs(user["pets"]), pngs(out)
    assert list(a) == list(b) and all(b[k].shape == (32, 32, 3) for k in b)
    assert max(np.abs(a[k].astype(int) - b[k].astype(int)).max() for k in a) == 8


def test_word_folders_without_a_class_map_warn(user, tmp_path, capsys):
    rc, so, se = run(capsys, "attack", "--attack", "fgsm", "--model", user["spec"], "--mean", MEAN, "--std", STD,
                     "--source-dir", user["pets"], "--out-dir", tmp_path / "adv", "--eps", "8")
    assert rc == 0
    assert "sorted folder names" in so and "0.0 % (0/16)" in so  # bird→0, cat→1, dog→2, fish→3: all wrong
    warning = [line for line in se.splitlines() if "warning" in line]
    assert len(warning) == 1 and "below 2× chance" in warning[0] and "--class-map" in warning[0]


def test_empty_class_folder_keeps_every_index(user, tmp_path, capsys):
    import shutil

    pets = tmp_path / "pets"
    shutil.copytree(user["pets"], pets)
    (pets / "ant").mkdir()  # empty, sorts first: without the rule that keeps it, every index would shift
    rc, so, se = run(capsys, "bypass", "--test-dir", pets, "--purifier", "gaussian-blur:sigma=0.5", "--model",
                     user["spec"], "--mean", MEAN, "--std", STD, "--class-map",
                     _write(tmp_path / "m.json", {**CLASS_INDEX, "ant": 3}), "--steps", "2",
                     "--out", tmp_path / "b.json")
    assert rc == 0, se
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["labels"]["index"]["ant"] == 3 and "1 empty: ant" in so
    assert r["undefended_clean_accuracy"] == 1.0 and r["n"] == 16
    assert r["settings"]["threat_model"].startswith("white-box")


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_ssp_layer_eval_bypass_purify_on_the_users_model(user, tmp_path, capsys):
    spec, norm = user["spec"], ["--mean", MEAN, "--std", STD]
    rc, _, se = run(capsys, "ssp", "--model", spec, *norm, "--layer", "conv1", "--source-dir", user["pets"],
                    "--out-dir", tmp_path / "ssp", "--iters", "3", "--eps", "8")
    assert rc == 0, se
    assert len(pngs(tmp_path / "ssp")) == 16

    rc, so, se = run(capsys, "eval", "--models", spec, *norm, "--data", user["pets"], "--class-map", user["map"],
                     "--attacks", "fgsm,pgd", "--out", tmp_path / "eval", "--eps", "8", "--eot", "2", "--draws", "2")
    assert rc == 0, se
    left = [line for line in se.splitlines() if "left out" in line]  # the grayscale zoo purifiers do not fit RGB
    assert {line.split()[3] for line in left} >= {"nrp", "ae", "vae"}
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["meta"]["labels"]["index"] == CLASS_INDEX
    assert "nrp" not in {r["defense"] for r in report["rows"]} and "jpeg" in {r["defense"] for r in report["rows"]}
    clean = {r["target"]: r["clean_accuracy"] for r in report["rows"] if r["defense"] == "none"}
    assert list(clean.values()) == [1.0]

    rc, so, se = run(capsys, "bypass", "--test-dir", user["pets"], "--purifier", "jpeg:quality=50", "--mode",
                     "bpda", "--model", spec, *norm, "--class-map", user["map"], "--steps", "3")
    assert rc == 0, se
    assert "defended clean accuracy" in so

    rc, so, se = run(capsys, "purify", "--dir", user["pets"], "--out-dir", tmp_path / "pure", "--purifier",
                     "median+jpeg:quality=60")
    assert rc == 0, se
    assert len(pngs(tmp_path / "pure")) == 16 and "median+jpeg:quality=60" in so


def test_channel_and_size_refusals_and_adaptation(user, tmp_path, capsys):
    argv = ["attack", "--attack", "fgsm", "--model", "zoo:fmnist-lenet", "--source-dir", user["pets"], "--out-dir",
            tmp_path / "a", "--eps", "8", "--labels", "model"]
    rc, _, se = run(capsys, *argv)
    assert rc == 2 and len(se.splitlines()) == 1 and "1-channel" in se and "--adapt-channels" in se
    rc, _, se = run(capsys, *argv, "--adapt-channels")
    assert rc == 2 and len(se.splitlines()) == 1 and "28×28" in se and "--size 28 28" in se
    assert not (tmp_path / "a").exists()
    rc, _, se = run(capsys, *argv, "--adapt-channels", "--size", "28", "28")
    assert rc == 0, se
    assert {v.shape for v in pngs(tmp_path / "a").values()} == {(28, 28, 3)}  # RGB kept, resized as asked


def test_torchscript_is_refused_where_hooks_are_needed(user, tmp_path, capsys):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 4))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    rc, _, se = run(capsys, "ssp", "--model", f"torchscript:{tmp_path / 'net.pt'}", "--layer", "0",
                    "--source-dir", user["pets"], "--out-dir", tmp_path / "o")
    assert rc == 2 and len(se.splitlines()) == 1 and "py:" in se and not (tmp_path / "o").exists()
    rc, _, se = run(capsys, "attack", "--attack", "fgsm", "--model", f"torchscript:{tmp_path / 'net.pt'}",
                    "--source-dir", user["pets"], "--out-dir", tmp_path / "o2", "--class-map", user["map"])
    assert rc == 0, se  # without hooks, gradient attacks work on TorchScript


@pytest.mark.parametrize("command", ["attack", "ssp", "purify"])
def test_interrupted_run_resumes(user, tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = {"attack": ["attack", "--attack", "fgsm", "--model", user["spec"], "--mean", MEAN, "--std", STD,
                       "--class-map", user["map"], "--source-dir", user["pets"], "--out-dir", out],
            "ssp": ["ssp", "--model", user["spec"], "--mean", MEAN, "--std", STD, "--layer", "conv1", "--iters", "2",
                    "--source-dir", user["pets"], "--out-dir", out],
            "purify": ["purify", "--dir", user["pets"], "--out-dir", out, "--purifier", "median"]}[command]
    assert run(capsys, *argv)[0] == 0
    first = pngs(out)
    kept = out / "cat" / "0.png"
    stamp = kept.stat().st_mtime_ns
    for rel in ("dog/1.png", "fish/3.png"):  # as if the run had stopped before these two
        (out / rel).unlink()
    stale = out / "dog" / ".1.png.abc123.tmp.png"
    stale.write_bytes(b"half a file")
    rc, _, se = run(capsys, *argv)
    assert rc == 2 and "already exists" in se  # without --resume nothing is overwritten
    rc, so, _ = run(capsys, *argv, "--resume")
    assert rc == 0 and "wrote 2 PNGs" in so and "14 already there kept" in so
    assert not stale.exists() and kept.stat().st_mtime_ns == stamp
    again = pngs(out)
    assert list(again) == list(first)
    if command == "purify":  # deterministic: the resumed files are the same as the first run's
        assert all((again[k] == first[k]).all() for k in first)
