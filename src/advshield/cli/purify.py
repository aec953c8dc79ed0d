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
from typing import Any

import torch
from torch import nn

from ..attacks.bypass import BypassPGD, bypass_attack  # noqa: F401  (library code; BypassPGD re-exported here)
from ..errors import AdvshieldError, ModelError
from .common import (add_runtime_flags, apply_runtime, batch_int, budget_pixels, command_line, pixels,
                     positive_int, step_pixels, unit_float)
from .imagetree import (adapt_channels, check_dirs, check_labels, folder_labels, load_batch, load_folder,
                        plan_outputs, size_batches, write_batch)


def _sigma(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError("must be in [0, 1] (image units)")
    return v


# -- argument parsing ---------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("purify", help="purify an image folder tree with a trained purifier (NRP's purify.py)",
                       description="Run a trained purifier (NRP, NRP-ResG) over every image of --dir at its native "
                       "size (no resize) and write 8-bit PNGs with the same tree and file stems into --out-dir. "
                       "Grayscale stays grayscale and RGB stays RGB (the purifier adapts channels); the alpha "
                       "channel of RGBA / gray+alpha images is dropped, so those come out as RGB / grayscale. "
                       "--dynamic: the paper's dynamic inference (Gaussian noise of --sigma, projected to ±--eps "
                       "of the input and clamped to [0,1], then purified; seeded by --seed). Existing files are "
                       "never replaced.")
    p.add_argument("--dir", required=True, help="image folder tree to purify (PNG, JPEG, BMP)")
    p.add_argument("--out-dir", required=True, help="where the purified PNGs go (same tree and stems); must not "
                   "be --dir or inside it")
    p.add_argument("--purifier", required=True, help="trained purifier: zoo:NAME or a .safetensors file with its card")
    p.add_argument("--dynamic", action="store_true", help="dynamic inference: add bounded noise before purifying")
    p.add_argument("--eps", type=budget_pixels, default=pixels("16"),
                   help="--dynamic only: noise bound in 0-255 pixel units (default 16)")
    p.add_argument("--sigma", type=unit_float, default=0.05,
                   help="--dynamic only: noise standard deviation in [0,1] image units (default 0.05)")
    p.add_argument("--batch-size", type=batch_int, default=32, help="images per batch (default 32)")
    add_runtime_flags(p)
    p.set_defaults(run=run_purify)

    b = sub.add_parser("bypass", help="white-box targeted PGD through purifier + classifier (NRP's bypass_nrp.py)",
                       description="Targeted PGD (no random start; cross-entropy toward a random class that is "
                       "never the true label) through --purifier + --model. --mode full back-propagates through "
                       "the purifier; --mode bpda passes the gradient straight through it (identity backward). "
                       "--dynamic puts the purifier in dynamic mode; --eot N then averages the gradient over N "
                       "noise draws. Labels come from class sub-folders; a flat tree uses the defended model's "
                       "clean predictions as the labels. Prints the targeted success rate (defended prediction == "
                       "target), the untargeted error rate and the defended accuracy on the adversarial images, "
                       "and the defended clean accuracy; --out saves them as JSON.")
    b.add_argument("--test-dir", required=True, help="image folder tree to attack (class sub-folders give labels)")
    b.add_argument("--purifier", required=True, help="trained purifier: zoo:NAME or a .safetensors file with its card")
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


def open_purifier(spec: str) -> nn.Module:
    """:func:`~advshield.defenses.purifier.load_purifier` with a one-line error naming ``--purifier`` (and what
    the file is instead, when it is a classifier or another kind of checkpoint)."""
    from ..defenses.purifier import load_purifier

    try:
        return load_purifier(spec)
    except AdvshieldError as e:
        kind = _card_kind(spec)
        if kind is not None and kind != "purifier":
            raise ModelError(f"--purifier {spec} is a {kind}, not a purifier") from None
        raise ModelError(f"--purifier {spec}: {e}") from None


def open_classifier(spec: str) -> nn.Module:
    """:func:`~advshield.models.load_model` with a one-line error naming ``--model``."""
    from ..models import load_model

    try:
        return load_model(spec)
    except AdvshieldError as e:
        raise ModelError(f"--model {spec}: {e}") from None


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# -- commands -----------------------------------------------------------------------------------------------
def run_purify(args: argparse.Namespace) -> int:
    from ..data.folder import to_uint8
    from ..defenses.nrp import DynamicPurifier
    from ..utils import pick_device, progress

    apply_runtime(args)
    source, out = Path(args.dir), Path(args.out_dir)
    check_dirs(source, out, source_flag="--dir")
    purifier = open_purifier(args.purifier)
    folder = load_folder(source, verb="purified")
    targets = plan_outputs(folder, out)
    device = pick_device(args.device)
    defense: nn.Module = purifier
    if args.dynamic:
        defense = DynamicPurifier(purifier, eps=args.eps, sigma=args.sigma, seed=args.seed)
    defense = defense.to(device).eval()
    batches = size_batches(folder, args.batch_size)
    with torch.no_grad():
        for idx in progress(batches, "purify", total=len(batches)):
            x = load_batch(folder, idx).float().div(255).to(device)
            write_batch(to_uint8(defense(x).cpu()), idx, targets)
    how = (f"dynamic: sigma {args.sigma:g}, noise within ±{args.eps * 255:g}/255, seed {args.seed}"
           if args.dynamic else "static")
    print(f"wrote {len(targets)} PNGs to {out} (purifier {purifier.name}, {how})")
    return 0


