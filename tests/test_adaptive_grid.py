"""The grid is defense-aware: adaptive cells beside transfer ones, full gradients skipped where a defense has none,
EOT and worst-of-R draws for randomized defenses, and a headline that says its threat model."""
from __future__ import annotations

import json

import torch
from conftest import TINY, synthetic_images  # noqa: I001

from advshield.cli.main import main
from advshield.defenses.base import Defense
from advshield.eval.grid import evaluate


class Round(Defense):
    name = "round"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 8).round() / 8


class Noise(Defense):
    name = "noise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)


def setup() -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    cls, _, args = TINY["tiny-vgg"]
    torch.manual_seed(0)
    model = cls(**args).eval()
    x, y = synthetic_images(24, seed=3)
    return {"m": model}, (torch.from_numpy(x).float().div(255)[:, None], torch.from_numpy(y).long())


def test_full_gradient_is_skipped_where_the_defense_has_none_and_headline_is_adaptive():
    models, data = setup()
    res = evaluate(models, data, ["pgd"], {"round": Round()}, 0.1, adaptive=["full", "bpda"])
    settings = {r["setting"] for r in res.rows()}
    assert "adaptive-bpda" in settings and "adaptive-full" not in settings
    assert any("full-gradient cells skipped" in n for n in res.meta["notes"])
    w = res.worst_case()[0]
    assert w["threat_model"] == "adaptive (bpda)" and w["worst_case_accuracy"] == w["adaptive_worst_case_accuracy"]
    assert w["adaptive_worst_case_accuracy"] <= w["transfer_worst_case_accuracy"]


def test_randomized_defense_is_scored_over_draws():
    models, data = setup()
    one = evaluate(models, data, ["fgsm"], {"noise": Noise()}, 0.1, seed=1, draws=1)
    many = evaluate(models, data, ["fgsm"], {"noise": Noise()}, 0.1, seed=1, draws=8)
    assert "noise" in many.meta["randomized_defenses"] and many.meta["draws"] == 8
    acc = lambda r: r.worst_case()[0]["clean_accuracy"]  # noqa: E731
    assert acc(many) <= acc(one)  # a sample counts only if every draw gets it right


def test_cli_transfer_only_says_so(tiny_zoo, tmp_path, fake_fmnist):
    out = tmp_path / "e"
    assert main(["eval", "--models", "zoo:tiny-vgg", "--data-root", str(fake_fmnist), "--n", "8", "--attacks", "fgsm",
                 "--defenses", "none,median", "--adaptive", "none", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    w = {r["defense"]: r for r in doc["worst_case"]}
    assert w["median"]["threat_model"].startswith("transfer only")
    assert w["median"]["adaptive_worst_case_accuracy"] is None
    assert "– / " in (out / "report.md").read_text()
    assert main(["eval", "--models", "zoo:tiny-vgg", "--data-root", str(fake_fmnist), "--n", "8", "--attacks", "fgsm",
                 "--adaptive-attacks", "pgd", "--out", str(tmp_path / "x")]) == 2
