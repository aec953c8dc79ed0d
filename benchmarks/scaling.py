"""The `scaling` section of docs/RESULTS.md: evaluation throughput at 1 and N processes under torchrun, and a check
that the per-sample results are the same.

The parent process launches this script under ``torchrun --standalone --nproc_per_node K`` for each K in
``--procs`` (each worker runs :func:`advshield.eval.grid.evaluate` on its shard with ``--threads`` torch threads,
rank 0 writes the per-sample flags), times it, and compares the flags with the 1-process run.

Run: .venv/bin/python benchmarks/scaling.py [--procs 1,2] [--images 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from _results import RESULTS, machine, update_section
from safetensors.torch import load_file, save_file


def worker(args: argparse.Namespace) -> None:
    """One rank: the grid on its shard; rank 0 saves the gathered flags to ``--flags``."""
    import advshield
    from advshield.data import load_dataset
    from advshield import distributed
    from advshield.eval.grid import evaluate

    torch.set_num_threads(args.threads)
    distributed.init("cpu")
    models = {m: advshield.load_model(f"zoo:{m}") for m in args.models.split(",")}
    data = load_dataset("fashion-mnist", "test").subset(args.n)
    res = evaluate(models, data, args.attacks.split(","), args.defenses.split(","), eps=args.eps / 255,
                   batch_size=args.batch_size, seed=0, adaptive="" if args.adaptive == "none" else args.adaptive,
                   eot=2, draws=2)
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in res.flags().items()}, args.flags)


def launch(args: argparse.Namespace, procs: int, flags: Path) -> float:
    """Wall seconds of one run with ``procs`` processes (torchrun for more than one)."""
    me = [str(Path(__file__).resolve()), "--worker", "--flags", str(flags), "--images", str(args.n), "--threads",
          str(args.threads), "--models", args.models, "--attacks", args.attacks, "--defenses", args.defenses,
          "--batch-size", str(args.batch_size), "--adaptive", args.adaptive, "--eps", str(args.eps)]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [sys.executable, *me] if procs == 1 else [torchrun, "--standalone", f"--nproc_per_node={procs}", *me]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, timeout=3600)
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2")
    p.add_argument("--images", dest="n", type=int, default=200, help="first N test images (default 200)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--models", default="fmnist-lenet,fmnist-vgg")
    p.add_argument("--attacks", default="fgsm,pgd")
    p.add_argument("--defenses", default="none,jpeg,median,tvm")
    p.add_argument("--adaptive", default="full,bpda")
    p.add_argument("--eps", type=float, default=25.5)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flags", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    out = Path(".cache/scaling")
    out.mkdir(parents=True, exist_ok=True)
    rows, ref = [], None
    for k in [int(v) for v in args.procs.split(",")]:
        flags = out / f"flags-{k}.safetensors"
        secs = launch(args, k, flags)
        got = load_file(str(flags))
        ref = ref or got
        same = got.keys() == ref.keys() and all(torch.equal(got[key], ref[key]) for key in ref)
        rows.append((k, secs, args.n / secs, same))
        print(f"{k} process(es): {secs:.1f} s, {args.n / secs:.2f} images/s, flags identical to 1 process: {same}")
    base = rows[0][1]
    command = (f".venv/bin/python benchmarks/scaling.py --procs {args.procs} --images {args.n} "
               f"--threads {args.threads} --models {args.models} --attacks {args.attacks} --defenses {args.defenses}")
    lines = ["## Scaling: sharded evaluation under torchrun (CPU, gloo)", "",
             f"Command: `{command}`", f"Machine: {machine()}", "",
             f"`evaluate()` of {args.attacks} × {args.models} × {args.defenses} (adaptive {args.adaptive}, EOT 2, "
             f"2 draws) on the first {args.n} Fashion-MNIST test images, batch size {args.batch_size}, "
             f"{args.threads} torch thread(s) per process. Wall time includes start-up (imports, models, data, "
             "the process group).", "",
             "| processes | wall time | images/s | speed-up | per-sample flags identical to 1 process |",
             "|---:|---:|---:|---:|:---|"]
    lines += [f"| {k} | {s:.1f} s | {r:.2f} | {base / s:.2f}× | {'yes' if same else '**no**'} |"
              for k, s, r, same in rows]
    lines += ["", "Purifier training under torchrun is not implemented yet; its row will follow."]
    update_section("scaling", "\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    main()
