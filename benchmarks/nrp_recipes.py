"""NRP training-recipe variants on Fashion-MNIST: does any knob close the transfer gap?

Each recipe is the shipped nrp-fmnist recipe shortened to ``--steps`` (default 800) plus one change: a stronger
training budget, a heavier pixel loss, a mix of SSP and label-free DIM adversaries, a share of clean images.
Recipes are trained with ``advshield train purifier`` into ``--cache`` when missing (seeded and resumable: rerunning
continues a stopped run), then scored in one evaluation-engine grid on transfer adversaries (cached) on fashion-mnist
test[offset:offset+n] — disjoint from the first 200 images of the `nrp` section — from each zoo model with FGSM,
PGD, MI-FGSM, DIM, DIM-TI and SSP at L∞ 0.1. For each target zoo model: clean top-1 through the purifier and the
worst and mean top-1 over the attacks crafted on the other two models. The shipped purifiers are scored alongside.

Run: .venv/bin/python benchmarks/nrp_recipes.py   (trains what is missing: ~10 min per recipe at 1 thread)
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from _results import RESULTS, machine, update_section
from torch import nn

from advshield import load_model, load_purifier
from advshield.data import load_dataset
from advshield.data.tensors import TensorDataset
from advshield.defenses.base import Identity
from advshield.eval.engine import Engine
from advshield.eval.grid import attack_factory
from advshield.report.tables import markdown_table

MODELS = {"fmnist-vgg": "zoo:fmnist-vgg", "fmnist-resnet": "zoo:fmnist-resnet", "fmnist-lenet": "zoo:fmnist-lenet"}
ATTACKS = ("fgsm", "pgd", "mifgsm", "mi-di", "mi-di-ti", "ssp")
EPS = 0.1
BASE = ("--data fashion-mnist --feature-model zoo:fmnist-vgg --batch-size 32 --eps 25.5 "
        "--ssp-steps 10 --ssp-alpha 4 --lr 3e-4 --save-every 100 --threads 1")
# name → (extra flags, what changes against the paper recipe)
RECIPES = {
    "paper": ("", "the shipped recipe (paper's Algorithm 2), shortened"),
    "eps-38": ("--eps 38.25", "SSP budget 0.15 instead of 0.1"),
    "gamma-10": ("--gamma-img 10", "pixel-loss weight 10 instead of 0.01"),
    "ssp-mi-di": ("--adversary ssp+mi-di", "half of each batch DIM on fmnist-vgg's predictions (label-free)"),
    "clean-25": ("--clean-fraction 0.25", "a quarter of each batch left clean"),
    "medium": ("--arch nrp-medium", "a larger purifier: nrp-medium (nf 48, nb 2, gc 24; 810,481 parameters)"),
}
SHIPPED = ("zoo:nrp-fmnist", "zoo:nrp-resg-fmnist")


def train_missing(cache: Path, steps: int, names: list[str]) -> dict[str, str]:
    """Train every recipe in ``names`` whose weights are not in ``cache``; returns name → command."""
    commands = {}
    for name in names:
        extra, _ = RECIPES[name]
        arch = "" if "--arch" in extra else "--arch nrp-small "
        cmd = (f"advshield train purifier --name {name} {arch}{BASE} --steps {steps} --out-dir {cache} {extra}").strip()
        commands[name] = cmd
        if not (cache / f"{name}.safetensors").exists():
            print(f"training {name}: {cmd}", flush=True)
            exe = Path(sys.executable).with_name("advshield")
            subprocess.run([str(exe), *shlex.split(cmd)[1:]], check=True)
    return commands


def score(purifiers: dict[str, nn.Module], data: TensorDataset, cache: Path, seed: int
          ) -> dict[str, dict[str, dict[str, float | str]]]:
    """One :class:`Engine` grid: every attack crafted on every zoo model (cached under ``cache``/adv), classified
    by every target behind every purifier. Per purifier and target: clean top-1 (%), worst and mean top-1 over
    the black-box cells (source ≠ target) and the worst cell's name."""
    targets = {t: load_model(s) for t, s in MODELS.items()}
    engine = Engine(targets=targets, attacks={a: attack_factory(a, EPS, EPS) for a in ATTACKS},
                    defenses={"none": Identity(), **purifiers}, seed=seed, cache_dir=cache / "adv")
    rows = engine.run(data.batches(200), total=-(-len(data) // 200)).rows()
    out: dict[str, dict[str, dict[str, float | str]]] = {}
    for d in engine.defenses:
        out[d] = {}
        for t in targets:
            mine = [r for r in rows if r["defense"] == d and r["target"] == t]
            cells = {f"{r['attack']} from {r['source']}": 100 * r["robust_accuracy"]
                     for r in mine if r["setting"] == "transfer"}
            worst = min(cells, key=cells.get)
            out[d][t] = {"clean": 100 * mine[0]["clean_accuracy"], "worst": cells[worst],
                         "mean": sum(cells.values()) / len(cells), "worst_cell": worst}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES), help="recipes to train (when missing) and score")
    ap.add_argument("--steps", type=int, default=800, help="training steps of every recipe (default 800)")
    ap.add_argument("--n", type=int, default=400, help="scored images (default 400)")
    ap.add_argument("--offset", type=int, default=1000, help="first scored test image (default 1000)")
    ap.add_argument("--cache", default=".cache/nrp-recipes", help="trained recipes and crafted adversaries")
    ap.add_argument("--seed", type=int, default=0, help="attack seeds (per attack, source and batch)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        sys.exit(f"benchmarks/nrp_recipes.py: unknown recipe {unknown[0]!r} (known: {', '.join(RECIPES)})")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    commands = train_missing(cache, args.steps, names)
    data = load_dataset("fashion-mnist", "test").subset(args.n, args.offset)
    labels = {"none": ("none", "no purifier")}
    purifiers = {}
    for spec in SHIPPED:
        purifiers[spec] = load_purifier(spec)
        steps = purifiers[spec].card.get("training", {}).get("steps")
        labels[spec] = (f"`{spec}`", "shipped" + (f", {steps} steps" if steps else ""))
    for name in names:
        purifiers[name] = load_purifier(str(cache / f"{name}.safetensors"))
        labels[name] = (name, RECIPES[name][1])
    scores = score(purifiers, data, cache, args.seed)
    rows = [(*labels[d], res) for d, res in scores.items()]
    body = []
    for label, what, res in rows:
        body.append([label, what, *(f"{res[t]['clean']:.1f}" for t in MODELS),
                     *(f"{res[t]['worst']:.1f} ({res[t]['worst_cell']})" for t in MODELS),
                     f"{sum(res[t]['mean'] for t in MODELS) / len(MODELS):.1f}"])
    short = [t.removeprefix("fmnist-") for t in MODELS]
    table = markdown_table(["purifier", "change", *(f"clean {t}" for t in short), *(f"worst {t}" for t in short),
                            "mean transfer"], body)
    command = "python benchmarks/nrp_recipes.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join([
        f"## NRP recipe variants (Fashion-MNIST test[{args.offset}:{args.offset + args.n}], L∞ 0.1)", "",
        f"Command: `{command.strip()}`", f"Machine: {machine()}", f"Total time: {time.time() - t0:.0f} s "
        "(scoring; the recipes were trained beforehand with the commands below, each at 1 thread).", "",
        "Top-1 accuracy (%) through each purifier. *clean*: clean images. *worst*: the lowest over FGSM, PGD, "
        "MI-FGSM, DIM (mi-di), DIM-TI (mi-di-ti) and SSP crafted on each of the other two zoo models (in brackets: "
        "that attack and its source); *mean transfer*: the mean over all those cells and the three targets. "
        f"Recipes: the shipped nrp-fmnist recipe with {args.steps} steps and one change each; the extensions "
        "(--eps-min, --clean-fraction, adversary mixes) are not in the paper.", "", table, "",
        "Training commands:", "", *(f"- {n}: `{c}`" for n, c in commands.items())])
    update_section("nrp-recipes", text, Path(args.results))
    print(text)


if __name__ == "__main__":
    main()
