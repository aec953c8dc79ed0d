"""``advshield demo --out DIR``: the transfer grid on the embedded default (Fashion-MNIST test images and the
zoo classifiers) for every registered attack and defense."""
from __future__ import annotations

import argparse
import sys
import time

from ..attacks.base import grid_attacks
from ..data import load_dataset
from ..errors import AdvshieldError
from ..models import load_model
from ..models.zoo import zoo_cards
from ..registry import ATTACKS
from ..utils import pick_device
from .common import apply_runtime, check_names, command_line, csv_list, positive_int
from .eval import adaptive_attacks, add_grid_flags, cli_reason, pick_defenses, print_report

DEMO_MODELS = ("fmnist-vgg", "fmnist-resnet", "fmnist-lenet")  # every source is also a target


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the transfer grid on Fashion-MNIST with the zoo models",
                       description="Every zoo classifier of Fashion-MNIST crafts every registered attack; every "
                       "defended zoo classifier is evaluated on them. Writes OUT/report.html (open it in a browser), "
                       "OUT/report.md, OUT/report.json and OUT/flags.safetensors.")
    p.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    p.add_argument("--models", type=csv_list, default=None,
                   help=f"zoo names to use (default: {', '.join(DEMO_MODELS)}, the three models of the NRP "
                   "transfer table; the AT, FRU and unseen-model checkpoints are measured by benchmarks/)")
    p.add_argument("--data-root", default=None, help="directory holding the Fashion-MNIST files")
    p.add_argument("--ssp-steps", type=positive_int, default=20,
                   help="SSP iterations in the demo (default 20, to fit the 5-minute budget; the paper uses 100)")
    add_grid_flags(p, n_default=64, eot=2, draws=2)  # n, EOT and draws fit the 5-minute budget on 2 cores
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.grid import evaluate

    t0 = time.time()
    apply_runtime(args)
    attacks = args.attacks or grid_attacks()
    check_names("attack", attacks, ATTACKS.names())
    defenses, left = pick_defenses(args.defenses, 1, args.adapt_channels, args.seed)  # Fashion-MNIST: 1 channel
    shipped = {c["name"] for c in zoo_cards()}
    names = args.models or [n for n in DEMO_MODELS if n in shipped]
    if not names:
        raise AdvshieldError("the zoo holds no Fashion-MNIST classifier")
    models = {n: load_model(f"zoo:{n}") for n in names}
    data = load_dataset("fashion-mnist", "test", args.data_root).subset(args.n)
    for spec, reason in left.items():
        print(f"advshield: note: defense {spec} left out: {cli_reason(reason)}", file=sys.stderr)
    res = evaluate(models, data, attacks, defenses, args.eps, args.eps_l2, args.batch_size, args.seed,
                   pick_device(args.device), overrides={"ssp": {"steps": args.ssp_steps}}, adaptive=args.adaptive,
                   adaptive_attacks=adaptive_attacks(args, attacks), eot=args.eot, draws=args.draws,
                   examples=args.examples, eps_sweep=args.eps_sweep)
    res.meta["command"] = command_line()
    res.meta["total_s"] = round(time.time() - t0, 1)
    notes = [f"Budget: L∞ {args.eps:.4f} ({args.eps * 255:g}/255), L2 {args.eps_l2:.3f}; iterative attacks: "
             f"10 steps of eps/10; FGSM: one step of eps; SSP: {args.ssp_steps} steps of 0.01 (paper: 100; "
             "`--ssp-steps 100` for the full attack).",
             "Every zoo model is both a source (crafts) and a target (classifies): off-diagonal cells are "
             "black-box transfer.",
             f"Adaptive: {', '.join(adaptive_attacks(args, attacks)) or 'none'} crafted on every defended target "
             f"({', '.join(args.adaptive) or 'no mode'}; EOT {args.eot}, worst of {args.draws} draws for randomized "
             "defenses) — the headline worst case."]
    print_report(res, args.out, f"advshield demo: transfer grid on {data.name}", notes)
    print(f"done in {time.time() - t0:.1f} s")
    return 0
