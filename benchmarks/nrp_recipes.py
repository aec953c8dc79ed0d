"""NRP training-recipe variants on Fashion-MNIST: does any knob close the transfer gap?

Each recipe is the shipped nrp-fmnist recipe shortened to ``--steps`` (default 800) plus one change: a stronger
training budget, a heavier pixel loss, a mix of SSP and label-free DIM adversaries, a share of clean images.
Recipes are trained with ``advshield train purifier`` into ``--cache`` when missing (seeded and resumable: rerunning
continues a stopped run), then scored on transfer adversaries crafted once (and cached) on fashion-mnist
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
from safetensors.torch import load_file, save_file

from _results import RESULTS, machine, update_section
from advshield import load_model, load_purifier
from advshield.data import load_dataset
from advshield.data.tensors import to_float
from advshield.eval.grid import attack_factory
from advshield.report.tables import markdown_table
from advshield.utils import atomic_path

MODELS = {"fmnist-vgg": "zoo:fmnist-vgg", "fmnist-resnet": "zoo:fmnist-resnet", "fmnist-lenet": "zoo:fmnist-lenet"}
ATTACKS = ("fgsm", "pgd", "mifgsm", "mi-di", "mi-di-ti", "ssp")
EPS = 0.1
BASE = ("--arch nrp-small --data fashion-mnist --feature-model zoo:fmnist-vgg --batch-size 32 --eps 25.5 "
        "--ssp-steps 10 --ssp-alpha 4 --lr 3e-4 --save-every 100 --threads 1")
# name → (extra flags, what changes against the paper recipe)
RECIPES = {
    "paper": ("", "the shipped recipe (paper's Algorithm 2), shortened"),
    "eps-38": ("--eps 38.25", "SSP budget 0.15 instead of 0.1"),
    "gamma-10": ("--gamma-img 10", "pixel-loss weight 10 instead of 0.01"),
    "ssp-mi-di": ("--adversary ssp+mi-di", "half of each batch DIM on fmnist-vgg's predictions (label-free)"),
    "clean-25": ("--clean-fraction 0.25", "a quarter of each batch left clean"),
}
SHIPPED = ("zoo:nrp-fmnist", "zoo:nrp-resg-fmnist")


def train_missing(cache: Path, steps: int, names: list[str]) -> dict[str, str]:
    """Train every recipe in ``names`` whose weights are not in ``cache``; returns name → command."""
    commands = {}
    for name in names:
        extra, _ = RECIPES[name]
        cmd = (f"advshield train purifier --name {name} {BASE} --steps {steps} --out-dir {cache} {extra}").strip()
        commands[name] = cmd
        if not (cache / f"{name}.safetensors").exists():
            print(f"training {name}: {cmd}", flush=True)
            exe = Path(sys.executable).with_name("advshield")
            subprocess.run([str(exe), *shlex.split(cmd)[1:]], check=True)
    return commands


def transfer_set(cache: Path, n: int, offset: int) -> dict[str, torch.Tensor]:
    """{"x", "y", "ATTACK|SOURCE": adversarial images} on test[offset:offset+n], crafted once and cached."""
    path = cache / f"transfer-{offset}-{n}.safetensors"
    if path.exists():
        return load_file(str(path))
    test = load_dataset("fashion-mnist", "test")
    x, y = to_float(test.images[offset : offset + n]), test.labels[offset : offset + n].long()
    out = {"x": x, "y": y}
    for source, spec in MODELS.items():
        model = load_model(spec).eval()
        for attack in ATTACKS:
            torch.manual_seed(0)
            atk = attack_factory(attack, EPS, EPS)(model)
            out[f"{attack}|{source}"] = torch.cat([atk(x[i : i + 200], y[i : i + 200]) for i in range(0, n, 200)])
            print(f"  crafted {attack} on {source}", flush=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in out.items()}, str(tmp))
    return out


def score(purifier: torch.nn.Module | None, data: dict[str, torch.Tensor], targets: dict[str, torch.nn.Module]
          ) -> dict[str, dict[str, float | str]]:
    """Per target: clean top-1 (%), worst and mean top-1 over the attacks from the other models, the worst cell."""
    def purify(z: torch.Tensor) -> torch.Tensor:
        if purifier is None:
            return z
        return torch.cat([purifier(z[i : i + 200]).clamp(0, 1) for i in range(0, len(z), 200)])

    y = data["y"]
    with torch.no_grad():
        pure = {k: purify(v) for k, v in data.items() if k != "y"}
        out = {}
        for t, model in targets.items():
            acc = lambda z: 100 * float((model(z).argmax(1) == y).float().mean())  # noqa: E731
            cells = {k: acc(v) for k, v in pure.items() if k != "x" and k.split("|")[1] != t}
            worst = min(cells, key=cells.get)
            out[t] = {"clean": acc(pure["x"]), "worst": cells[worst], "mean": sum(cells.values()) / len(cells),
                      "worst_cell": worst.replace("|", " from ")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES), help="recipes to train (when missing) and score")
    ap.add_argument("--steps", type=int, default=800, help="training steps of every recipe (default 800)")
    ap.add_argument("--n", type=int, default=400, help="scored images (default 400)")
    ap.add_argument("--offset", type=int, default=1000, help="first scored test image (default 1000)")
    ap.add_argument("--cache", default=".cache/nrp-recipes", help="trained recipes and crafted adversaries")
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
    data = transfer_set(cache, args.n, args.offset)
    targets = {t: load_model(s).eval() for t, s in MODELS.items()}
    rows = [("none", "no purifier", score(None, data, targets))]
    for spec in SHIPPED:
        pur = load_purifier(spec).eval()
        steps = pur.card.get("training", {}).get("steps")
        rows.append((f"`{spec}`", "shipped" + (f", {steps} steps" if steps else ""), score(pur, data, targets)))
    for name in names:
        pur = load_purifier(str(cache / f"{name}.safetensors")).eval()
        rows.append((name, RECIPES[name][1], score(pur, data, targets)))
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