def run_bypass(args: argparse.Namespace) -> int:
    from ..defenses import defend
    from ..utils import pick_device, progress, write_json

    apply_runtime(args)
    t0 = time.time()
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise AdvshieldError(f"--out {out} is a directory; give a .json file name")
        if (out.exists() or out.is_symlink()) and not args.overwrite:
            raise AdvshieldError(f"--out {out} already exists; not overwriting it (pass --overwrite to replace it)")
    purifier = open_purifier(args.purifier)
    model = open_classifier(args.model)
    folder = load_folder(args.test_dir, verb="attacked")
    labelled = bool(folder.classes)
    labels = folder_labels(folder.classes, folder.labels) if labelled else None
    if not labelled:
        print(f"advshield: note: {folder.root} has no class sub-folders; the defended model's clean predictions "
              "are used as the true labels (so no clean accuracy is reported)", file=sys.stderr)
    device = pick_device(args.device)
    model = model.to(device).eval()
    adapt_channels(model)
    defended = defend(model, purifier.to(device), dynamic=args.dynamic, bpda=args.mode == "bpda",
                      eps=args.noise_eps, sigma=args.sigma, seed=args.seed).to(device).eval()
    atk = bypass_attack(defended, eps=args.eps, alpha=args.alpha, steps=args.steps, eot=args.eot)
    if args.eot > 1 and atk.eot == 1:
        print(f"advshield: note: --eot {args.eot} has no effect: the defense is deterministic (use --dynamic)",
              file=sys.stderr)

    rows: list[dict[str, Any]] = []
    batches = size_batches(folder, args.batch_size)
    for b, idx in enumerate(progress(batches, f"bypass ({args.mode})", total=len(batches))):
        x = load_batch(folder, idx).float().div(255).to(device)
        with torch.no_grad():
            logits = defended(x)
            base = model(x).argmax(1)
        clean = logits.argmax(1)
        if labels is not None:
            if b == 0:
                check_labels(labels, int(logits.shape[1]), folder)
            y = torch.tensor([labels[i] for i in idx], dtype=torch.long, device=device)
        else:
            y = clean
        atk.seed = args.seed + b
        x_adv = atk(x, y)
        with torch.no_grad():
            adv = defended(x_adv).argmax(1)
        for k, i in enumerate(idx):
            rows.append({"file": folder.rel(i).as_posix(), "label": int(y[k]), "target": int(atk.targets[-1][k]),
                         "undefended_clean_prediction": int(base[k]), "clean_prediction": int(clean[k]),
                         "adversarial_prediction": int(adv[k])})
    rows.sort(key=lambda r: r["file"])
    results = {
        "n": len(rows),
        "targeted_success_rate": _rate([r["adversarial_prediction"] == r["target"] for r in rows]),
        "untargeted_error_rate": _rate([r["adversarial_prediction"] != r["label"] for r in rows]),
        "adversarial_accuracy": _rate([r["adversarial_prediction"] == r["label"] for r in rows]),
        "clean_accuracy": _rate([r["clean_prediction"] == r["label"] for r in rows]) if labelled else None,
        "undefended_clean_accuracy":
            _rate([r["undefended_clean_prediction"] == r["label"] for r in rows]) if labelled else None,
    }
    report = {
        "command": command_line(),
        "test_dir": str(args.test_dir), "purifier": args.purifier, "purifier_name": purifier.name,
        "model": args.model,
        "labels": "class folders" if labelled else "defended clean predictions (flat tree)",
        **results,
        "settings": {
            "attack": "targeted PGD, no random start, cross-entropy toward a random class != label",
            "eps_255": round(args.eps * 255, 4), "eps": args.eps, "alpha_255": round(args.alpha * 255, 4),
            "alpha": args.alpha, "steps": args.steps, "mode": args.mode, "dynamic": args.dynamic,
            "eot": atk.eot, "sigma": args.sigma if args.dynamic else None,
            "noise_eps_255": round(args.noise_eps * 255, 4) if args.dynamic else None,
            "seed": args.seed, "batch_size": args.batch_size,
            "evaluation": "float adversarial images (not quantised to 8 bits); one noise draw per prediction "
                          "when dynamic",
        },
        "device": str(device), "torch": torch.__version__, "elapsed_s": round(time.time() - t0, 2),
        "images": rows,
    }
    if out is not None:
        write_json(out, report)
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    print(f"bypass ({args.mode}{', dynamic, EOT ' + str(atk.eot) if args.dynamic else ''}) of {purifier.name} + "
          f"{args.model}, L∞ eps {args.eps * 255:g}/255, {args.steps} steps of {args.alpha * 255:g}/255, "
          f"n = {len(rows)}:")
    print(f"  targeted success rate      {pct(results['targeted_success_rate'])}")
    print(f"  untargeted error rate      {pct(results['untargeted_error_rate'])}")
    print(f"  defended adversarial acc.  {pct(results['adversarial_accuracy'])}")
    print(f"  defended clean accuracy    {pct(results['clean_accuracy'])}"
          + ("" if labelled else " (flat tree: labels are the clean predictions)"))
    if out is not None:
        print(f"wrote {out}")
    return 0
