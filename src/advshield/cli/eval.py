"""``advshield eval``: the attack × defense × model grid on a dataset, written as Markdown + JSON."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..attacks.base import grid_attacks
from ..data import load_dataset
from ..errors import AdvshieldError
from ..models.specs import short_name
from ..registry import ATTACKS, DEFENSES
from ..utils import pick_device
from .common import (
    add_label_flags,
    add_model_flags,
    add_runtime_flags,
    add_size_flag,
    apply_runtime,
    batch_int,
    budget_list,
    budget_pixels,
    check_names,
    check_norm_flags,
    command_line,
    csv_list,
    int_at_most,
    norm_budget_pixels,
    open_model,
    pixels,
    positive_int,
    size_arg,
    worker_count,
)


def adaptive_modes(value: str) -> list[str]:
    """``full,bpda``, ``full``, ``bpda`` or ``none``."""
    modes = [m.strip() for m in value.split(",") if m.strip()]
    if modes == ["none"]:
        return []
    bad = [m for m in modes if m not in ("full", "bpda")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"must be full, bpda, full,bpda or none, not {value!r}")
    return list(dict.fromkeys(modes))


def add_grid_flags(p: argparse.ArgumentParser, n_default: int | None, eot: int = 20, draws: int = 10) -> None:
    p.add_argument("--attacks", type=csv_list, default=None,
                   help="comma-separated attacks (default: the transfer attacks: "
                   f"{', '.join(grid_attacks())}; `advshield list attacks` shows all)")
    p.add_argument("--defenses", type=csv_list, default=None,
                   help="comma-separated defense specs: registered names with settings and stacks (jpeg:quality=50, "
                   "median+jpeg) or trained purifiers (zoo:NAME, FILE.safetensors); default: every registered "
                   f"defense that fits the data ({', '.join(default_defenses())}); slow ones run only when named "
                   f"({', '.join(n for n in DEFENSES.names() if n not in default_defenses())})")
    p.add_argument("--eps", type=budget_pixels, default=pixels("25.5"),
                   help="L∞ budget in 0-255 pixel units (default 25.5 = 0.1)")
    p.add_argument("--eps-l2", type=norm_budget_pixels, default=pixels("382.5"),
                   help="L2 budget in 0-255 units over the whole image (default 382.5 = 1.5 in [0,1] units)")
    p.add_argument("--n", "--n-images", dest="n", type=positive_int, default=n_default,
                   help="number of images (default %(default)s; spell it --n-images under torchrun, whose own "
                   "flags --nnodes/--nproc-per-node make --n ambiguous)")
    p.add_argument("--batch-size", type=batch_int, default=250)
    p.add_argument("--cache-dir", default=None, help="cache crafted batches here and reuse them on a re-run")
    p.add_argument("--adapt-channels", action="store_true",
                   help="let 1-channel models and purifiers take RGB data (luma / per channel) and 3-channel models "
                   "grayscale data; without it a channel mismatch is an error and mismatched default defenses are "
                   "left out")
    p.add_argument("--adaptive", type=adaptive_modes, default=["full", "bpda"],
                   help="adaptive threat models run against every defense: full (exact gradients through it, "
                   "skipped with a note where it has none), bpda (through its substitute), full,bpda (default) or "
                   "none (transfer only: the report then says the worst case is defense-unaware)")
    p.add_argument("--adaptive-attacks", type=csv_list, default=None,
                   help="attacks crafted adaptively on each defended target (default: pgd when it is in the grid, "
                   "else the grid's attacks)")
    p.add_argument("--eot", type=positive_int, default=eot,
                   help=f"gradient samples per step against randomized defenses (default {eot})")
    p.add_argument("--draws", type=positive_int, default=draws,
                   help=f"predictions per sample behind a randomized defense; the worst counts (default {draws})")
    p.add_argument("--eps-sweep", type=budget_list, default=None, metavar="EPS,EPS,...",
                   help="also run the grid at these L∞ budgets (0-255 units, e.g. 8,16,25.5,32) for the report's "
                   "robust-accuracy-versus-eps curves (each budget costs one more grid run)")
    p.add_argument("--examples", type=int_at_most(64, minimum=0), default=4, metavar="K",
                   help="samples shown as images in report.html (seeded choice, default 4)")
    add_runtime_flags(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate attacks × defenses × models on a dataset",
                       description="Craft each attack once per source model, then classify with every defended "
                       "target. Writes OUT/report.html (open it in a browser), OUT/report.md, OUT/report.json, "
                       "OUT/flags.safetensors and OUT/examples.safetensors.")
    p.add_argument("--models", type=csv_list, required=True, help="comma-separated model specs (zoo:NAME, ...)")
    p.add_argument("--sources", type=csv_list, default=None,
                   help="models that craft the attacks (default: the --models themselves)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, cifar10 or an image folder")
    p.add_argument("--workers", type=worker_count, default=0,
                   help="DataLoader processes reading an image folder batch by batch (default 0: in this process); "
                        "a folder is never held in memory whole")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--perturbations", type=csv_list, default=None,
                   help="universal perturbations (.npy from `advshield uap`), evaluated as source 'universal'; "
                   "with them, --attacks defaults to none")
    p.add_argument("--out", required=True, help="output directory")
    add_label_flags(p)
    add_size_flag(p)
    add_model_flags(p, adapt=False)
    add_grid_flags(p, n_default=None)
    p.set_defaults(run=run)


def load_named(specs: list[str], args: argparse.Namespace | None = None, flag: str = "--models") -> dict:
    """short name → model for every spec (``--mean``/``--std`` from ``args`` applied to user models)."""
    models = {}
    for spec in specs:
        name = short_name(spec)
        if name in models:
            raise AdvshieldError(f"{flag}: {spec} is given twice")
        models[name] = open_model(spec, args or argparse.Namespace(), flag)
    return models


def load_baselines(models: dict) -> dict:
    """For every model whose card names a ``base`` (FRU models), that base from the zoo (restoration accuracy
    is measured against the undefended base); the base is resolved as a zoo name, never as a path."""
    from ..models import resolve_base

    out = {}
    for name, model in models.items():
        card = getattr(model, "card", None) or {}
        if card.get("base"):
            out[name] = resolve_base(card)
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


def fit_models(models: dict, shape: tuple[int, int, int], flag: str, adapt: bool) -> dict:
    """Check every model takes images of ``shape`` (C, H, W); wrap them for the other channel count when
    ``adapt``."""
    from ..models.domain import adapt_channels, check_domain, input_domain

    out = {}
    for name, model in models.items():
        check_domain(input_domain(model), shape, f"{flag} {getattr(model, 'spec', name)}", adapt)
        out[name] = adapt_channels(model) if adapt else model
    return out


def cli_reason(reason: str) -> str:
    """A library reason worded with the CLI flag."""
    return reason.replace("add adapt_channels=true", "pass --adapt-channels")


def default_defenses() -> list[str]:
    """The registered defenses a grid runs when none are named: all but those with a ``not_default`` reason."""
    return [n for n in DEFENSES.names() if not getattr(DEFENSES.get(n), "not_default", "")]


def pick_defenses(given: list[str] | None, channels: int, adapt: bool, seed: int) -> tuple[dict, dict[str, str]]:
    """(spec → built defense, left-out default spec → reason). Explicit specs that do not fit the data are an
    error; defaults that do not fit are left out (unless ``adapt``)."""
    from ..defenses.base import build_defense
    from ..defenses.spec import compatible_defenses

    specs = given or default_defenses()
    left: dict[str, str] = {} if given else {n: DEFENSES.get(n).not_default for n in DEFENSES.names()
                                             if getattr(DEFENSES.get(n), "not_default", "")}
    if not adapt:
        kept, unfit = compatible_defenses(specs, channels)
        left.update(unfit)
        if given and unfit:
            spec, reason = next(iter(unfit.items()))
            raise AdvshieldError(f"--defenses {spec}: {cli_reason(reason)}")
        specs = kept
    built = {}
    for spec in specs:
        try:
            built[spec] = build_defense(spec, seed, adapt_channels=adapt)
        except AdvshieldError as e:
            raise AdvshieldError(f"--defenses {spec}: {e}") from None
    return built, left


def load_data(args: argparse.Namespace) -> Any:
    """The evaluation images: a named dataset or an image folder (labels per --labels/--class-map), the first
    --n, resized to --size."""
    from ..data.folder import resize_dataset

    folder = Path(args.data).is_dir() and args.data not in ("fashion-mnist", "mnist", "cifar10")
    if not folder and (args.class_map or args.labels == "model"):
        raise AdvshieldError(f"--labels model and --class-map apply to image folders; {args.data} has its own labels")
    kw = {"size": size_arg(args), "class_map": args.class_map, "labels": args.labels,
          "flags": ("--labels", "--class-map", "--size H W"), "stream": getattr(args, "stream", False),
          "workers": getattr(args, "workers", 0)} if folder else {}
    data = load_dataset(args.data, args.split, args.data_root, **kw).subset(args.n)
    if len(data) == 0:
        raise AdvshieldError(f"dataset {args.data!r} has no images")
    size = size_arg(args)
    return resize_dataset(data, size) if size and not folder else data


def adaptive_attacks(args: argparse.Namespace, attacks: list[str]) -> list[str]:
    """The --adaptive-attacks that are in the grid's --attacks (none when --adaptive none)."""
    if args.adaptive_attacks is None:
        return (["pgd"] if "pgd" in attacks else list(attacks)) if args.adaptive else []
    check_names("attack", args.adaptive_attacks, ATTACKS.names())
    if not args.adaptive:
        return []
    missing = [a for a in args.adaptive_attacks if a not in attacks]
    if missing:
        raise AdvshieldError(f"--adaptive-attacks {missing[0]} is not in --attacks ({', '.join(attacks) or 'none'})")
    return list(args.adaptive_attacks)


