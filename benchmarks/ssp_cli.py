"""`advshield ssp` end to end on a PNG tree: export Fashion-MNIST test images, attack them with SSP at eps 25.5
through the command line, then classify the written PNGs with every zoo model.

Run: .venv/bin/python benchmarks/ssp_cli.py [--n 500]  (writes the `ssp-cli` section of docs/RESULTS.md)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, update_section

from advshield.data.folder import image_folder
from advshield.models import load_model
from advshield.report.tables import markdown_table

MODELS = ("fmnist-vgg", "fmnist-resnet", "fmnist-lenet")


def accuracy(model: torch.nn.Module, data) -> float:
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.batches(500))
    return correct / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--source", default="fmnist-vgg")
    args = p.parse_args()
    cli = str(Path(sys.executable).parent / "advshield")
    with tempfile.TemporaryDirectory() as tmp:
        clean, adv = Path(tmp) / "clean", Path(tmp) / "adv"
        subprocess.run([cli, "data", "export", "--n", str(args.n), "--out", str(clean)], check=True)
        cmd = [cli, "ssp", "--source-dir", str(clean), "--out-dir", str(adv), "--eps", "25.5", "--iters",
               str(args.iters), "--model", f"zoo:{args.source}"]
        t0 = time.time()
        subprocess.run(cmd, check=True)
        took = time.time() - t0
        same_tree = sorted(q.relative_to(clean) for q in clean.rglob("*.png")) == \
            sorted(q.relative_to(adv) for q in adv.rglob("*.png"))
        c, a = image_folder(clean), image_folder(adv)
        linf = float((a.images.int() - c.images.int()).abs().max())
        rows = []
        for name in MODELS:
            m = load_model(f"zoo:{name}")
            kind = "white-box (source)" if name == args.source else "transfer"
            rows.append([f"zoo:{name}", kind, f"{accuracy(m, c):.3f}", f"{accuracy(m, a):.3f}"])
    body = "\n".join([
        "## `advshield ssp` on a PNG folder (eps 25.5/255, label-free)", "",
        f"Command: `.venv/bin/python benchmarks/ssp_cli.py --n {args.n}`, which runs "
        f"`advshield data export --n {args.n}` then `advshield ssp --eps 25.5 --iters {args.iters} "
        f"--model zoo:{args.source}` on the PNG tree.", f"Machine: {machine()}", "",
        f"{args.n} Fashion-MNIST test images; output tree identical to the input tree: {same_tree}; largest change "
        f"{linf:.0f}/255 (budget 25); SSP took {took:.0f} s.", "",
        markdown_table(["model", "setting", "top-1 on the clean PNGs", "top-1 on the SSP PNGs"], rows), ""])
    update_section("ssp-cli", body)
    print(body)


if __name__ == "__main__":
    main()
