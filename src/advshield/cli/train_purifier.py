"""``advshield train purifier ...``: NRP self-supervised adversarial training (Algorithm 2), resumable."""
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
    min_budget_pixels,
    new_checkpoint_path,
    non_negative_float,
    non_negative_int,
    plain_name,
    positive_float,
    positive_int,
    size_int,
    step_pixels,
    unit_float,
)


def add_purifier_parser(tsub: argparse._SubParsersAction) -> None:
    from ..defenses.nrp import NRP_CONFIGS

    p = tsub.add_parser(
        "purifier", help="train an NRP purifier (self-supervised, on SSP adversaries) and write it to the zoo",
        description="Each step: clean crops x, adversaries x' against a frozen feature model (SSP by default), "
        "purifier P trained on 5e-3*RaGAN + 1e-2*pixel MSE + 1*feature MAE, critic trained to tell x from P(x'). "
        "Checkpoints every --save-every steps under OUT/.train/NAME and resumes from there. "
        "eps and SSP step are in 0-255 units.")
    p.add_argument("--name", type=plain_name, help="name of the zoo entry (required)")
    p.add_argument("--arch", default="nrp-small", help=f"purifier config: {', '.join(sorted(NRP_CONFIGS))} "
                   "(default nrp-small)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, mnist, cifar10 (train split, labels unused), photos, or an image folder")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--feature-model", default="zoo:fmnist-vgg",
                   help="frozen feature extractor: zoo:NAME or a .safetensors classifier, or vgg16-features:WEIGHTS "
                   "(torchvision VGG16 state dict; bare vgg16-features = random weights, for timing only)")
    p.add_argument("--layer", default=None, help="feature layer (default: the classifier's default feature layer, "
                   "or conv3_3 for vgg16-features)")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=batch_int, default=16, help="default 16")
    p.add_argument("--crop", type=size_int, default=28, help="crop size in pixels (default 28)")
    p.add_argument("--eps", type=budget_pixels, default=16 / 255,
                   help="L∞ budget of the adversaries, 0-255 (default 16)")
    p.add_argument("--ssp-steps", type=positive_int, default=10, help="SSP iterations per batch (default 10)")
    p.add_argument("--ssp-alpha", type=step_pixels, default=2 / 255, help="SSP step, 0-255 (default 2)")
    p.add_argument("--adversary", default="ssp",
                   help="ssp (default), gaussian (GNP ablation), fgsm (FGSP ablation), mi-di (extension: DIM on the "
                   "feature classifier's predictions), or several joined by + (the batch is split among them)")
    p.add_argument("--eps-min", type=min_budget_pixels, default=None,
                   help="extension (not in the paper): rescale each sample's perturbation to a budget drawn from "
                   "[eps-min, eps], 0-255 (default: off, all at eps)")
    p.add_argument("--clean-fraction", type=unit_float, default=0.0,
                   help="extension (not in the paper): share of each batch left clean, 0-1 (default 0)")
    p.add_argument("--no-feat", action="store_true", help="ablation: drop the feature loss")
    p.add_argument("--no-pixel", action="store_true", help="ablation: drop the pixel loss")
    p.add_argument("--vanilla-gan", action="store_true", help="ablation: vanilla instead of relativistic GAN loss")
    p.add_argument("--critic-width", type=size_int, default=32, help="critic base width (default 32)")
    p.add_argument("--alpha-adv", type=non_negative_float, default=5e-3, help="weight α of the GAN term (default 5e-3)")
    p.add_argument("--gamma-img", type=non_negative_float, default=1e-2,
                   help="weight γ of the pixel L2 term (default 1e-2)")
    p.add_argument("--lambda-feat", type=non_negative_float, default=1.0,
                   help="weight λ of the feature MAE term (default 1)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate of both nets (default 1e-4)")
    p.add_argument("--out-dir", default="zoo", help="where NAME.safetensors and NAME.json go (default zoo)")
    p.add_argument("--save-every", type=positive_int, default=200, help="checkpoint interval in steps (default 200)")
    p.add_argument("--log-every", type=positive_int, default=10, help="CSV/log interval in steps (default 10)")
    p.add_argument("--eval-images", type=non_negative_int, default=256,
                   help="images for the final PSNR metrics (default 256; 0 skips)")
    add_resume_flags(p)
    add_scale_flags(p)
    add_runtime_flags(p)
    p.set_defaults(run=run_purifier)


def run_purifier(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train.purifier import PurifierConfig, check_config, train_purifier

    apply_runtime(args)
    if not args.name:
        raise AdvshieldError("give --name for the purifier's zoo entry")
    cfg = PurifierConfig(
        name=args.name, arch=args.arch, data=args.data, feature_model=args.feature_model, layer=args.layer,
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, eps=args.eps, ssp_steps=args.ssp_steps,
        ssp_alpha=args.ssp_alpha, adversary=args.adversary,
        eps_min=args.eps_min, clean_fraction=args.clean_fraction, no_feat=args.no_feat, no_pixel=args.no_pixel,
        vanilla_gan=args.vanilla_gan, critic_width=args.critic_width, lr=args.lr,
        alpha_adv=args.alpha_adv, gamma_img=args.gamma_img, lambda_feat=args.lambda_feat, save_every=args.save_every,
        log_every=args.log_every, eval_images=args.eval_images, seed=args.seed, device=args.device, amp=args.amp,
        accum=args.accum, workers=args.workers, data_root=args.data_root, threads=args.threads)
    check_config(cfg)
    out = new_checkpoint_path(args, args.name)
    card = train_purifier(cfg, args.out_dir, resume=not args.fresh, command=command_line())
    if not is_main():
        return 0
    m = card["metrics"]
    extra = f" (PSNR {m['psnr_adv']:.2f} → {m['psnr_purified']:.2f} dB)" if "psnr_purified" in m else ""
    print(f"wrote {out}{extra}")
    return 0
