"""``advshield train fru``: selective feature regeneration units on a frozen classifier, trained on UAPs."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import AdvshieldError
from .common import (
    add_resume_flags,
    add_runtime_flags,
    add_scale_flags,
    apply_runtime,
    batch_int,
    command_line,
    csv_list,
    finite_float,
    new_checkpoint_path,
    non_negative_int,
    norm_budget_pixels,
    pixels,
    plain_name,
    positive_float,
    positive_int,
    size_int,
)


def add_fru_parser(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser("fru", help="train FRUs on a frozen classifier (saved as a zoo classifier NAME)",
                        description="Fit a pool of universal perturbations on the training split, then train "
                        "feature regeneration units on the most susceptible conv filters (ℓ1 norm) with clean + "
                        "perturbed images and the base's cross-entropy; only FRU parameters change. Checkpoints "
                        "under OUT/.train/NAME; resumes by default.")
    p.add_argument("--model", required=True, help="base classifier: zoo:NAME or a .safetensors file with its card")
    p.add_argument("--name", type=plain_name, default=None, help="zoo name of the result (default: BASE-fru)")
    p.add_argument("--attack", default="uap", help="universal attack of the training pool (default uap)")
    p.add_argument("--eps", type=norm_budget_pixels, default=pixels("25.5"),
                   help="pool strength, 0-255 units (default 25.5)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--pool-size", type=size_int, default=8, help="pool perturbations (default 8)")
    p.add_argument("--pool-images", type=positive_int, default=1000,
                   help="training images each pool perturbation is fitted on (default 1000)")
    p.add_argument("--layers", type=csv_list, default=None, help="conv layer names (default: the first --k)")
    p.add_argument("--k", type=positive_int, default=6, help="number of early conv layers (default 6)")
    p.add_argument("--fraction", type=finite_float, default=0.5, help="share of filters regenerated (default 0.5)")
    p.add_argument("--depth", type=size_int, default=None, help="FRU depth D (default N, the channels)")
    p.add_argument("--no-synthetic", dest="synthetic", action="store_false",
                   help="draw pool members only (no convex combinations, shifts, mirroring)")
    p.add_argument("--zoom", type=finite_float, default=0.0,
                   help="share (0-1) of drawn perturbations replaced by zoomed-in crops of pool UAPs, rescaled to "
                   "the budget: lower-frequency variants (default 0)")
    p.add_argument("--negate", type=finite_float, default=0.0,
                   help="share (0-1) of drawn perturbations used with the opposite sign (default 0)")
    p.add_argument("--steps", type=positive_int, default=1500)
    p.add_argument("--batch-size", type=batch_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--data", default="fashion-mnist", help="dataset with train and test splits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--eval-images", type=non_negative_int, default=2000)
    p.add_argument("--save-every", type=positive_int, default=100)
    p.add_argument("--out-dir", default="zoo")
    add_resume_flags(p)
    add_scale_flags(p, workers=False)
    add_runtime_flags(p)
    p.set_defaults(run=run_fru)


def run_fru(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train.fru import FRUConfig, check_config, train_fru

    apply_runtime(args)
    if args.norm == "linf" and args.eps > 1:
        raise AdvshieldError(f"--eps {args.eps * 255:g} is above 255, more than the whole pixel range (L∞)")
    base = args.model.split(":", 1)[1] if args.model.startswith("zoo:") else Path(args.model).stem
    name = args.name or f"{base}-fru"
    cfg = FRUConfig(name=name, model=args.model, data=args.data, attack=args.attack, eps=args.eps, norm=args.norm,
                    pool_size=args.pool_size, pool_images=args.pool_images, layers=args.layers, k=args.k,
                    fraction=args.fraction, depth=args.depth, synthetic=args.synthetic, zoom=args.zoom,
                    negate=args.negate,
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, save_every=args.save_every,
                    eval_images=args.eval_images, seed=args.seed, device=args.device, data_root=args.data_root,
                    threads=args.threads, amp=args.amp, accum=args.accum)
    check_config(cfg)
    out = new_checkpoint_path(args, name)
    card = train_fru(cfg, args.out_dir, resume=not args.fresh, command=command_line())
    if not is_main():
        return 0
    m = card["metrics"]
    extra = f" (clean {m['base_clean_accuracy']:.4f} → {m['clean_accuracy']:.4f})" if "clean_accuracy" in m else ""
    print(f"wrote {out}{extra}")
    return 0
