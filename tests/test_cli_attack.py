"""``advshield ssp`` and ``advshield attack``: PNG trees in, budget-respecting 8-bit PNG trees out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pngs
from PIL import Image

from advshield.cli.main import main
from advshield.data.imagetree import quantize_in_budget
from advshield.data.labels import class_indices


@pytest.fixture
def rgb_tree(tmp_path) -> Path:
    """A flat (unlabelled) RGB tree: three 28×28 images and two 32×32 ones (two size groups)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "rgb"
    root.mkdir()
    for i, side in enumerate([28, 28, 32, 28, 32]):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB").save(p)
    return root


def check_outputs(src: Path, out: Path, eps_255: float) -> None:
    """Same tree and stems, 8-bit PNG, same mode and size, within round(eps·255) of the input."""
    a, b = pngs(src), pngs(out)
    assert list(a) == list(b)
    changed = 0
    for rel, (mode, x) in a.items():
        mode2, y = b[rel]
        assert mode2 == mode and y.dtype == np.uint8 and y.shape == x.shape
        diff = np.abs(y.astype(int) - x.astype(int))
        assert diff.max() <= round(eps_255)
        changed += int(diff.max() > 0)
    assert changed > 0


def test_ssp_gray_tree(gray_tree, tiny_zoo, tmp_path, capsys):
    out = tmp_path / "ssp"
    assert main(["ssp", "--source-dir", str(gray_tree), "--out-dir", str(out), "--model", "zoo:tiny-vgg",
                 "--eps", "25.5", "--iters", "3", "--batch-size", "4"]) == 0
    check_outputs(gray_tree, out, 25.5)
    assert "wrote 10 PNGs" in capsys.readouterr().out


def test_ssp_honours_iters_and_layer(gray_tree, tiny_zoo, tmp_path, monkeypatch):
    from advshield.attacks.ssp import SSP

    calls = []
    orig = SSP.step
    monkeypatch.setattr(SSP, "step", lambda self, x, g: calls.append(self.layer) or orig(self, x, g))
    assert main(["ssp", "--source-dir", str(gray_tree), "--out-dir", str(tmp_path / "o"), "--model",
                 "zoo:tiny-resnet", "--layer", "layer1", "--iters", "7", "--batch-size", "5"]) == 0
    assert calls == ["layer1"] * (1 + 14)  # the one-step probe of the one image size, then 7 iterations × 2 batches


def test_attack_rgb_tree_by_size(rgb_tree, tiny_zoo, tmp_path, capsys):
    out = tmp_path / "adv"
    argv = ["attack", "--attack", "mi-di-ti", "--source-dir", str(rgb_tree), "--out-dir", str(out),
            "--model", "zoo:tiny-vgg", "--eps", "16", "--steps", "2", "--len-kernel", "5"]
    assert main(argv) == 2  # a 1-channel model on RGB images: refused unless asked for, nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1-channel" in err[0] and "--adapt-channels" in err[0] and not out.exists()
    assert main(argv + ["--adapt-channels"]) == 0
    check_outputs(rgb_tree, out, 16)


def test_attack_uses_folder_labels(gray_tree, tiny_zoo, tmp_path, monkeypatch):
    from advshield.attacks.base import Attack

    seen = []
    orig = Attack.forward
    monkeypatch.setattr(Attack, "forward", lambda self, x, y=None: seen.append(y) or orig(self, x, y))
    assert main(["attack", "--attack", "fgsm", "--source-dir", str(gray_tree), "--out-dir", str(tmp_path / "o"),
                 "--ensemble", "zoo:tiny-vgg,zoo:tiny-lenet", "--eps", "8"]) == 0
    expected = sorted((p.relative_to(gray_tree).parts, int(p.parent.name.split("_")[0]))
                      for p in gray_tree.rglob("*.png"))
    assert seen[0] is None  # the one-step probe before anything is written
    assert torch.cat(seen[1:]).tolist() == [label for _, label in expected]
    check_outputs(gray_tree, tmp_path / "o", 8)


def test_folder_labels_follow_exported_indices():
    assert class_indices(["3_Dress", "7_Sneaker"]).index == {"3_Dress": 3, "7_Sneaker": 7}  # only some classes
    assert class_indices(["cat", "dog"]).index == {"cat": 0, "dog": 1}


def test_quantize_pulls_back_into_budget():
    x8 = torch.tensor([[[[0, 100, 200, 255]]]], dtype=torch.uint8)
    x_adv = x8.float() / 255 + torch.tensor([0.2, -0.2, 0.1, -0.2]).view(1, 1, 1, 4)
    q = quantize_in_budget(x_adv.clamp(0, 1), x8, eps=25.5 / 255)
    assert q.tolist() == [[[[25, 75, 225, 230]]]]  # 25.5 rounds to 26 levels; only 25 fit the budget
    q2 = quantize_in_budget(x_adv.clamp(0, 1), x8, eps=0.1, norm="l2")
    assert float((q2.float() - x8.float()).norm()) / 255 <= 0.1


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advshield: error:") and "\n" not in err and "Traceback" not in err
    assert needle in err


def test_refuses_to_overwrite_or_nest(gray_tree, tiny_zoo, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["attack", "--attack", "fgsm", "--model", "zoo:tiny-vgg", "--source-dir", str(gray_tree)]
    existing = sorted(gray_tree.rglob("*.png"))[-1].relative_to(gray_tree)
    (out / existing.parent).mkdir(parents=True)
    (out / existing).write_bytes(b"keep me")
    one_line_error(capsys, [*base, "--out-dir", str(out)], str(existing))
    assert (out / existing).read_bytes() == b"keep me" and len(list(out.rglob("*.png"))) == 1
    one_line_error(capsys, [*base, "--out-dir", str(gray_tree)], "same as --source-dir")
    one_line_error(capsys, [*base, "--out-dir", str(gray_tree / "adv")], "inside --source-dir")
    assert not (gray_tree / "adv").exists()


def test_bad_inputs_exit_2(gray_tree, tiny_zoo, tmp_path, capsys):
    io = ["--source-dir", str(gray_tree), "--out-dir", str(tmp_path / "o")]
    one_line_error(capsys, ["attack", "--attack", "nope", "--model", "zoo:tiny-vgg", *io], "unknown attack 'nope'")
    one_line_error(capsys, ["ssp", "--model", "zoo:tiny-vgg", "--layer", "features.nope", *io], "features.nope")
    one_line_error(capsys, ["attack", "--attack", "fgsm", "--model", "zoo:tiny-vgg", "--steps", "3", *io],
                   "does not take --steps")
    one_line_error(capsys, ["attack", "--attack", "ssp", "--model", "zoo:tiny-vgg", "--targeted", "random", *io],
                   "label-free")
    one_line_error(capsys, ["ssp", "--model", "zoo:tiny-vgg", "--source-dir", str(tmp_path / "missing"),
                            "--out-dir", str(tmp_path / "o")], "does not exist")
    bad = tmp_path / "bad"
    (bad / "c").mkdir(parents=True)
    Image.fromarray(np.arange(784, dtype=np.uint8).reshape(28, 28)).save(bad / "c" / "a.png")
    (bad / "c" / "b.png").write_bytes((bad / "c" / "a.png").read_bytes()[:60])  # truncated after the header
    one_line_error(capsys, ["ssp", "--model", "zoo:tiny-vgg", "--source-dir", str(bad), "--out-dir",
                            str(tmp_path / "o")], "b.png")
    assert not (tmp_path / "o").exists()
