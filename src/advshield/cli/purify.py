"""``advshield purify`` and ``advshield bypass``: NRP's ``purify.py`` and ``bypass_nrp.py`` on image folder trees.

``purify`` runs a trained purifier (static, or dynamic: bounded Gaussian noise first) over every image of a tree at
its native size and writes 8-bit PNGs with the same tree and file stems. ``bypass`` is the white-box check: targeted
PGD (no random start, cross-entropy toward a random class that is never the true label) through purifier +
classifier, back-propagating fully through the purifier (``--mode full``) or straight through it (``--mode bpda``),
with EOT over the noise of a dynamic purifier; it reports the targeted success rate, the untargeted error rate
and the defended accuracy on the adversarial and the clean images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import AdvshieldError, ModelError
from .common import (
    add_label_flags,
    add_model_flags,
    add_runtime_flags,
    add_size_flag,
    apply_runtime,
    batch_int,
    budget_pixels,
    check_norm_flags,
    command_line,
    open_model,
    pixels,
    positive_int,
    size_arg,
    step_pixels,
    unit_float,
)

PURIFIER_HELP = ("defense: a trained purifier (zoo:NAME, FILE.safetensors with its card) or a registered transform, "
                 "with settings and stacks (jpeg:quality=50, median+jpeg; advshield list defenses)")


# -- argument parsing ---------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("purify", help="purify an image folder tree with a trained purifier (NRP's purify.py)",
                       description="Run a trained purifier (NRP, NRP-ResG, AE) or any registered transform over "
                       "every image of --dir at its native size (no resize) and write 8-bit PNGs with the same tree "
                       "and file stems into --out-dir. Grayscale stays grayscale and RGB stays RGB (a 1-channel "
                       "purifier on RGB needs --adapt-channels); the alpha channel of RGBA / gray+alpha images is "
                       "dropped, so those come out as RGB / grayscale. "
                       "--dynamic: the paper's dynamic inference (Gaussian noise of --sigma, projected to ±--eps "
                       "of the input and clamped to [0,1], then purified; seeded by --seed). Existing files are "
                       "never replaced.")
    p.add_argument("--dir", required=True, help="image folder tree to purify (PNG, JPEG, BMP)")
    p.add_argument("--out-dir", required=True, help="where the purified PNGs go (same tree and stems); must not "
                   "be --dir or inside it")
    p.add_argument("--purifier", required=True, help=PURIFIER_HELP)
    p.add_argument("--dynamic", action="store_true", help="dynamic inference: add bounded noise before purifying")
    p.add_argument("--eps", type=budget_pixels, default=pixels("16"),
                   help="--dynamic only: noise bound in 0-255 pixel units (default 16)")
    p.add_argument("--sigma", type=unit_float, default=0.05,
                   help="--dynamic only: noise standard deviation in [0,1] image units (default 0.05)")
    p.add_argument("--batch-size", type=batch_int, default=32, help="images per batch (default 32)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the PNGs already in --out-dir, write the rest")
    p.add_argument("--adapt-channels", action="store_true",
                   help="apply a 1-channel purifier to each channel of RGB images (otherwise refused)")
    add_runtime_flags(p)
    p.set_defaults(run=run_purify)

    b = sub.add_parser("bypass", help="white-box targeted PGD through purifier + classifier (NRP's bypass_nrp.py)",
                       description="Targeted PGD (no random start; cross-entropy toward a random class that is "
                       "never the true label) through --purifier + --model. --mode full back-propagates through "
                       "the purifier; --mode bpda passes the gradient straight through it (identity backward). "
                       "--dynamic puts the purifier in dynamic mode; --eot N then averages the gradient over N "
                       "noise draws. Labels come from class sub-folders (--labels, --class-map); a flat tree uses the "
                       "defended model's clean predictions as the labels. Prints the targeted success rate "
                       "(defended prediction == target), the untargeted error rate and the defended accuracy on the "
                       "adversarial images, "
                       "and the defended clean accuracy; --out saves them as JSON.")
    b.add_argument("--test-dir", required=True, help="image folder tree to attack (class sub-folders give labels)")
    b.add_argument("--purifier", required=True, help=PURIFIER_HELP)
    b.add_argument("--model", required=True, help="classifier spec (zoo:NAME, file.safetensors, ...)")
    b.add_argument("--eps", type=budget_pixels, default=pixels("16"),
                   help="L∞ budget in 0-255 pixel units (default 16)")
    b.add_argument("--steps", type=positive_int, default=10, help="PGD iterations (default 10)")
    b.add_argument("--alpha", type=step_pixels, default=pixels("2"), help="step in 0-255 pixel units (default 2)")
    b.add_argument("--mode", choices=["full", "bpda"], default="full",
                   help="gradient through the purifier (full, default) or straight through it (bpda)")
    b.add_argument("--eot", type=positive_int, default=1,
                   help="gradient samples averaged per step when the defense is random (--dynamic; default 1)")
    b.add_argument("--dynamic", action="store_true", help="attack the dynamic purifier (noise, then purify)")
    b.add_argument("--noise-eps", type=budget_pixels, default=pixels("16"),
                   help="--dynamic only: noise bound in 0-255 pixel units (default 16)")
    b.add_argument("--sigma", type=unit_float, default=0.05,
                   help="--dynamic only: noise standard deviation in [0,1] image units (default 0.05)")
    b.add_argument("--out", default=None, help="write the results here as JSON (never replaced without --overwrite)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    b.add_argument("--batch-size", type=batch_int, default=32, help="images per batch (default 32)")
    add_label_flags(b)
    add_size_flag(b)
    add_model_flags(b)
    add_runtime_flags(b)
    b.set_defaults(run=run_bypass)


# -- building blocks ----------------------------------------------------------------------------------------
def _card_kind(spec: str) -> str | None:
    """The ``kind`` on the card of a zoo/file spec, or None when there is no readable card."""
    from ..models.checkpoint import card_path, read_card
    from ..models.zoo import zoo_path

    try:
        path = zoo_path(spec[4:]) if spec.startswith("zoo:") else Path(spec)
        return str(read_card(card_path(path))["kind"])
    except (AdvshieldError, OSError):
        return None


def open_purifier(spec: str, seed: int | None = None, adapt_channels: bool = False) -> nn.Module:
    """The defense ``spec`` (:func:`~advshield.defenses.spec.build_defense`: trained purifiers, registered
    transforms, settings, stacks) with a one-line error naming ``--purifier`` (and what the file is instead, when
    it is a classifier or another kind of checkpoint)."""
    from ..defenses.base import build_defense

    try:
        return build_defense(spec, seed, adapt_channels=adapt_channels).eval()
    except AdvshieldError as e:
        kind = _card_kind(spec)
        if kind is not None and kind != "purifier":
            raise ModelError(f"--purifier {spec} is a {kind}, not a purifier") from None
        raise ModelError(f"--purifier {spec}: {e}") from None


def open_classifier(spec: str, args: argparse.Namespace | None = None) -> nn.Module:
    """:func:`~advshield.models.load_model` with ``--mean``/``--std`` and a one-line error naming ``--model``."""
    return open_model(spec, args or argparse.Namespace(), "--model")


def _defense_name(spec: str) -> str:
    from ..defenses.spec import describe_defense

    try:
        return describe_defense(spec)
    except AdvshieldError:
        return spec


# -- commands -----------------------------------------------------------------------------------------------
def run_purify(args: argparse.Namespace) -> int:
    from ..data.folder import to_uint8
    from ..data.imagetree import check_dirs, load_batch, load_folder, plan_outputs, size_batches, write_batch
    from ..defenses.nrp import DynamicPurifier
    from ..eval.preflight import probe_tree
    from ..utils import pick_device, progress

    apply_runtime(args)
    source, out = Path(args.dir), Path(args.out_dir)
    check_dirs(source, out, source_flag="--dir")
    purifier = open_purifier(args.purifier, args.seed, args.adapt_channels)
    folder = load_folder(source, verb="purified")
    plan = plan_outputs(folder, out, resume=args.resume)
    device = pick_device(args.device)
    defense: nn.Module = purifier
    if args.dynamic:
        defense = DynamicPurifier(purifier, eps=args.eps, sigma=args.sigma, seed=args.seed)
    defense = defense.to(device).eval()
    with torch.no_grad():
        try:
            probe_tree(folder, defense, f"--purifier {args.purifier}", device)
        except AdvshieldError as e:
            raise AdvshieldError(str(e).replace("adapt_channels=True / ", "")) from None
        batches = size_batches(folder, args.batch_size, plan.todo)
        for idx in progress(batches, "purify", total=len(batches)):
            x = load_batch(folder, idx).float().div(255).to(device)
            write_batch(to_uint8(defense(x).cpu()), idx, plan.targets)
    how = (f"dynamic: sigma {args.sigma:g}, noise within ±{args.eps * 255:g}/255, seed {args.seed}"
           if args.dynamic else "static")
    kept = f"; {plan.done} already there kept (--resume)" if plan.done else ""
    print(f"wrote {len(plan.todo)} PNGs to {out} (purifier {_defense_name(args.purifier)}, {how}){kept}")
    return 0


def _check_out(args: argparse.Namespace) -> Path | None:
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise AdvshieldError(f"--out {out} is a directory; give a .json file name")
        if (out.exists() or out.is_symlink()) and not args.overwrite:
            raise AdvshieldError(f"--out {out} already exists; not overwriting it (pass --overwrite to replace it)")
    return out


def run_bypass(args: argparse.Namespace) -> int:
    from ..attacks.bypass import bypass_attack
    from ..data.imagetree import load_folder
    from ..data.labels import check_num_classes, resolve_labels
    from ..defenses import defend
    from ..eval.bypass import bypass_rates, bypass_tree
    from ..eval.preflight import accuracy_lines, check_tree_domain, clean_accuracy, folder_batches, probe_tree
    from ..models.domain import adapt_channels
    from ..utils import pick_device, write_json

    apply_runtime(args)
    t0 = time.time()
    out = _check_out(args)
    check_norm_flags([args.model], args)
    purifier = open_purifier(args.purifier, args.seed, args.adapt_channels)
    model = open_classifier(args.model, args)
    folder = load_folder(args.test_dir, verb="attacked", size=size_arg(args))
    plan = resolve_labels(folder, args.labels, args.class_map, mode_name="--labels", map_name="--class-map")
    check_tree_domain(model, folder, f"--model {args.model}", args.adapt_channels)
    labelled = plan.labels is not None
    device = pick_device(args.device)
    model = model.to(device).eval()
    if args.adapt_channels:
        model = adapt_channels(model)
    defended = defend(model, purifier.to(device), dynamic=args.dynamic, bpda=args.mode == "bpda",
                      eps=args.noise_eps, sigma=args.sigma, seed=args.seed).to(device).eval()
    atk = bypass_attack(defended, eps=args.eps, alpha=args.alpha, steps=args.steps, eot=args.eot)
    what = f"--purifier {args.purifier} + --model {args.model}"
    with torch.no_grad():
        try:
            probe_tree(folder, defended, what, device)
        except AdvshieldError as e:
            raise AdvshieldError(str(e).replace("adapt_channels=True / ", "")) from None
    if labelled:
        lines = [plan.describe()]
        plan_note = plan.describe()
    else:
        plan_note = f"defended clean predictions ({plan.why}); no clean accuracy is reported"
        lines = [f"advshield: note: labels: the {plan_note}"]
    warning = None
    if labelled:
        correct, total, classes = clean_accuracy(model, folder_batches(folder, plan.labels, args.batch_size), device)
        check_num_classes(plan, classes, f"--model {args.model}")
        acc_lines = accuracy_lines(f"--model {args.model} (undefended)", correct, total, classes)
        warning = acc_lines[1] if len(acc_lines) > 1 else None
        lines += acc_lines
    if args.eot > 1 and atk.eot == 1:
        lines.append(f"advshield: note: --eot {args.eot} has no effect: the defense is deterministic (use --dynamic)")
    for line in lines:
        print(line, file=sys.stderr if line.startswith("advshield:") else sys.stdout)

    rows = bypass_tree(defended, model, folder, plan.labels, atk, args.batch_size, device, args.seed,
                       f"bypass ({args.mode})")
    results = bypass_rates(rows, labelled)
    report = {
        "command": command_line(),
        "test_dir": str(args.test_dir), "purifier": args.purifier, "purifier_name": _defense_name(args.purifier),
        "model": args.model,
        "labels": plan.to_json() | {"description": plan_note, "warning": warning},
        **results,
        "settings": {
            "attack": "targeted PGD, no random start, cross-entropy toward a random class != label",
            "threat_model": "white-box, " + ("BPDA (identity backward through the purifier)" if args.mode == "bpda"
                                             else "full gradient through the purifier"),
            "eps_255": round(args.eps * 255, 4), "eps": args.eps, "alpha_255": round(args.alpha * 255, 4),
            "alpha": args.alpha, "steps": args.steps, "mode": args.mode, "dynamic": args.dynamic,
            "eot": atk.eot, "sigma": args.sigma if args.dynamic else None,
            "noise_eps_255": round(args.noise_eps * 255, 4) if args.dynamic else None,
            "seed": args.seed, "batch_size": args.batch_size, "size": size_arg(args),
            "adapt_channels": args.adapt_channels,
            "evaluation": "float adversarial images (not quantised to 8 bits); one noise draw per prediction "
                          "when dynamic",
        },
        "device": str(device), "torch": torch.__version__, "elapsed_s": round(time.time() - t0, 2),
        "images": rows,
    }
    if out is not None:
        write_json(out, report)
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    print(f"bypass ({args.mode}{', dynamic, EOT ' + str(atk.eot) if args.dynamic else ''}) of "
          f"{_defense_name(args.purifier)} + {args.model}, L∞ eps {args.eps * 255:g}/255, {args.steps} steps of "
          f"{args.alpha * 255:g}/255, n = {len(rows)}:")
    print(f"  targeted success rate      {pct(results['targeted_success_rate'])}")
    print(f"  untargeted error rate      {pct(results['untargeted_error_rate'])}")
    print(f"  defended adversarial acc.  {pct(results['adversarial_accuracy'])}")
    print(f"  defended clean accuracy    {pct(results['clean_accuracy'])}"
          + ("" if labelled else " (flat tree: labels are the clean predictions)"))
    if out is not None:
        print(f"wrote {out}")
    return 0
