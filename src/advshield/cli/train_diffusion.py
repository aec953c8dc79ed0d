"""``advshield train diffusion ...``: the DDPM denoiser DiffPure purifies with (ε-prediction, EMA weights)."""
from __future__ import annotations

import argparse

from .common import (
    add_resume_flags,
    add_runtime_flags,
    add_scale_flags,
    apply_runtime,
    batch_int,
    command_line,
    new_checkpoint_path,
    non_negative_int,
    plain_name,
    positive_float,
    positive_int,
    unit_float,
)


def _mults(value: str) -> list[int]:
    """Comma-separated positive channel multipliers, one per resolution: "1,2,2"."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated positive integers, not {value!r}") from None
    if not out or len(out) > 5 or any(m < 1 or m > 16 for m in out):
        raise argparse.ArgumentTypeError(f"give 1 to 5 comma-separated integers in [1, 16], not {value!r}")
    return out


def add_diffusion_parser(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "diffusion", help="train the DDPM denoiser of the DiffPure purifier",
        description="Train a small U-Net as a DDPM (ε-prediction MSE, Adam, EMA weights) on the training images, "
                    "labels unused; checkpoints under OUT/.train/NAME and resumes from there. Writes "
                    "OUT/NAME.safetensors (EMA weights) + NAME.json (card, with DiffPure's PSNR per t*).")
    p.add_argument("--name", type=plain_name, required=True, help="name of the zoo entry")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, cifar10 or a folder of same-size "
                   "images (default fashion-mnist)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--base", type=positive_int, default=32, help="channels at full resolution (default 32)")
    p.add_argument("--mults", type=_mults, default=[1, 2, 2], help="channel multipliers per level (default 1,2,2)")
    p.add_argument("--no-attention", dest="attention", action="store_false",
                   help="no self-attention block at the lowest resolution")
    p.add_argument("--dropout", type=unit_float, default=0.0, help="dropout in the residual blocks (default 0)")
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    p.add_argument("--timesteps", type=positive_int, default=1000, help="diffusion steps T (default 1000)")
    p.add_argument("--t-max", type=positive_int, default=None,
                   help="train on timesteps below this only (DiffPure starts its reverse process at t* ≤ t-max; "
                        "default: all T)")
    p.add_argument("--steps", type=positive_int, default=20000, help="training steps (default 20000)")
    p.add_argument("--batch-size", type=batch_int, default=64)
    p.add_argument("--lr", type=positive_float, default=2e-4)
    p.add_argument("--ema", type=unit_float, default=0.999, help="EMA decay of the shipped weights (default 0.999)")
    p.add_argument("--eval-images", type=non_negative_int, default=128,
                   help="held-out images for the DiffPure PSNR per t* in the card (default 128; 0 skips)")
    p.add_argument("--save-every", type=positive_int, default=500)
    p.add_argument("--log-every", type=positive_int, default=50)
    p.add_argument("--out-dir", default="zoo", help="where NAME.safetensors and NAME.json go (default zoo)")
    add_resume_flags(p)
    add_scale_flags(p, workers=False)
    add_runtime_flags(p)
    p.set_defaults(run=run_diffusion)


def run_diffusion(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train.diffusion import DiffusionConfig, check_config, train_diffusion

    apply_runtime(args)
    cfg = DiffusionConfig(name=args.name, data=args.data, base=args.base, mults=args.mults, attention=args.attention,
                          dropout=args.dropout, schedule=args.schedule, timesteps=args.timesteps, t_max=args.t_max,
                          steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, ema=args.ema, eval_images=args.eval_images,
                          save_every=args.save_every, log_every=args.log_every, seed=args.seed, device=args.device,
                          data_root=args.data_root, threads=args.threads, amp=args.amp, accum=args.accum)
    check_config(cfg)
    out = new_checkpoint_path(args, args.name)
    card = train_diffusion(cfg, args.out_dir, resume=not args.fresh, command=command_line())
    if not is_main():
        return 0
    psnrs = ", ".join(f"t*={k[6:]}: {v:.2f} dB" for k, v in card["metrics"].items() if k.startswith("psnr_t"))
    print(f"wrote {out}" + (f" (DiffPure PSNR {psnrs})" if psnrs else ""))
    return 0
