"""``advshield train classifier ...``: seeded training recipes; checkpoints each epoch and resumes."""
from __future__ import annotations

import argparse
import json

from ..errors import AdvshieldError
from ..models.recipes import CLASSIFIER_RECIPES
from ..registry import MODELS
from .common import (
    add_resume_flags,
    add_runtime_flags,
    add_scale_flags,
    apply_runtime,
    batch_int,
    budget_pixels,
    command_line,
    new_checkpoint_path,
    plain_name,
    positive_float,
    positive_int,
)
from .train_autoencoder import add_autoencoder_parser
from .train_diffusion import add_diffusion_parser
from .train_fru import add_fru_parser
from .train_purifier import add_purifier_parser


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier, a purifier or a diffusion denoiser")
    tsub = p.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    c = tsub.add_parser("classifier", help="train a classifier and write it to the zoo folder",
                        description="Train with SGD (Nesterov, one-cycle LR), random shift+flip augmentation; "
                        "checkpoint every epoch under OUT/.train/NAME and resume from there.")
    c.add_argument("--recipe", choices=sorted(CLASSIFIER_RECIPES), help="a shipped zoo recipe")
    c.add_argument("--name", type=plain_name, help="name of the zoo entry (default: the recipe's name)")
    c.add_argument("--arch", help=f"architecture: {', '.join(MODELS.names())}")
    c.add_argument("--arch-args", default=None, help='JSON of architecture arguments, e.g. \'{"widths": [32,64,128]}\'')
    c.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, cifar10 (default fashion-mnist)")
    c.add_argument("--data-root", default=None, help="directory holding the dataset files")
    c.add_argument("--epochs", type=positive_int)
    c.add_argument("--batch-size", type=batch_int)
    c.add_argument("--lr", type=positive_float)
    c.add_argument("--out-dir", default="zoo", help="where NAME.safetensors and NAME.json go (default zoo)")
    add_resume_flags(c)
    c.add_argument("--adversarial", choices=("pgd", "fgsm-rs", "trades"), default=None,
                   help="adversarial training: pgd (Madry), fgsm-rs (fast: random start + one step) or trades "
                        "(default: clean training, or the recipe's)")
    c.add_argument("--adv-eps", type=budget_pixels, default=None,
                   help="L∞ budget of adversarial training, 0-255 (default 25.5, or the recipe's)")
    c.add_argument("--adv-steps", type=positive_int, default=None,
                   help="attack steps per batch for pgd/trades (default 7 of eps/4, or the recipe's)")
    c.add_argument("--adv-beta", type=positive_float, default=None,
                   help="TRADES weight β of KL(f(x) ‖ f(x')) against the clean loss: lower keeps more clean "
                        "accuracy, higher more robustness (default 6, or the recipe's)")
    add_scale_flags(c, workers=False)
    add_runtime_flags(c)
    c.set_defaults(run=run_classifier)
    add_purifier_parser(tsub)
    add_autoencoder_parser(tsub)
    add_fru_parser(tsub)
    add_diffusion_parser(tsub)


def run_classifier(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train.classifier import ClassifierConfig, train_classifier

    apply_runtime(args)
    base = dict(CLASSIFIER_RECIPES[args.recipe]) if args.recipe else {}
    name = args.name or args.recipe
    if not name:
        raise AdvshieldError("give --recipe or --name with --arch")
    arch = args.arch or base.get("arch")
    if not arch:
        raise AdvshieldError("give --arch (or a --recipe)")
    MODELS.get(arch)
    if args.arch_args is not None:
        try:
            base["arch_args"] = json.loads(args.arch_args)
        except json.JSONDecodeError as e:
            raise AdvshieldError(f"--arch-args is not valid JSON: {e}") from None
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.adv_beta is not None and (args.adversarial or (base.get("adversarial") or {}).get("method")) != "trades":
        raise AdvshieldError("--adv-beta is TRADES' weight: give it with --adversarial trades")
    if args.adversarial or args.adv_eps is not None or args.adv_steps is not None or args.adv_beta is not None:
        spec = dict(base.get("adversarial") or {"method": "pgd", "eps": 0.1})
        if args.adversarial:
            spec["method"] = args.adversarial
        if args.adv_eps is not None:
            spec["eps"] = args.adv_eps
        if args.adv_steps is not None:
            spec["steps"] = args.adv_steps
            spec.pop("alpha", None)  # the default step follows the step count's eps/4
        if args.adv_beta is not None:
            spec["beta"] = args.adv_beta
        base["adversarial"] = spec
    base.update(arch=arch)
    cfg = ClassifierConfig(name=name, dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                           device=args.device, amp=args.amp, accum=args.accum, **base)
    out = new_checkpoint_path(args, name)
    card = train_classifier(cfg, args.out_dir, resume=not args.fresh, command=command_line())
    if not is_main():
        return 0
    print(f"wrote {out} (clean accuracy {card['metrics']['clean_accuracy']:.4f})")
    return 0
