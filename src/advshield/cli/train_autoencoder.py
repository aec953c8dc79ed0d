"""``advshield train autoencoder ...``: an AE / VAE purifier trained against FGSM/PGD on a frozen classifier."""
from __future__ import annotations

import argparse

from ..errors import AdvshieldError
from .common import (
    add_resume_flags,
    add_runtime_flags,
    add_scale_flags,
    apply_runtime,
    batch_int,
    budget_pixels,
    command_line,
    csv_list,
    finite_float,
    min_budget_pixels,
    new_checkpoint_path,
    non_negative_float,
    non_negative_int,
    plain_name,
    positive_float,
    positive_int,
    size_int,
)


def add_autoencoder_parser(tsub: argparse._SubParsersAction) -> None:
    from ..defenses.autoencoder import AE_CONFIGS

    p = tsub.add_parser(
        "autoencoder", help="train an autoencoder or VAE purifier against FGSM/PGD and write it to the zoo",
        description="Each step: a labelled training batch; a --clean-fraction of it stays clean, the rest is "
        "attacked against the frozen --model with FGSM or PGD (one per step) at an eps drawn from "
        "[--eps-min, --eps-max]; the purifier learns MSE(clean, AE(input)) (+ beta*KL per pixel for a VAE). "
        "Checkpoints every --save-every steps under OUT/.train/NAME and resumes from there. eps in 0-255 units.")
    p.add_argument("--name", type=plain_name, help="name of the zoo entry (required)")
    p.add_argument("--kind", default="ae", help="ae (autoencoder, optional latent noise) or vae (default ae)")
    p.add_argument("--arch", default=None, help=f"config: {', '.join(sorted(AE_CONFIGS))} "
                   "(default ae-fmnist / vae-fmnist)")
    p.add_argument("--latent-dim", type=size_int, default=None, help="latent size (default: the config's)")
    p.add_argument("--latent-noise", type=non_negative_float, default=None,
                   help="ae only: σ of the Gaussian latent noise, kept at inference (default 1.0; 0 = vanilla)")
    p.add_argument("--model", default="zoo:fmnist-lenet",
                   help="frozen classifier the adversaries are made against (default zoo:fmnist-lenet)")
    p.add_argument("--data", default="fashion-mnist", help="labelled dataset: fashion-mnist, mnist, cifar10 "
                   "(train split; the test split for the final metrics)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--attacks", type=csv_list, default=["fgsm", "pgd"], help="training attacks (default fgsm,pgd)")
    p.add_argument("--eps-min", type=min_budget_pixels, default=5 / 255, help="smallest eps, 0-255 (default 5)")
    p.add_argument("--eps-max", type=budget_pixels, default=51 / 255, help="largest eps, 0-255 (default 51 = 0.2)")
    p.add_argument("--pgd-steps", type=positive_int, default=3, help="PGD iterations (step 2.5*eps/steps; default 3)")
    p.add_argument("--clean-fraction", type=finite_float, default=0.67,
                   help="share of each batch left clean (default 0.67)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, default=7000, help="training steps (default 7000)")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs over the training set (instead of --steps)")
    p.add_argument("--batch-size", type=batch_int, default=96, help="default 96")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--beta", type=non_negative_float, default=0.1, help="vae only: weight of the per-pixel KL term "
                   "(default 0.1; 1 = the ELBO of a Gaussian decoder with variance 1/2)")
    p.add_argument("--guide", type=finite_float, default=0.0,
                   help="weight of a classifier-guided term KL(f(x) || f(AE(input))) on the frozen --model "
                   "(HGD-style, not in the seed; default 0 = pure reconstruction loss)")
    p.add_argument("--out-dir", default="zoo", help="where NAME.safetensors and NAME.json go (default zoo)")
    p.add_argument("--save-every", type=positive_int, default=200, help="checkpoint interval in steps (default 200)")
    p.add_argument("--log-every", type=positive_int, default=20, help="CSV/log interval in steps (default 20)")
    p.add_argument("--eval-eps", type=budget_pixels, default=0.1, help="eps of the final metrics, 0-255 (default 25.5)")
    p.add_argument("--eval-images", type=non_negative_int, default=500,
                   help="test images for the final metrics (default 500; 0 skips)")
    add_resume_flags(p)
    add_scale_flags(p, workers=False)
    add_runtime_flags(p)
    p.set_defaults(run=run_autoencoder)


def run_autoencoder(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train.autoencoder import AutoencoderConfig, check_config, train_autoencoder

    apply_runtime(args)
    if not args.name:
        raise AdvshieldError("give --name for the purifier's zoo entry")
    cfg = AutoencoderConfig(
        name=args.name, kind=args.kind, arch=args.arch, latent_dim=args.latent_dim, latent_noise=args.latent_noise,
        model=args.model, data=args.data, attacks=args.attacks, eps_min=args.eps_min, eps_max=args.eps_max,
        pgd_steps=args.pgd_steps, clean_fraction=args.clean_fraction, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, beta=args.beta, guide=args.guide, eval_eps=args.eval_eps,
        eval_images=args.eval_images, save_every=args.save_every, log_every=args.log_every, seed=args.seed,
        device=args.device, data_root=args.data_root, threads=args.threads, amp=args.amp, accum=args.accum)
    check_config(cfg)
    out = new_checkpoint_path(args, args.name)
    card = train_autoencoder(cfg, args.out_dir, resume=not args.fresh, command=command_line())
    if not is_main():
        return 0
    m = card["metrics"]
    extra = (f" (clean {m['clean_accuracy']:.4f}, FGSM {m['fgsm_accuracy']:.4f}, PGD-40 {m['pgd_accuracy']:.4f} "
             f"at eps {m['eval_eps'] * 255:g}/255)" if "pgd_accuracy" in m else "")
    print(f"wrote {out}{extra}")
    return 0