def print_lines(lines: list[str]) -> None:
    """Notes to stderr, the rest to stdout; only rank 0 prints under torchrun."""
    from ..distributed import is_main

    for line in lines if is_main() else []:
        print(line, file=sys.stderr if line.startswith("advshield:") else sys.stdout)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..eval.grid import evaluate
    from ..eval.preflight import accuracy_lines, clean_accuracy, label_by_model

    apply_runtime(args)
    device = distributed.local_device(pick_device(args.device))
    distributed.init(device)  # under torchrun: join the process group; batches are sharded across the ranks
    perturbations = load_perturbations(args.perturbations) if args.perturbations else None
    attacks = args.attacks if args.attacks is not None else ([] if perturbations else grid_attacks())
    check_names("attack", attacks, ATTACKS.names())
    check_norm_flags(args.models + (args.sources or []), args)
    args.stream = True  # an image folder is read batch by batch (--workers readers)
    data = load_data(args)
    shape = data.sample_shape
    models = fit_models(load_named(args.models, args), shape, "--models", args.adapt_channels)
    sources = fit_models(load_named(args.sources, args, "--sources"), shape, "--sources", args.adapt_channels) \
        if args.sources else None
    defenses, left = pick_defenses(args.defenses, shape[0], args.adapt_channels, args.seed)
    for name, delta in (perturbations or {}).items():
        if tuple(delta.shape) != shape:
            raise AdvshieldError(f"perturbation {name!r} is {tuple(delta.shape)} (C×H×W), the images are {shape}")
    baselines = load_baselines(models)
    lines = []
    mapping = getattr(data, "class_mapping", None)
    if (data.labels < 0).any():
        first = next(iter(models))
        data = label_by_model(models[first], data, args.batch_size, device)
        lines.append(f"labels: the clean predictions of {args.models[0]} (--labels model or no class sub-folders)")
        labels_meta: dict = {"mode": "model", "model": args.models[0]}
    else:
        labels_meta = {"mode": "folder", **mapping.to_json()} if mapping is not None else {"mode": "dataset"}
        if mapping is not None:
            lines.append(f"labels: from class folders by {mapping.rule} ({len(mapping.index)} class folders)")
    for spec, model in zip(args.models, models.values()):
        correct, total, classes = clean_accuracy(model.to(device), data.batches(args.batch_size), device)
        if int(data.labels.max()) >= classes:
            raise AdvshieldError(f"--models {spec} has {classes} classes, but the data hold label "
                                 f"{int(data.labels.max())}; give --class-map")
        lines += accuracy_lines(spec, correct, total, classes)
    for spec, reason in left.items():
        lines.append(f"advshield: note: defense {spec} left out: {cli_reason(reason)}")
    print_lines(lines)
    res = evaluate(models, data, attacks, defenses, args.eps, args.eps_l2, args.batch_size, args.seed,
                   device, sources=sources, cache_dir=args.cache_dir,
                   perturbations=perturbations, baselines=baselines, adaptive=args.adaptive,
                   adaptive_attacks=adaptive_attacks(args, attacks), eot=args.eot, draws=args.draws,
                   examples=args.examples, eps_sweep=args.eps_sweep)
    res.meta["command"] = command_line()
    res.meta["labels"] = labels_meta
    res.meta["left_out_defenses"] = left
    print_report(res, args.out, f"advshield eval on {data.name}")
    return 0


def print_report(res: Any, out: str, title: str, notes: list[str] | None = None) -> None:
    """Write the reports of ``res`` into ``out`` and print the short summary and where they are (rank 0 only
    under torchrun: the other ranks hold the same gathered results)."""
    from ..distributed import is_main, world
    from ..report.tables import summary_table
    from ..report.write import write_report

    if not is_main():
        return
    res.meta["world_size"] = world()[1]
    paths = write_report(res, out, title, notes or [], res.meta.get("command"))
    print(summary_table(res))
    print(f"\nreport: {paths['html']} (open it in a browser); also {paths['markdown'].name}, "
          f"{paths['json'].name}, {paths['flags'].name} in {paths['html'].parent}")
