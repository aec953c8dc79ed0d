"""``advshield ssp`` and ``advshield attack``: craft adversarial copies of an image folder tree.

Both read ``--source-dir`` as an image folder (labels: :mod:`advshield.data.labels`), batch the images by size,
attack each batch and write lossless 8-bit PNGs into ``--out-dir`` with the same tree and file stems
(:func:`advshield.attacks.tree.craft_tree`). Nothing is written until every input has been decoded, every output
name checked (no overwrites, no out-dir inside the source tree), the model's input domain checked and the attack
run for one step on one image of every size.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdvshieldError
from .common import (
    add_label_flags,
    add_model_flags,
    add_runtime_flags,
    add_size_flag,
    apply_runtime,
    batch_int,
    check_norm_flags,
    csv_list,
    finite_float,
    norm_budget_pixels,
    open_model,
    pixels,
    positive_float,
    positive_int,
    size_arg,
    size_int,
    step_pixels,
    unit_float,
)

# --attack flags → constructor keywords (given only when the flag is on the command line)
ATTACK_FLAGS = {"alpha": "--alpha", "steps": "--steps", "decay": "--decay", "diversity_prob": "--diversity-prob",
                "resize_rate": "--resize-rate", "len_kernel": "--len-kernel", "nsig": "--nsig",
                "random_start": "--random-start"}


# -- argument parsing ---------------------------------------------------------------------------------------
def _add_io_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-dir", required=True, help="image folder tree to attack (PNG, JPEG, BMP)")
    p.add_argument("--out-dir", required=True, help="where the adversarial PNGs go (same tree and file stems); "
                   "must not be the source dir or inside it; existing files are never replaced")
    p.add_argument("--batch-size", type=batch_int, default=64, help="images per batch (default 64)")
    p.add_argument("--eps", type=norm_budget_pixels, default=pixels("16"),
                   help="budget in 0-255 pixel units, floats allowed (default 16; L2 attacks: over the image)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the PNGs already in --out-dir, write the rest")
    add_size_flag(p, "image (the adversarial PNGs are written at that size)")
    add_model_flags(p)
    add_runtime_flags(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("ssp", help="label-free SSP feature attack on an image folder (NRP's ssp.py)",
                       description="Self-supervised perturbation (NRP, Algorithm 1): maximise the distance between "
                       "the features of the clean and the adversarial image at one layer of --model. No labels "
                       "needed. Writes 8-bit PNGs within --eps of the 8-bit inputs.")
    _add_io_flags(s)
    s.add_argument("--iters", type=positive_int, default=100, help="iterations (default 100)")
    s.add_argument("--alpha", type=step_pixels, default=pixels("2.55"),
                   help="step size in 0-255 pixel units (default 2.55 = 0.01, the reference's step)")
    s.add_argument("--model", default="zoo:fmnist-vgg", help="feature network spec (default zoo:fmnist-vgg)")
    s.add_argument("--layer", default=None,
                   help="module name to take features from (default: the model's default feature layer)")
    s.add_argument("--distance", default="mse", choices=["mse", "mae", "cosine"], help="feature distance")
    s.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=True,
                   help="start from a random ±eps sign pattern (default on, as the reference)")
    s.set_defaults(run=run_ssp)  # label-free: no --labels

    a = sub.add_parser("attack", help="run a registered attack on an image folder",
                       description="Craft adversarial PNGs with any per-image attack (advshield list shows them) "
                       "at its paper defaults for --eps; flags override single settings. Labels come from class "
                       "sub-folders when the tree has them, else from the model's predictions.")
    _add_io_flags(a)
    a.add_argument("--attack", required=True, help="attack name (fgsm, pgd, mi-di-ti, ssp, ...)")
    a.add_argument("--model", default=None, help="source model spec (zoo:NAME, file.safetensors, ...)")
    a.add_argument("--ensemble", type=csv_list, default=None,
                   help="comma-separated model specs: attack their equal-weight logit ensemble (with --model too "
                   "when both are given)")
    a.add_argument("--alpha", type=step_pixels, default=None, help="step size in 0-255 pixel units")
    a.add_argument("--steps", type=positive_int, default=None, help="iterations")
    a.add_argument("--decay", type=finite_float, default=None, help="momentum decay (MI-FGSM family)")
    a.add_argument("--diversity-prob", type=unit_float, default=None, help="input-diversity probability (DI family)")
    a.add_argument("--resize-rate", type=positive_float, default=None, help="input-diversity resize rate (DI family)")
    a.add_argument("--len-kernel", type=size_int, default=None, help="TI kernel size")
    a.add_argument("--nsig", type=positive_float, default=None, help="TI Gaussian kernel radius in standard deviations")
    a.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None,
                   help="random start inside the ball (default: the attack's own default)")
    a.add_argument("--targeted", choices=["random", "least_likely"], default=None,
                   help="targeted mode: a random wrong class, or the least likely class")
    add_label_flags(a)
    a.set_defaults(run=run_attack)


# -- building blocks ----------------------------------------------------------------------------------------
def load_source(specs: list[tuple[str, str]], args: argparse.Namespace, folder: Any) -> nn.Module:
    """One model, or the equal-weight logit :class:`Ensemble` of several; ``specs``: (flag, spec) pairs. Each
    model's input domain is checked against ``folder`` (and adapted with ``--adapt-channels``)."""
    from ..attacks import Ensemble
    from ..eval.preflight import check_tree_domain
    from ..models.domain import adapt_channels

    models = []
    for flag, spec in specs:
        model = open_model(spec, args, flag)
        check_tree_domain(model, folder, f"{flag} {spec}", args.adapt_channels)
        models.append(adapt_channels(model) if args.adapt_channels else model)
    return models[0] if len(models) == 1 else Ensemble(models)


