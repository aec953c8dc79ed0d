"""``advshield audit``: the adaptive evaluation of one defense in front of one model (:mod:`advshield.eval.audit`),
written as OUT/audit.md, OUT/audit.json and OUT/flags.safetensors (per-sample robust flags per threat model)."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..errors import AdvshieldError
from .common import (
    add_label_flags,
    add_model_flags,
    add_runtime_flags,
    add_size_flag,
    apply_runtime,
    batch_int,
    check_norm_flags,
    command_line,
    norm_budget_pixels,
    pixels,
    positive_int,
)

RESUME_DIR = ".advshield-audit-blocks"  # finished blocks of a running audit under OUT (removed once it is written)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="adaptive evaluation of a defense: transfer, full gradient, BPDA, EOT, Square",
                       description="Attack --defense in front of --model under every threat model that applies "
                       "(transfer from the undefended model; full gradients through the defense where it is "
                       "differentiable, measured; BPDA through its substitute; EOT and repeated draws when it is "
                       "randomized, detected; Square as the gradient-free check) and report the worst case per "
                       "sample, with sanity-check flags. Writes OUT/audit.md, OUT/audit.json, OUT/flags.safetensors. "
                       f"A stopped run resumes when re-run with the same arguments: finished blocks of --batch-size "
                       f"samples wait in OUT/{RESUME_DIR} until the report is written.")
    p.add_argument("--model", required=True, help="classifier spec (zoo:NAME, py:FILE.py:NAME@WEIGHTS, ...)")
    p.add_argument("--defense", default="none",
                   help="defense spec: a registered name with settings and stacks (jpeg:quality=50, median+jpeg), a "
                   "trained purifier (zoo:NAME, FILE.safetensors), or none (default: the undefended model)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, cifar10 or an image folder")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", "--n-images", dest="n", type=positive_int, default=1000,
                   help="number of images (default 1000; spell it --n-images under torchrun, whose own flags "
                   "--nnodes/--nproc-per-node make --n ambiguous)")
    p.add_argument("--eps", type=norm_budget_pixels, default=pixels("25.5"),
                   help="budget in 0-255 pixel units (default 25.5 = 0.1; L2: over the whole image)")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="budget norm (default linf)")
    p.add_argument("--version", choices=["auto", "quick"], default="auto",
                   help="auto: APGD 100 steps, Square 1000 queries; quick: 20 steps, 200 queries")
    p.add_argument("--steps", type=positive_int, default=None, help="APGD steps (default: the version's)")
    p.add_argument("--n-queries", type=positive_int, default=None, help="Square queries (default: the version's)")
    p.add_argument("--eot", type=positive_int, default=20,
                   help="gradient samples per step when the defense is randomized (default 20)")
    p.add_argument("--draws", type=positive_int, default=10,
                   help="forward passes each sample is scored over when the defense is randomized (default 10)")
    p.add_argument("--batch-size", type=batch_int, default=250)
    p.add_argument("--adapt-channels", action="store_true",
                   help="let a 1-channel model or purifier take RGB data (and a 3-channel one grayscale data)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/audit.json")
    add_label_flags(p)
    add_size_flag(p)
    add_model_flags(p, adapt=False)
    add_runtime_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import distributed
    from ..eval.audit import audit
    from ..eval.preflight import accuracy_lines, clean_accuracy, label_by_model
    from ..models.domain import adapt_channels, check_domain, input_domain
    from ..report.write import write_audit_report
    from ..utils import pick_device
    from .common import open_model
    from .eval import load_data, print_lines

    apply_runtime(args)
    if args.norm == "linf" and args.eps > 1:
        raise AdvshieldError(f"--eps {args.eps * 255:g} is above 255, more than the whole pixel range (L∞)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AdvshieldError(f"--out {out} exists and is not a directory")
    if (out / "audit.json").exists() and not args.overwrite:
        raise AdvshieldError(f"{out / 'audit.json'} already exists; not overwriting it (pass --overwrite)")
    check_norm_flags([args.model], args)
    device = distributed.local_device(pick_device(args.device))
    distributed.init(device)  # under torchrun: join the process group; blocks of samples are sharded
    model = open_model(args.model, args, "--model")
    data = load_data(args)
    shape = data.sample_shape
    check_domain(input_domain(model), shape, f"--model {args.model}", args.adapt_channels)
    if args.adapt_channels:
        model = adapt_channels(model)
    model = model.to(device).eval()
    if (data.labels < 0).any():
        data = label_by_model(model, data, args.batch_size, device)
        print_lines([f"labels: the clean predictions of --model {args.model} (--labels model or no class sub-folders)"])
    correct, total, classes = clean_accuracy(model, data.batches(args.batch_size), device)
    if int(data.labels.max()) >= classes:
        raise AdvshieldError(f"--model {args.model} has {classes} classes, but the data hold label "
                             f"{int(data.labels.max())}; give --class-map")
    print_lines(accuracy_lines(f"--model {args.model} (undefended)", correct, total, classes))
    x = torch.cat([xb for xb, _ in data.batches(args.batch_size)])
    defense = None if args.defense == "none" else args.defense
    try:
        res = audit(model, defense, x, data.labels, args.eps, args.norm, args.version, steps=args.steps,
                    eot=args.eot, draws=args.draws, n_queries=args.n_queries, seed=args.seed,
                    batch_size=args.batch_size, adapt_channels=args.adapt_channels, device=device,
                    resume_dir=out / RESUME_DIR,
                    log=lambda s: print(f"  {s}", file=sys.stderr) if distributed.is_main() else None)
    except AdvshieldError as e:
        raise AdvshieldError(f"--defense {args.defense}: {e}" if defense is not None else str(e)) from None
    if not distributed.is_main():  # every rank holds the gathered result; rank 0 writes it
        return 0
    res.meta.update({"model": args.model, "defense": args.defense, "data": args.data, "command": command_line(),
                     "torch": torch.__version__, "device": str(device), "world_size": distributed.world()[1]})
    classes = getattr(data, "classes", None)
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        res.meta["classes"] = list(classes)
    title = f"advshield audit: {args.defense} + {args.model}"
    markdown = res.to_markdown(title)
    flags = {"robust": res.robust, **{f"mode{i}": t for i, t in enumerate(res.per_sample.values())}}
    paths = write_audit_report(res.to_json(), markdown, {k: v.to(torch.uint8) for k, v in flags.items()}, out,
                               title, res.meta["command"], res.examples,
                               {f"mode{i}": k for i, k in enumerate(res.per_sample)})
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)  # the finished blocks are in the report now
    print(markdown)
    print(f"wrote {paths['html']} (open it in a browser), {paths['markdown']}, {paths['json']} and "
          f"{paths['flags']}")
    return 0
