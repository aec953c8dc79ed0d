"""Transfer table: the NRP paper's Table 5 (SSP vs. FGSM, R-FGSM, I-FGSM, MI-FGSM, DIM) on Fashion-MNIST.

Each attack is crafted on each zoo classifier and classified by every zoo classifier (top-1); the ensemble DIM-TI
row for a target is crafted on the equal-weight logit ensemble of the other models. Settings are the attacks'
``for_budget`` paper defaults (NRP supplement F): FGSM one step of eps; R-FGSM eps/3 random then eps − eps/3;
I-FGSM, MI-FGSM, DIM, DIM-TI 10 steps of eps/10, decay 1.0, DI probability 0.7; SSP 100 steps of 0.01 at the
model's default feature layer. All crafting goes through the evaluation engine (``advshield.eval.grid.evaluate``).

Run: .venv/bin/python benchmarks/transfer.py  (writes the `transfer` section of docs/RESULTS.md)
Dev: ADVSHIELD_ZOO=/tmp/tiny-zoo .venv/bin/python benchmarks/transfer.py --models zoo:tiny-vgg,... --n 20 \
     --results /tmp/RESULTS.md
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _results import ATTACK_LABELS as LABELS
from _results import RESULTS, machine, update_section

from advshield.attacks import hold_one_out
from advshield.data import load_dataset
from advshield.eval.grid import evaluate
from advshield.models import load_models
from advshield.registry import ATTACKS
from advshield.report.tables import markdown_table
from advshield.report.write import write_report
from advshield.utils import pick_device

MODELS = "zoo:fmnist-vgg,zoo:fmnist-resnet,zoo:fmnist-lenet"
ATTACK_NAMES = "fgsm,rfgsm,bim,mifgsm,mi-di,ssp"  # Table 5's rows (TAP and FFF are not implemented)
ENSEMBLE_ATTACK = "mi-di-ti"


def accuracy_table(single: Any, ens: Any, targets: list[str]) -> tuple[str, dict[tuple[str, str, str], float]]:
    """Markdown rows ``attack ← source`` × target top-1 (%), clean first; ``*``: the source is or contains the
    target (white-box). Returns the table and {(attack, source, target): accuracy}."""
    acc: dict[tuple[str, str, str], float] = {}
    for res in (single, ens):
        for r in res.rows():
            acc[(r["attack"], r["source"], r["target"])] = r["robust_accuracy"]
    clean = {r["target"]: r["clean_accuracy"] for r in single.rows()}
    rows = [["clean", "–", *(f"{100 * clean[t]:.1f}" for t in targets)]]
    for a, s in dict.fromkeys((a, s) for a, s, _ in acc):
        members = s.split("+")
        rows.append([LABELS.get(a, a) + (" (ensemble)" if len(members) > 1 else ""), s,
                     *(f"{100 * acc[(a, s, t)]:.1f}" + ("*" if t in members else "") for t in targets)])
    return markdown_table(["attack", "source", *targets], rows), acc


def ssp_sentence(acc: dict[tuple[str, str, str], float], clean: dict[str, float], source: str,
                 eps_text: str) -> str:
    keys = [(t, v) for (a, s, t), v in acc.items() if a == "ssp" and s == source and t != source]
    if not keys:
        return ""
    parts = ", ".join(f"{t} from {100 * clean[t]:.1f} % to {100 * v:.1f} %" for t, v in keys)
    return (f"**SSP transfer from {source}** (label-free, {eps_text}): top-1 of {parts} "
            f"(white-box on {source} itself: {100 * acc[('ssp', source, source)]:.1f} %).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=MODELS, help=f"comma-separated model specs (default {MODELS})")
    p.add_argument("--attacks", default=ATTACK_NAMES, help=f"single-source attacks (default {ATTACK_NAMES})")
    p.add_argument("--eps", default="25.5,16", help="L∞ budgets in 0-255 units (default 25.5,16: 0.1 and 16/255)")
    p.add_argument("--n", type=int, default=1000, help="first N test images (default 1000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ssp-source", default="fmnist-vgg", help="model whose SSP transfer is stated in words")
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update (default docs/RESULTS.md)")
    p.add_argument("--html", default=None, metavar="DIR",
                   help="also write DIR/eps-E/report.html (+ its data) for each budget")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for a in [*attacks, ENSEMBLE_ATTACK]:
        ATTACKS.get(a)
    models = load_models([m.strip() for m in args.models.split(",") if m.strip()])
    targets = list(models)
    data = load_dataset("fashion-mnist", "test", args.data_root).subset(args.n)
    device = pick_device(args.device)
    sections = []
    for eps_255 in [float(e) for e in args.eps.split(",")]:
        eps = eps_255 / 255
        eps_text = f"L∞ {eps_255:g}/255 = {eps:.4g}"
        t1 = time.time()
        single = evaluate(models, data, attacks, ["none"], eps, eps, args.batch_size, args.seed, device,
                          examples=4 if args.html else 0)
        ens = evaluate(models, data, [ENSEMBLE_ATTACK], ["none"], eps, eps, args.batch_size, args.seed, device,
                       sources=hold_one_out(models))
        table, acc = accuracy_table(single, ens, targets)
        if args.html:  # the page people look at: heatmaps, image grids (report.html next to its data)
            single.meta["command"] = "python benchmarks/transfer.py " + " ".join(map(shlex.quote, sys.argv[1:]))
            out = Path(args.html) / f"eps-{eps_255:g}"
            print(f"wrote {write_report(single, out, f'Transfer table, {eps_text}')['html']}", file=sys.stderr)
        clean = {r["target"]: r["clean_accuracy"] for r in single.rows()}
        sections += [f"### {eps_text}", "", table, "",
                     ssp_sentence(acc, clean, args.ssp_source, eps_text), "",
                     f"Crafting and evaluation took {time.time() - t1:.0f} s.", ""]
        print(f"{eps_text}: done in {time.time() - t1:.0f} s", file=sys.stderr)
    command = "python benchmarks/transfer.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    ssp_layers = {n: getattr(m, "default_feature_layer", "logits") for n, m in models.items()}
    body = "\n".join([
        f"## Transfer table (NRP Table 5 on Fashion-MNIST, first {len(data)} test images)", "",
        f"Command: `{command.strip()}`", f"Machine: {machine()}, device {device}",
        f"Total time: {time.time() - t0:.0f} s", "",
        "Top-1 accuracy (%) of each target (columns) on adversarial images crafted on the source (rows). "
        "`*`: the source is, or contains, the target (white-box); the other cells are black-box transfer. "
        "Settings (NRP supplement F, scaled to the budget): FGSM one step of eps; R-FGSM a random step of eps/3 then "
        "one of eps − eps/3; I-FGSM, MI-FGSM, DIM and DIM-TI 10 steps of eps/10, momentum decay 1.0, DI "
        "probability 0.7, TI Gaussian kernel 15/3σ; SSP 100 steps of 0.01, random start, MSE at layer "
        + ", ".join(f"`{v}` ({k})" for k, v in ssp_layers.items())
        + ". DIM-TI (ensemble): crafted on the equal-weight logit ensemble of the other models, so the held-out "
        "target's column is its black-box number. Untargeted, true labels; no defense.", "",
        *sections])
    update_section("transfer", body, args.results)
    print(body)


if __name__ == "__main__":
    main()