def _prepare(args: argparse.Namespace, verb: str = "attacked") -> tuple[Any, Any, torch.device]:
    """(folder, output plan, device), every input decoded and every output name checked."""
    from ..data.imagetree import check_dirs, load_folder, plan_outputs
    from ..utils import pick_device

    apply_runtime(args)
    source, out = Path(args.source_dir), Path(args.out_dir)
    check_dirs(source, out)
    folder = load_folder(args.source_dir, verb, size=size_arg(args))
    return folder, plan_outputs(folder, out, resume=args.resume), pick_device(args.device)


def _probe(atk: Any, folder: Any, what: str, device: torch.device) -> None:
    from ..attacks.tree import probe_attack
    from ..eval.preflight import probe_tree

    probe_tree(folder, lambda x: probe_attack(atk, x), what, device)


def _craft(folder: Any, plan: Any, atk: Any, labels: Any, args: argparse.Namespace, device: torch.device,
           desc: str) -> None:
    from ..attacks.tree import craft_tree

    n = craft_tree(folder, plan.targets, atk, labels, args.batch_size, device, args.seed, desc, plan.todo)
    eps = atk.threat.eps
    kept = f"; {plan.done} already there kept (--resume)" if plan.done else ""
    print(f"wrote {n} PNGs to {args.out_dir} ({atk!r}, {atk.threat.norm} eps {eps * 255:g}/255 = {eps:.4g}){kept}")


def _flag_error(e: Exception, flags: dict[str, str]) -> AdvshieldError:
    """A library argument error re-worded with the CLI flag (``eps must be ...`` → ``--eps: must be ...``)."""
    msg = str(e)
    for arg, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        if msg.startswith(arg + " "):
            unit = " (in [0,1] units: 255 on the command line)" if arg in ("eps", "alpha") else ""
            return AdvshieldError(f"{flag}: {msg[len(arg) + 1:]}{unit}")
    return AdvshieldError(msg)


