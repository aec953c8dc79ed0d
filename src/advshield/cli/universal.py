"""``advshield uap``: fit one universal perturbation (UAP, sPGD, FFF, GAP) for a model and write it as ``.npy``.

Units: ``--eps`` is in 0-255 pixel units and divided by 255, for both norms: L∞ 25.5 → 0.1 per pixel; L2 382.5 →
a radius of 1.5 over all C·H·W values of a [0,1] image (the L2 norm on the 0-255 scale, divided by 255). The
``.npy`` file holds δ in [0,1] units (float32 C×H×W); a JSON sidecar (same name, ``.json``) records the method,
budget, model, data, seed, fooling rates, time and the command. Nothing is replaced without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import AdvshieldError
from .common import (
    add_model_flags,
    add_runtime_flags,
    add_size_flag,
    apply_runtime,
    batch_int,
    check_norm_flags,
    command_line,
    finite_pixels,
    open_model,
    positive_int,
    size_arg,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..registry import UNIVERSAL

    p = sub.add_parser("uap", help="fit a universal perturbation (uap, spgd, fff, gap) and write it as .npy",
                       description="Fit one image-agnostic perturbation δ for --model on the first --n images of "
                       "--data, print its fooling rate (share of images whose predicted label changes) on those "
                       "images and on held-out ones, and write δ (float32 C×H×W in [0,1] units) to --out, with a "
                       "JSON sidecar beside it. Methods: " + "; ".join(f"{n}: {UNIVERSAL.help(n)}"
                                                                      for n in UNIVERSAL.names()))
    p.add_argument("--method", required=True, help=f"universal attack ({', '.join(UNIVERSAL.names())})")
    p.add_argument("--model", required=True, help="classifier spec (zoo:NAME, file.safetensors, ...)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, mnist, cifar10 or an image folder (default fashion-mnist)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--split", default="train", choices=["train", "test"], help="split to fit on (default train)")
    p.add_argument("--n", type=positive_int, default=2000, help="fit on the first N images (default 2000)")
    p.add_argument("--held-out", type=positive_int, default=1000,
                   help="held-out images for the second fooling rate (default 1000): the first ones of the test "
                   "split when fitting on train, else the images after the fit set")
    add_size_flag(p)
    add_model_flags(p)
    p.add_argument("--eps", type=finite_pixels, required=True,
                   help="budget in 0-255 units: L∞ per pixel (25.5 = 0.1), or the L2 norm of δ on the 0-255 scale "
                   "(382.5 = 1.5 in [0,1] units)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="budget norm (default linf)")
    p.add_argument("--iters", type=positive_int, default=None,
                   help="main iteration count: passes (uap), epochs (spgd, gap), steps (fff); default: the method's")
    p.add_argument("--batch-size", type=batch_int, default=None, help="images per batch (default: the method's)")
    p.add_argument("--out", required=True, help="the perturbation file to write (FILE.npy; sidecar FILE.json)")
    p.add_argument("--png", default=None, help="also write a picture of δ ([-eps, eps] → [0, 255]; L2: ±max|δ|)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_runtime_flags(p)
    p.set_defaults(run=run)


def _outputs(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """(.npy, .json, .png or None), refused up front if they exist (without --overwrite) or clash."""
    out = Path(args.out)
    if out.suffix != ".npy":
        raise AdvshieldError(f"--out {out} must end in .npy")
    side = out.with_suffix(".json")
    png = Path(args.png) if args.png else None
    if png is not None and png.suffix.lower() != ".png":
        raise AdvshieldError(f"--png {png} must end in .png")
    for path in (out, side, png):
        if path is not None and path.is_dir():
            raise AdvshieldError(f"{path} is a directory")
        if path is not None and path.exists() and not args.overwrite:
            raise AdvshieldError(f"{path} already exists; not overwriting it (pass --overwrite or choose a new --out)")
    return out, side, png


def _data(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """(fit set, held-out set or None, description of each)."""
    from ..data import DATASETS, load_dataset
    from ..data.folder import image_folder, resize_dataset

    if args.data in DATASETS:
        ds = load_dataset(args.data, args.split, args.data_root)
        if args.split == "train":
            held = load_dataset(args.data, "test", args.data_root).subset(args.held_out)
            held_desc = f"{args.data} test[:{len(held)}]"
        else:
            held = ds.subset(args.held_out, offset=args.n)
            held_desc = f"{args.data} test[{args.n}:{args.n + len(held)}]"
        fit_desc = f"{args.data} {args.split}[:{min(args.n, len(ds))}]"
    elif Path(args.data).is_dir():  # labels are not used: fooling rates compare with the model's predictions
        ds = image_folder(args.data, size=size_arg(args), labels="model",
                          flags=("--labels", "--class-map", "--size H W"))
        held = ds.subset(args.held_out, offset=args.n)
        fit_desc, held_desc = f"{args.data}[:{min(args.n, len(ds))}]", f"{args.data}[{args.n}:{args.n + len(held)}]"
    else:
        raise AdvshieldError(f"--data {args.data!r} is neither {', '.join(sorted(DATASETS))} nor a directory")
    fit = ds.subset(args.n)
    if len(fit) == 0:
        raise AdvshieldError(f"--data {args.data} has no images")
    size = size_arg(args)
    if size is not None and args.data in DATASETS:
        fit = resize_dataset(fit, size)
        held = resize_dataset(held, size)
    return fit, (held if len(held) else None), fit_desc, held_desc


def overrides(name: str, iters: int | None, batch_size: int | None) -> dict[str, Any]:
    """Constructor keywords of universal attack ``name`` set by --iters / --batch-size (checked, nothing loaded)."""
    import inspect

    from ..registry import UNIVERSAL

    cls = UNIVERSAL.get(name)
    kw: dict[str, Any] = {}
    if iters is not None:
        kw[cls.iters_arg] = iters
    if batch_size is not None:
        if "batch_size" not in inspect.signature(cls.__init__).parameters:
            raise AdvshieldError(f"--batch-size does not apply to {name} (it uses no data batches)")
        kw["batch_size"] = batch_size
    return kw


def build(name: str, model: Any, eps: float, norm: str, seed: int, **kw: Any) -> Any:
    """The registered universal attack ``name`` at budget ``eps`` ([0,1] units); ``kw`` from :func:`overrides`."""
    from ..registry import UNIVERSAL

    cls = UNIVERSAL.get(name)
    try:
        return cls(model, eps=eps, norm=norm, seed=seed, **kw)
    except ValueError as e:
        raise AdvshieldError(f"{name}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..attacks.universal import fooling_rate, perturbation_png, save_perturbation
    from ..models.domain import adapt_channels, check_domain, input_domain
    from ..utils import pick_device, write_json

    apply_runtime(args)
    kw = overrides(args.method, args.iters, args.batch_size)  # unknown name: fail before reading anything
    if args.eps <= 0:
        raise AdvshieldError("--eps must be positive")
    if args.norm == "linf" and args.eps > 1:
        raise AdvshieldError(f"--eps {args.eps * 255:g} is above 255, more than the whole pixel range")
    out, side, png = _outputs(args)
    check_norm_flags([args.model], args)
    model = open_model(args.model, args, "--model")
    fit, held, fit_desc, held_desc = _data(args)
    check_domain(input_domain(model), tuple(int(v) for v in fit.images.shape[1:]), f"--model {args.model}",
                 args.adapt_channels)
    model = (adapt_channels(model) if args.adapt_channels else model).to(pick_device(args.device))
    atk = build(args.method, model, args.eps, args.norm, args.seed, **kw)

    t0 = time.perf_counter()
    delta = atk.fit(fit)
    seconds = time.perf_counter() - t0
    rate_fit = fooling_rate(model, fit, delta)
    rate_held = fooling_rate(model, held, delta) if held is not None else None

    save_perturbation(out, delta)
    if png is not None:
        perturbation_png(delta, png, args.eps if args.norm == "linf" else None)
    write_json(side, {
        "method": args.method, "norm": args.norm, "eps": args.eps, "eps_255": round(args.eps * 255, 6),
        "model": args.model, "data": args.data, "fit_images": fit_desc, "held_out_images": held_desc if held else None,
        "seed": args.seed, "shape": list(delta.shape), "linf": float(delta.abs().max()), "l2": float(delta.norm()),
        "fooling_rate_fit": round(rate_fit, 6),
        "fooling_rate_held_out": None if rate_held is None else round(rate_held, 6), "fit_seconds": round(seconds, 3),
        "settings": {k: v for k, v in atk.settings().items() if isinstance(v, (int, float, str, type(None)))},
        "history": atk.history, "command": command_line(), "advshield": __version__,
    })
    print(f"{args.method} for {args.model}: {args.norm} eps {args.eps * 255:g}/255 = {args.eps:.4g}, fitted on "
          f"{fit_desc} in {seconds:.1f} s")
    print(f"fooling rate: {rate_fit:.3f} on the fit set ({len(fit)} images)"
          + (f", {rate_held:.3f} held out ({held_desc})" if held is not None else ", no held-out images"))
    print(f"wrote {out} and {side}" + (f" and {png}" if png else ""))
    return 0
