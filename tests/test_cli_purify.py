"""``advshield purify`` and ``advshield bypass`` (NRP's purify.py / bypass_nrp.py) on small generated trees."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pngs
from PIL import Image

from advshield.cli.main import main
from advshield.defenses.nrp import NRP, DynamicPurifier, NRPResG
from advshield.defenses.purifier import load_purifier
from advshield.models import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def save_purifier(path: Path, arch: str = "nrp", channels: int = 1) -> str:
    """A random-weight tiny purifier checkpoint (kind "purifier"); output bias 0.5 keeps it off the clamp."""
    torch.manual_seed(0)
    args = ({"in_channels": channels, "nf": 4, "nb": 1, "gc": 2} if arch == "nrp"
            else {"in_channels": channels, "nf": 4, "nb": 1})
    net = (NRP if arch == "nrp" else NRPResG)(**args)
    with torch.no_grad():
        net.conv_last.bias.fill_(0.5)
    save_checkpoint(net, path, {"name": path.stem, "kind": "purifier", "dataset": "fashion-mnist",
                                "architecture": arch, "arch_args": args, "metrics": {}})
    return str(path)


@pytest.fixture
def gray_p(tmp_path) -> str:
    return save_purifier(tmp_path / "models" / "gray-nrp.safetensors")


@pytest.fixture
def rgb_p(tmp_path) -> str:
    return save_purifier(tmp_path / "models" / "rgb-resg.safetensors", arch="resg", channels=3)


@pytest.fixture
def color_tree(tmp_path) -> Path:
    """A nested RGB/RGBA tree with two sizes: a/0 RGB 28², a/1 RGBA 20×24, b/c/2 RGB 28², b/3 RGBA 28²."""
    rng = np.random.default_rng(0)
    root = tmp_path / "color"
    for rel, mode, (h, w) in [("a/0.png", "RGB", (28, 28)), ("a/1.png", "RGBA", (20, 24)),
                              ("b/c/2.png", "RGB", (28, 28)), ("b/3.png", "RGBA", (28, 28))]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode).save(root / rel)
    return root


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advshield: error:") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err


# -- purify -------------------------------------------------------------------------------------------------
def test_purify_gray_tree_keeps_tree_modes_and_matches_the_purifier(gray_tree, gray_p, tmp_path, capsys):
    out = tmp_path / "pur"
    assert main(["purify", "--dir", str(gray_tree), "--out-dir", str(out), "--purifier", gray_p,
                 "--batch-size", "4"]) == 0
    assert "wrote 10 PNGs" in capsys.readouterr().out
    a, b = pngs(gray_tree), pngs(out)
    assert list(a) == list(b)
    p = load_purifier(gray_p)
    for rel, (mode, x) in a.items():
        mode2, y = b[rel]
        assert mode2 == mode == "L" and y.dtype == np.uint8 and y.shape == x.shape
        with torch.no_grad():
            want = p(torch.from_numpy(x.copy()).float().div(255)[None, None]).mul(255).round().byte()[0, 0].numpy()
        assert np.array_equal(y, want)  # the file is the purifier's output at native size, 8-bit
    assert any(not np.array_equal(a[r][1], b[r][1]) for r in a)


def test_purify_rgb_and_rgba_native_size(color_tree, gray_tree, rgb_p, gray_p, tmp_path):
    argv = ["purify", "--dir", str(color_tree), "--out-dir", str(tmp_path / "refused"), "--purifier", gray_p]
    assert main(argv) == 2 and not (tmp_path / "refused").exists()  # 1-channel purifier on RGB: only when asked
    for spec, name in ((rgb_p, "o3"), (gray_p, "o1")):  # a 3-channel and a 1-channel purifier
        out = tmp_path / name
        assert main(["purify", "--dir", str(color_tree), "--out-dir", str(out), "--purifier", spec,
                     "--adapt-channels"]) == 0
        a, b = pngs(color_tree), pngs(out)
        assert list(a) == list(b)
        for rel, (_, x) in a.items():
            mode2, y = b[rel]
            assert mode2 == "RGB" and y.shape == x.shape[:2] + (3,) and y.dtype == np.uint8  # alpha dropped
    assert main(["purify", "--dir", str(gray_tree), "--out-dir", str(tmp_path / "g3"), "--purifier", rgb_p,
                 "--adapt-channels"]) == 0
    assert {m for m, _ in pngs(tmp_path / "g3").values()} == {"L"}  # grayscale stays grayscale


def test_purify_dynamic_is_seeded(gray_tree, gray_p, tmp_path):
    def run(name: str, *extra: str) -> dict:
        assert main(["purify", "--dir", str(gray_tree), "--out-dir", str(tmp_path / name), "--purifier", gray_p,
                     "--batch-size", "4", *extra]) == 0
        return pngs(tmp_path / name)

    static = run("s")
    a, b = run("d1", "--dynamic", "--seed", "3"), run("d2", "--dynamic", "--seed", "3")
    c = run("d3", "--dynamic", "--seed", "4", "--sigma", "0.05", "--eps", "16")
    same = lambda u, v: all(np.array_equal(u[r][1], v[r][1]) for r in u)  # noqa: E731
    assert same(a, b) and not same(a, c) and not same(a, static)
    assert all(m == "L" for m, _ in a.values())


def test_purify_refuses_overwrite_and_nesting(gray_tree, gray_p, tmp_path, capsys):
    out = tmp_path / "o"
    existing = sorted(gray_tree.rglob("*.png"))[0].relative_to(gray_tree)
    (out / existing.parent).mkdir(parents=True)
    (out / existing).write_bytes(b"keep me")
    base = ["purify", "--purifier", gray_p, "--dir", str(gray_tree)]
    one_line_error(capsys, [*base, "--out-dir", str(out)], "already exists")
    assert (out / existing).read_bytes() == b"keep me" and len(list(out.rglob("*.png"))) == 1
    one_line_error(capsys, [*base, "--out-dir", str(gray_tree / "p")], "inside --dir")
    assert not (gray_tree / "p").exists()


# -- bypass -------------------------------------------------------------------------------------------------
def bypass(tree: Path, purifier: str, out: Path | None, *extra: str) -> dict | None:
    argv = ["bypass", "--test-dir", str(tree), "--purifier", purifier, "--model", "zoo:tiny-vgg", "--eps", "16",
            "--steps", "2", "--batch-size", "10", *extra]
    assert main([*argv, *(["--out", str(out)] if out else [])]) == 0
    return json.loads(out.read_text()) if out else None


@pytest.mark.parametrize("mode", ["full", "bpda"])
def test_bypass_modes_write_json_and_targets_are_never_the_label(gray_tree, gray_p, tiny_zoo, tmp_path, capsys,
                                                                   mode):
    r = bypass(gray_tree, gray_p, tmp_path / "r.json", "--mode", mode, "--seed", "5")
    out = capsys.readouterr().out
    assert "targeted success rate" in out and "defended clean accuracy" in out
    for k in ("targeted_success_rate", "untargeted_error_rate", "adversarial_accuracy", "clean_accuracy",
              "undefended_clean_accuracy"):
        assert 0 <= r[k] <= 1
    assert r["n"] == 10 and len(r["images"]) == 10 and r["labels"]["mode"] == "folder"
    assert abs(r["adversarial_accuracy"] + r["untargeted_error_rate"] - 1) < 1e-9
    s = r["settings"]
    assert (s["mode"], s["steps"], s["eps_255"], s["alpha_255"], s["seed"], s["eot"]) == (mode, 2, 16, 2, 5, 1)
    labels = {p.relative_to(gray_tree).as_posix(): int(p.parent.name.split("_")[0]) for p in gray_tree.rglob("*.png")}
    assert {i["file"]: i["label"] for i in r["images"]} == labels
    assert all(i["target"] != i["label"] and 0 <= i["target"] < 10 for i in r["images"])
    again = bypass(gray_tree, gray_p, tmp_path / "r2.json", "--mode", mode, "--seed", "5")
    assert [i["target"] for i in again["images"]] == [i["target"] for i in r["images"]]  # seeded
    assert again["targeted_success_rate"] == r["targeted_success_rate"]


def test_bypass_modes_differ_in_the_gradient(gray_tree, gray_p, tiny_zoo, monkeypatch):
    from advshield.defenses.base import Defense

    calls = []
    orig = Defense.bpda
    monkeypatch.setattr(Defense, "bpda", lambda self, x: calls.append(1) or orig(self, x))
    bypass(gray_tree, gray_p, None, "--mode", "full")
    assert calls == []
    bypass(gray_tree, gray_p, None, "--mode", "bpda")
    assert len(calls) >= 2  # every attack step goes straight through the purifier


def test_bypass_dynamic_eot_draws_n_gradient_samples(gray_tree, gray_p, tiny_zoo, tmp_path, monkeypatch):
    draws = []
    orig = DynamicPurifier.noisy
    monkeypatch.setattr(DynamicPurifier, "noisy", lambda self, x: draws.append(1) or orig(self, x))
    r1 = bypass(gray_tree, gray_p, tmp_path / "e1.json", "--dynamic", "--eot", "1")
    n1, draws[:] = len(draws), []
    r3 = bypass(gray_tree, gray_p, tmp_path / "e3.json", "--dynamic", "--eot", "3", "--mode", "bpda")
    assert len(draws) - n1 == 2 * (3 - 1)  # 2 steps × 2 more noise draws each; one batch
    assert r1["settings"]["eot"] == 1 and r3["settings"]["eot"] == 3 and r3["settings"]["dynamic"]
    assert r3["settings"]["sigma"] == 0.05 and r3["settings"]["noise_eps_255"] == 16
    assert all(i["target"] != i["label"] for i in r3["images"])


def test_bypass_flat_tree_uses_defended_predictions(tmp_path, rgb_p, tiny_zoo, capsys):
    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB").save(flat / f"{i}.png")
    r = bypass(flat, rgb_p, tmp_path / "f.json", "--adapt-channels")
    assert "clean predictions" in capsys.readouterr().err
    assert r["clean_accuracy"] is None and r["labels"]["description"].startswith("defended clean predictions")
    assert all(i["label"] == i["clean_prediction"] and i["target"] != i["label"] for i in r["images"])


def test_bypass_refuses_to_overwrite_json(gray_tree, gray_p, tiny_zoo, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("keep me")
    base = ["bypass", "--test-dir", str(gray_tree), "--purifier", gray_p, "--model", "zoo:tiny-vgg",
            "--steps", "1", "--out", str(out)]
    one_line_error(capsys, base, "already exists")
    assert out.read_text() == "keep me"
    assert main([*base, "--overwrite"]) == 0 and json.loads(out.read_text())["n"] == 10


# -- bad inputs ---------------------------------------------------------------------------------------------
def test_bad_inputs_exit_2_and_write_nothing(gray_tree, gray_p, tiny_zoo, tmp_path, capsys):
    o, js = tmp_path / "o", tmp_path / "r.json"
    pur = lambda d, p: ["purify", "--dir", str(d), "--out-dir", str(o), "--purifier", p]  # noqa: E731
    byp = lambda d, p, m: ["bypass", "--test-dir", str(d), "--purifier", p, "--model", m,  # noqa: E731
                           "--steps", "1", "--out", str(js)]
    missing = tmp_path / "missing"
    one_line_error(capsys, pur(missing, gray_p), "does not exist")
    one_line_error(capsys, byp(missing, gray_p, "zoo:tiny-vgg"), "does not exist")
    one_line_error(capsys, pur(gray_tree, "zoo:nope"), "unknown zoo model 'nope'")
    one_line_error(capsys, byp(gray_tree, "zoo:nope", "zoo:tiny-vgg"), "unknown zoo model 'nope'")
    one_line_error(capsys, pur(gray_tree, "zoo:tiny-vgg"), "is a classifier, not a purifier")
    one_line_error(capsys, byp(gray_tree, str(tiny_zoo / "tiny-lenet.safetensors"), "zoo:tiny-vgg"),
                   "is a classifier, not a purifier")
    one_line_error(capsys, byp(gray_tree, gray_p, gray_p), "is a purifier, not a classifier")
    bad = tmp_path / "bad"
    (bad / "c").mkdir(parents=True)
    Image.fromarray(np.arange(784, dtype=np.uint8).reshape(28, 28)).save(bad / "c" / "a.png")
    (bad / "c" / "b.png").write_bytes((bad / "c" / "a.png").read_bytes()[:60])  # truncated after the header
    one_line_error(capsys, pur(bad, gray_p), "b.png")
    one_line_error(capsys, byp(bad, gray_p, "zoo:tiny-vgg"), "b.png")
    assert not o.exists() and not js.exists()