# -- commands -----------------------------------------------------------------------------------------------
def run_ssp(args: argparse.Namespace) -> int:
    from ..attacks import SSP

    check_norm_flags([args.model], args)
    if args.eps > 1:
        raise AdvshieldError(f"--eps {args.eps * 255:g} is above 255, more than the whole pixel range (SSP is L∞)")
    folder, plan, device = _prepare(args)
    model = load_source([("--model", args.model)], args, folder).to(device)
    try:
        atk = SSP(model, eps=args.eps, alpha=args.alpha, steps=args.iters, distance=args.distance,
                  random_start=args.random_start, layer=args.layer)
    except ValueError as e:
        raise _flag_error(e, {"eps": "--eps", "alpha": "--alpha", "steps": "--iters", "layer": "--layer"}) from None
    _probe(atk, folder, f"ssp on --model {args.model}", device)
    _craft(folder, plan, atk, None, args, device, "ssp")
    return 0


def build_attack(name: str, model: nn.Module, eps: float, flags: dict[str, Any], targeted: str | None) -> Any:
    """The registered per-image attack ``name`` at its defaults for ``eps``, with ``flags`` (constructor keywords
    given on the command line) overriding them."""
    from ..attacks import Attack
    from ..registry import ATTACKS

    cls = ATTACKS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise AdvshieldError(f"{name!r} is not a per-image attack; `advshield attack` runs only those")
    accepted = set(inspect.signature(cls.__init__).parameters)
    bad = [ATTACK_FLAGS[k] for k in flags if k not in accepted]
    if bad:
        takes = [f for k, f in ATTACK_FLAGS.items() if k in accepted]
        raise AdvshieldError(f"attack {name!r} does not take {', '.join(bad)} (it takes: "
                             f"{', '.join(takes) or 'only --eps'})")
    if getattr(cls, "norm", "linf") == "linf" and eps > 1:
        raise AdvshieldError(f"--eps {eps * 255:g} is above 255, more than the whole pixel range ({name} is L∞)")
    try:
        atk = cls.for_budget(model, eps, **flags)
        if targeted:
            atk.set_target_mode(targeted)
    except ValueError as e:
        raise _flag_error(e, {"eps": "--eps", **ATTACK_FLAGS}) from None
    return atk


def run_attack(args: argparse.Namespace) -> int:
    from ..attacks import SSP
    from ..data.labels import check_num_classes, resolve_labels
    from ..eval.preflight import accuracy_lines, clean_accuracy, folder_batches
    from ..registry import ATTACKS

    ATTACKS.get(args.attack)  # unknown name: fail before reading anything
    specs = ([("--model", args.model)] if args.model else []) + [("--ensemble", s) for s in args.ensemble or []]
    if not specs:
        raise AdvshieldError("give --model SPEC or --ensemble SPEC,SPEC")
    check_norm_flags([s for _, s in specs], args)
    folder, plan, device = _prepare(args)
    label_free = ATTACKS.get(args.attack) is SSP or args.targeted == "least_likely"
    mode = "model" if label_free and args.labels == "auto" and args.class_map is None else args.labels
    labels = resolve_labels(folder, mode, args.class_map, mode_name="--labels", map_name="--class-map")
    model = load_source(specs, args, folder).to(device)
    flags = {k: getattr(args, k) for k in ATTACK_FLAGS if getattr(args, k) is not None}
    atk = build_attack(args.attack, model, args.eps, flags, args.targeted)
    what = " + ".join(f"{f} {s}" for f, s in specs)
    _probe(atk, folder, f"{args.attack} on {what}", device)
    lines = []
    if labels.labels is not None:
        correct, total, classes = clean_accuracy(model, folder_batches(folder, labels.labels, args.batch_size),
                                                 device)
        check_num_classes(labels, classes, what)
        lines = [labels.describe(), *accuracy_lines(what, correct, total, classes)]
    elif not label_free:
        lines = [labels.describe()]
    for line in lines:
        print(line, file=sys.stderr if line.startswith("advshield:") else sys.stdout)
    _craft(folder, plan, atk, labels.labels, args, device, args.attack)
    return 0
