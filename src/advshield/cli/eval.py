"""``advshield eval``: the attack × defense × model grid on a dataset, written as Markdown + JSON."""
from __future__ import annotations

import argparse

from ..data import load_dataset
from ..errors import AdvshieldError
from ..models import load_model
from ..registry import ATTACKS, DEFENSES
from ..utils import pick_device
from .common import add_runtime_flags, apply_runtime, check_names, command_line, csv_list, pixels, positive_int


def add_grid_flags(p: argparse.ArgumentParser, n_default: int | None) -> None:
    p.add_argument("--attacks", type=csv_list, default=None,
                   help=f"comma-separated attacks (default: all registered: {', '.join(ATTACKS.names())})")
    p.add_argument("--defenses", type=csv_list, default=None,
                   help=f"comma-separated defenses (default: all registered: {', '.join(DEFENSES.names())})")
    p.add_argument("--eps", type=pixels, default=pixels("25.5"),
                   help="L∞ budget in 0-255 pixel units (default 25.5 = 0.1)")
    p.add_argument("--eps-l2", type=pixels, default=pixels("382.5"),
                   help="L2 budget in 0-255 units over the whole image (default 382.5 = 1.5 in [0,1] units)")
    p.add_argument("--n", type=positive_int, default=n_default, help="number of images (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=250)
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


def run(args: argparse.Namespace) -> int:
    from ..eval.grid import evaluate, save_results

    apply_runtime(args)
    attacks = args.attacks or ATTACKS.names()
    defenses = args.defenses or DEFENSES.names()
    check_names("attack", attacks, ATTACKS.names())
    check_names("defense", defenses, DEFENSES.names())
    models = load_named(args.models)
    sources = load_named(args.sources) if args.sources else None
    data = load_dataset(args.data, args.split, args.data_root).subset(args.n)
    if len(data) == 0:
        raise AdvshieldError(f"dataset {args.data!r} has no images")
    if (data.labels < 0).any():
        raise AdvshieldError(f"{args.data} has unlabelled images; eval needs class sub-folders")
    res = evaluate(models, data, attacks, defenses, args.eps, args.eps_l2, args.batch_size, args.seed,
                   pick_device(args.device), sources=sources, cache_dir=args.cache_dir)
    res.meta["command"] = command_line()
    paths = save_results(res, args.out, f"advshield eval on {data.name}")
    print(paths["markdown"].read_text())
    print(f"wrote {paths['markdown']} and {paths['json']}")
    return 0
