"""``advshield ssp`` and ``advshield attack``: craft adversarial copies of an image folder tree.

Both read ``--source-dir`` as an image folder (class sub-folders give labels, see :func:`folder_labels`), batch the
images by size, attack each batch and write lossless 8-bit PNGs into ``--out-dir`` with the same tree and file
stems. Outputs are quantised to 8 bits and then pulled back into the budget around the 8-bit input, so the
written files themselves respect ``--eps``. Nothing is written until every input has been decoded and every
output name has been checked (no overwrites, no out-dir inside the source tree).
"""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdvshieldError
from .common import (add_runtime_flags, apply_runtime, batch_int, csv_list, finite_float, norm_budget_pixels,
                     pixels, positive_float, positive_int, size_int, step_pixels, unit_float)
from .imagetree import (adapt_channels, check_dirs, check_labels, folder_labels, input_channels,  # noqa: F401
                        load_batch, load_folder, plan_outputs, quantize_in_budget, size_batches, write_batch)

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
    s.set_defaults(run=run_ssp)

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
    a.set_defaults(run=run_attack)


# -- building blocks ----------------------------------------------------------------------------------------
def load_source(specs: list[str]) -> nn.Module:
    """One model, or the equal-weight logit :class:`Ensemble` of several."""
    from ..attacks import Ensemble
    from ..models import load_model

    models = [load_model(s) for s in specs]
    return models[0] if len(models) == 1 else Ensemble(models)


def craft_tree(folder: Any, targets: list[Path], atk: Any, labels: list[int] | None, batch_size: int,
               device: torch.device, seed: int, desc: str) -> int:
    """Attack ``folder`` batch by batch (grouped by image size) and write each result to its target PNG."""
    from ..utils import progress

    batches = size_batches(folder, batch_size)
    checked = labels is None
    for b, idx in enumerate(progress(batches, desc, total=len(batches))):
        x8 = load_batch(folder, idx)
        x = x8.float().div(255).to(device)
        y = None
        if labels is not None:
            y = torch.tensor([labels[i] for i in idx], dtype=torch.long, device=device)
            if not checked:
                with torch.no_grad():
                    check_labels(labels, atk.model(x[:1]).shape[1], folder)
                checked = True
        atk.seed = seed + b
        x_adv = atk(x, y)
        write_batch(quantize_in_budget(x_adv, x8, atk.threat.eps, atk.threat.norm), idx, targets)
    return len(targets)


def _prepare(args: argparse.Namespace) -> tuple[Any, list[Path], torch.device]:
    from ..utils import pick_device

    apply_runtime(args)
    source, out = Path(args.source_dir), Path(args.out_dir)
    check_dirs(source, out)
    folder = load_folder(args.source_dir)
    return folder, plan_outputs(folder, out), pick_device(args.device)


def _summary(n: int, atk: Any, out: str) -> None:
    eps = atk.threat.eps
    print(f"wrote {n} PNGs to {out} ({atk!r}, {atk.threat.norm} eps {eps * 255:g}/255 = {eps:.4g})")


# -- commands -----------------------------------------------------------------------------------------------
def run_ssp(args: argparse.Namespace) -> int:
    from ..attacks import SSP

    folder, targets, device = _prepare(args)
    model = load_source([args.model]).to(device)
    adapt_channels(model)
    try:
        atk = SSP(model, eps=args.eps, alpha=args.alpha, steps=args.iters, distance=args.distance,
                  random_start=args.random_start, layer=args.layer)
    except ValueError as e:
        raise AdvshieldError(str(e)) from None
    n = craft_tree(folder, targets, atk, None, args.batch_size, device, args.seed, "ssp")
    _summary(n, atk, args.out_dir)
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
    try:
        atk = cls.for_budget(model, eps, **flags)
        if targeted:
            atk.set_target_mode(targeted)
    except ValueError as e:
        raise AdvshieldError(f"attack {name!r}: {e}") from None
    return atk


def run_attack(args: argparse.Namespace) -> int:
    from ..attacks import SSP
    from ..registry import ATTACKS

    ATTACKS.get(args.attack)  # unknown name: fail before reading anything
    specs = ([args.model] if args.model else []) + (args.ensemble or [])
    if not specs:
        raise AdvshieldError("give --model SPEC or --ensemble SPEC,SPEC")
    folder, targets, device = _prepare(args)
    model = load_source(specs).to(device)
    adapt_channels(model)
    flags = {k: getattr(args, k) for k in ATTACK_FLAGS if getattr(args, k) is not None}
    atk = build_attack(args.attack, model, args.eps, flags, args.targeted)
    labels = None
    if folder.classes and not isinstance(atk, SSP) and args.targeted != "least_likely":
        labels = folder_labels(folder.classes, folder.labels)
    n = craft_tree(folder, targets, atk, labels, args.batch_size, device, args.seed, args.attack)
    _summary(n, atk, args.out_dir)
    return 0
