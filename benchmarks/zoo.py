"""Zoo accuracies on the full Fashion-MNIST test set and the time of `advshield demo`.

Run: .venv/bin/python benchmarks/zoo.py  (writes the `zoo` and `demo` sections of docs/RESULTS.md)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, update_section

from advshield.data import load_dataset
from advshield.models import load_model
from advshield.models.zoo import zoo_cards
from advshield.report.tables import markdown_table


def zoo_section() -> str:
    test = load_dataset("fashion-mnist", "test")
    rows = []
    for card in zoo_cards():
        if card["kind"] != "classifier" or card["dataset"] != "fashion-mnist":
            continue
        model = load_model(f"zoo:{card['name']}")
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test.batches(1000))
        params = sum(p.numel() for p in model.parameters())
        tr = card.get("training", {})
        rows.append([f"zoo:{card['name']}", card["architecture"], f"{params:,}", f"{correct / len(test):.4f}",
                     f"{card['metrics']['clean_accuracy']:.4f}"
                     + (f" (first {card['metrics']['eval_images']})"
                        if card["metrics"].get("test_samples", len(test)) != len(test) else ""),
                     str(tr.get("epochs", tr.get("steps", ""))),
                     f"{tr.get('train_time_s', 0) / 60:.1f} min", f"`{card['command']}`"])
    return "\n".join([
        "## Model zoo (Fashion-MNIST, full 10,000-image test set)", "",
        "Command: `.venv/bin/python benchmarks/zoo.py`", f"Machine: {machine()}", "",
        markdown_table(["model", "family", "parameters", "top-1 (measured now)", "top-1 (card)", "epochs/steps",
                        "training time", "training command"], rows), ""])


def demo_section(n: int, keep: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or tmp
        t0 = time.time()
        subprocess.run([str(Path(sys.executable).parent / "advshield"), "demo", "--out", out, "--n", str(n)],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        meta = json.loads((Path(out) / "report.json").read_text())["meta"]
        report = (Path(out) / "report.md").read_text()
    start, end = report.index("## Clean accuracy"), report.index("## All metrics")
    body = report[start:end].replace("\n## ", "\n### ").replace("## Clean", "### Clean")
    return "\n".join([
        "## `advshield demo` (the main job of `make demo`)", "",
        f"Command: `advshield demo --out demo-out --n {n}` (timed by `.venv/bin/python benchmarks/zoo.py`)",
        f"Machine: {machine()}", "",
        f"**Wall time: {wall:.1f} s** for {meta['n']} test images (process start to report.md, report.json, "
        "report.html and the flags written; the acceptance limit is 5 minutes).", "", body.strip(), ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64, help="demo images (default 64, the demo default)")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--demo-out", default=None, help="keep the demo's output here (default: a temporary folder)")
    args = p.parse_args()
    update_section("zoo", zoo_section())
    if not args.skip_demo:
        update_section("demo", demo_section(args.n, args.demo_out))
    print(Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md")


if __name__ == "__main__":
    main()
