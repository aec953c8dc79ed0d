"""report.html: rendered from a tiny grid and an audit, checked for structure, decodable images, no external
references, a byte-identical rebuild from the saved files, and (when Debian's chromium is there) a real browser
screenshot that is not blank."""
import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from advshield.cli.main import main
from advshield.defenses.base import Defense
from advshield.eval.grid import evaluate
from advshield.eval.results import GridResults
from advshield.report.html import audit_html, grid_html, png_uri
from advshield.report.write import write_report

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


class Blackout(Defense):
    """Destroys the image: its clean cost is far above 10 points."""

    def forward(self, x):
        return torch.zeros_like(x)


class Jitter(Defense):
    randomized = True

    def forward(self, x):
        return (x + 0.02 * torch.randn_like(x)).clamp(0, 1)


class Bands(nn.Module):
    """10 classes: the brightest of 10 bands of rows (``dim`` 2) or columns (``dim`` 3); logits N×10."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        size = (10, 1) if self.dim == 2 else (1, 10)
        return 20 * nn.functional.adaptive_avg_pool2d(x, size).flatten(1)


@pytest.fixture(scope="module")
def grid():
    torch.manual_seed(0)
    models = {"rows": Bands(2), "cols": Bands(3)}
    x = torch.rand(12, 1, 28, 28)
    with torch.no_grad():
        y = models["rows"](x).argmax(1)  # labels the first target gets right: clean accuracy 100 %
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = evaluate(models, (x, y), ["fgsm", "pgd"], {"none": nn.Identity(), "median": "median",
                                                           "blackout": Blackout(), "jitter": Jitter()},
                       eps=0.1, batch_size=6, adaptive="full,bpda", adaptive_attacks=["pgd"], eot=2, draws=2,
                       examples=3, eps_sweep=[8 / 255, 16 / 255], perturbations={"uap": 0.05 * torch.ones(1, 28, 28)})
    finally:
        torch.set_num_threads(n)
    res.meta["classes"] = [f"class-{i}" for i in range(10)]
    return res


def images(html: str) -> list[Image.Image]:
    out = []
    for b64 in IMG.findall(html):
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        im.load()
        out.append(im)
    return out


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"https?://", html), "external reference"
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith(("data:", "#")), attr
    assert "@import" not in html and "url(" not in html


def test_grid_page_has_every_section_and_decodable_images(grid):
    html = grid_html(grid, "tiny", ["a note"], "advshield eval --models ...")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for anchor in ("summary", "transfer", "eps", "examples", "universal", "notes", "details"):
        assert f'<section id="{anchor}">' in html, anchor
    assert_self_contained(html)
    ims = images(html)
    # per attack: 3 samples × (clean + adversarial + perturbation + 3 defenses) = 18, two attacks; + 1 universal
    assert len(ims) == 2 * 18 + 1
    assert all(im.size == (28, 28) and im.mode == "L" for im in ims)
    assert html.count("<svg") == 4 + 2  # a heatmap per defense, an eps curve per target
    assert "viridis" in html and "perturbation ×5.0" in html
    assert "true: class-" in html  # class names, not indices
    assert "clean cost" in html  # blackout costs far more than 10 points
    assert "randomized (worst of 2 draws)" in html
    assert "advshield eval --models ..." in html and "a note" in html


def test_summary_puts_the_adaptive_headline_beside_the_transfer_number(grid):
    html = grid_html(grid, "tiny")
    summary = html.split('<section id="summary">')[1].split("</section>")[0]
    worst = {(w["defense"], w["target"]): w for w in grid.worst_case()}
    w = worst[("median", "cols")]
    assert f'<span class="headline">{100 * w["adaptive_worst_case_accuracy"]:.1f}%</span>' in summary
    assert "transfer (defense-unaware)" in summary and "adaptive (" in summary
    assert summary.index("<code>none</code>") < summary.index("<code>median</code>")  # the reference first


def test_transfer_only_run_says_so(grid, tmp_path):
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    res = evaluate({"m": Bands(2)}, (x, y), ["fgsm"], ["none", "median"], eps=0.1)
    html = grid_html(res)
    assert "No adaptive attack was run" in html and "defense-unaware only" in html
    assert "No example images were kept" in html and "--eps-sweep" in html


def test_written_report_rebuilds_byte_identical(grid, tmp_path):
    paths = write_report(grid, tmp_path / "out", "tiny", ["n1"], "cmd")
    assert {p.name for p in paths.values()} == {"report.json", "flags.safetensors", "examples.safetensors",
                                                "report.md", "report.html"}
    html, md = paths["html"].read_text(), paths["markdown"].read_text()
    paths["html"].unlink()
    assert main(["report", str(tmp_path / "out")]) == 0
    assert paths["html"].read_text() == html and paths["markdown"].read_text() == md
    back = GridResults.load(tmp_path / "out")
    assert json.dumps(back.rows()) == json.dumps(grid.rows())  # NaN-aware
    assert list(back.clean_pred) == list(grid.clean_pred) and list(back.adv_pred) == list(grid.adv_pred)


def test_report_command_refuses_a_foreign_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advshield: error:") and "report.json" in err and len(err.splitlines()) == 1


def test_audit_page(tmp_path):
    doc = {"clean_accuracy": 0.9, "robust_accuracy": 0.2, "robust_accuracy_majority": 0.3, "ci95": [0.1, 0.3],
           "per_attack": {"clean": 0.9, "full gradient APGD-CE+DLR": 0.25, "Square (200 queries)": 0.5},
           "flags": ["zero-gradients"], "notes": ["zero-gradients: masking"], "n": 4,
           "meta": {"defense": "jpeg", "model": "zoo:x", "norm": "linf", "eps": 0.1, "eps_255": 25.5,
                    "version": "quick", "randomized": False, "classes": [f"c{i}" for i in range(10)]}}
    x = torch.rand(2, 1, 28, 28)
    mode = "full gradient APGD-CE+DLR"
    ex = {"index": torch.tensor([0, 3]), "labels": torch.tensor([1, 2]), "clean": x,
          f"adv/{mode}": (x + 0.1).clamp(0, 1), f"pred/{mode}": torch.tensor([1, 5])}
    html = audit_html(doc, "audit", "advshield audit ...", ex)
    assert_self_contained(html)
    assert "20.0%" in html and "zero-gradients" in html and len(images(html)) == 2 + 2 * 2
    assert "true: c1" in html and ">c5<" in html


def test_png_uri_round_trips_rgb():
    img = torch.rand(3, 5, 7)
    im = Image.open(io.BytesIO(base64.b64decode(png_uri(img).split(",", 1)[1])))
    assert im.size == (7, 5) and im.mode == "RGB"
    back = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()
    torch.testing.assert_close(back, (img * 255).round(), atol=0, rtol=0)


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(chromium() is None, reason="no chromium here (Debian package `chromium`; `make test` installs "
                    "it when apt-get is available)")
def test_report_renders_in_headless_chromium(grid, tmp_path):
    page = write_report(grid, tmp_path / "out", "tiny")["html"]
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", page.resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 1600)
    colours = im.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    px = torch.from_numpy(np.asarray(im).copy()).float()
    assert float(px.std()) > 20
