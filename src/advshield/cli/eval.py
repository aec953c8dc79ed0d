"""``advshield eval``: the attack × defense × model grid on a dataset, written as Markdown + JSON."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load_dataset
from ..errors import AdvshieldError
from ..models import load_model
from ..registry import ATTACKS, DEFENSES
from ..utils import pick_device
from .common import (add_runtime_flags, apply_runtime, batch_int, budget_pixels, check_names, command_line,
                     csv_list, norm_budget_pixels, pixels, positive_int)


def add_grid_flags(p: argparse.ArgumentParser, n_default: int | None) -> None:
    p.add_argument("--attacks", type=csv_list, default=None,
                   help=f"comma-separated attacks (default: all registered: {', '.join(ATTACKS.names())})")
    p.add_argument("--defenses", type=csv_list, default=None,
                   help=f"comma-separated defenses (default: all registered: {', '.join(DEFENSES.names())})")
    p.add_argument("--eps", type=budget_pixels, default=pixels("25.5"),
                   help="L∞ budget in 0-255 pixel units (default 25.5 = 0.1)")
    p.add_argument("--eps-l2", type=norm_budget_pixels, default=pixels("382.5"),
                   help="L2 budget in 0-255 units over the whole image (default 382.5 = 1.5 in [0,1] units)")
    p.add_argument("--n", type=positive_int, default=n_default, help="number of images (default %(default)s)")
    p.add_argument("--batch-size", type=batch_int, default=250)
    p.add_argument("--cache-dir", default=None, help="cache crafted batches here and reuse them on a re-run")
    add_runtime_flags(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate attacks × defenses × models on a dataset",
                       description="Craft each attack once per source model, then classify with every defended "
                       "target. Writes OUT/report.md, OUT/report.json and OUT/flags.safetensors.")
    p.add_argument("--models", type=csv_list, required=True, help="comma-separated model specs (zoo:NAME, ...)")
    p.add_argument("--sources", type=csv_list, default=None,
                   help="models that craft the attacks (default: the --models themselves)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, cifar10 or an image folder")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--perturbations", type=csv_list, default=None,
                   help="universal perturbations (.npy from `advshield uap`), evaluated as source 'universal'; "
                   "with them, --attacks defaults to none")
    p.add_argument("--out", required=True, help="output directory")
    add_grid_flags(p, n_default=None)
    p.set_defaults(run=run)


def load_named(specs: list[str]) -> dict:
    """spec → model, keyed by a short name (``zoo:fmnist-vgg`` → ``fmnist-vgg``)."""
    models = {}
    for spec in specs:
        name = spec.split(":", 1)[1] if spec.startswith(("zoo:", "torchvision:")) else spec
        models[name] = load_model(spec)
    return models


def load_baselines(models: dict) -> dict:
    """For every model whose card names a ``base`` (FRU models), that base from the zoo (restoration accuracy
    is measured against the undefended base)."""
    out = {}
    for name, model in models.items():
        base = (getattr(model, "card", None) or {}).get("base")
        if base:
            out[name] = load_model(f"zoo:{base}")
    return out


def load_perturbations(paths: list[str]) -> dict:
    """file stem → perturbation tensor (C×H×W) for each ``.npy`` path."""
    from ..attacks.universal import load_perturbation

    out = {}
    for path in paths:
        name = Path(path).stem
        if name in out:
            raise AdvshieldError(f"two perturbation files are named {name!r}")
        out[name] = load_perturbation(path)
    return out


def run(args: argparse.Namespace) -> int:
    from ..eval.grid import evaluate, save_results

    apply_runtime(args)
    perturbations = load_perturbations(args.perturbations) if args.perturbations else None
    attacks = args.attacks if args.attacks is not None else ([] if perturbations else ATTACKS.names())
    defenses = args.defenses or DEFENSES.names()
    check_names("attack", attacks, ATTACKS.names())
    check_names("defense", defenses, DEFENSES.names())
    models = load_named(args.models)
    sources = load_named(args.sources) if args.sources else None
    data = load_dataset(args.data, args.split, args.data_root).subset(args.n)
    if len(data) == 0:
        raise AdvshieldError(f"dataset {args.data!r} has no images")
    for name, delta in (perturbations or {}).items():
        if tuple(delta.shape) != tuple(data.images.shape[1:]):
            raise AdvshieldError(f"perturbation {name!r} is {tuple(delta.shape)} (C×H×W), the images are "
                                 f"{tuple(data.images.shape[1:])}")
    if (data.labels < 0).any():
        raise AdvshieldError(f"{args.data} has unlabelled images; eval needs class sub-folders")
    res = evaluate(models, data, attacks, defenses, args.eps, args.eps_l2, args.batch_size, args.seed,
                   pick_device(args.device), sources=sources, cache_dir=args.cache_dir,
                   perturbations=perturbations, baselines=load_baselines(models))
    res.meta["command"] = command_line()
    paths = save_results(res, args.out, f"advshield eval on {data.name}")
    print(paths["markdown"].read_text())
    print(f"wrote {paths['markdown']} and {paths['json']}")
    return 0
