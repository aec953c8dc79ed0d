"""The `scaling` section of docs/RESULTS.md: throughput of evaluation, audit and purifier training at 1 and N
processes under torchrun, and a check that the results are the same.

The parent process launches this script under ``torchrun --standalone --nproc_per_node K`` for each K in
``--procs`` and each job (``--jobs eval,audit,train``). Each worker runs the library on its shard with
``--threads`` torch threads: :func:`advshield.eval.grid.evaluate` and :func:`advshield.audit` (rank 0 saves the
per-sample flags) or :func:`advshield.train.purifier.train_purifier` (rank 0 saves the weights). The parent times
each run and compares its output with the 1-process run.

Run: .venv/bin/python benchmarks/scaling.py [--procs 1,2] [--images 200] [--threads 1] [--jobs eval,audit,train]
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
    """One rank of job ``args.job`` on its shard; rank 0 saves the gathered flags (or the weights) to ``--flags``."""
    import advshield
    from advshield import distributed
    from advshield.data import load_dataset

    torch.set_num_threads(args.threads)
    distributed.init("cpu")
    data = load_dataset("fashion-mnist", "test").subset(args.n)
    if args.job == "eval":
        from advshield.eval.grid import evaluate

        models = {m: advshield.load_model(f"zoo:{m}") for m in args.models.split(",")}
        res = evaluate(models, data, args.attacks.split(","), args.defenses.split(","), eps=args.eps / 255,
                       batch_size=args.batch_size, seed=0, adaptive="" if args.adaptive == "none" else args.adaptive,
                       eot=2, draws=2)
        out = res.flags()
    elif args.job == "audit":
        x = torch.cat([xb for xb, _ in data.batches(500)])
        res = advshield.audit(advshield.load_model(f"zoo:{args.audit_model}"), args.audit_defense, x, data.labels,
                              args.eps / 255, version="quick", eot=4, draws=4, batch_size=args.batch_size, seed=0)
        out = {"robust": res.robust, **{f"mode{i}": v for i, v in enumerate(res.per_sample.values())}}
    else:
        from advshield.train.purifier import PurifierConfig, train_purifier

        work = Path(args.flags).with_suffix("")
        cfg = PurifierConfig(name="scaling", arch="nrp-small", feature_model="zoo:fmnist-vgg", steps=args.train_steps,
                             batch_size=16, ssp_steps=10, eval_images=0, save_every=10**6, log_every=10**6,
                             threads=args.threads, device="cpu")
        card = train_purifier(cfg, work, resume=False, log=lambda _: None)
        out = {**load_file(str(work / "scaling.safetensors")),
               "train_time_s": torch.tensor(card["training"]["train_time_s"])}
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in out.items()}, args.flags)


def launch(args: argparse.Namespace, job: str, procs: int, flags: Path) -> float:
    """Wall seconds of one run of ``job`` with ``procs`` processes (torchrun for more than one)."""
    me = [str(Path(__file__).resolve()), "--worker", job, "--flags", str(flags), "--images", str(args.n),
          "--threads", str(args.threads), "--models", args.models, "--attacks", args.attacks, "--defenses",
          args.defenses, "--batch-size", str(args.batch_size), "--adaptive", args.adaptive, "--eps", str(args.eps),
          "--audit-model", args.audit_model, "--audit-defense", args.audit_defense, "--train-steps",
          str(args.train_steps)]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [sys.executable, *me] if procs == 1 else [torchrun, "--standalone", f"--nproc_per_node={procs}", *me]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, timeout=3600)
    return time.time() - t0


def compare(job: str, got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> str:
    """How the run's output compares with the 1-process run: flags identical, or the largest weight difference."""
    if got is ref:
        return "(the reference)"
    if job != "train":
        same = got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
        return "identical per-sample flags" if same else "**flags differ**"
    diff = max(float((got[k].float() - ref[k].float()).abs().max()) for k in ref if k != "train_time_s")
    return f"weights equal to {diff:.1e} (max abs difference)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2")
    p.add_argument("--jobs", default="eval,audit,train")
    p.add_argument("--images", dest="n", type=int, default=200, help="first N test images (default 200)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--models", default="fmnist-lenet,fmnist-vgg")
    p.add_argument("--attacks", default="fgsm,pgd")
    p.add_argument("--defenses", default="none,jpeg,median,tvm")
    p.add_argument("--adaptive", default="full,bpda")
    p.add_argument("--eps", type=float, default=25.5)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--audit-model", default="fmnist-lenet")
    p.add_argument("--audit-defense", default="resize-pad")
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--flags", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.job = args.worker
        worker(args)
        return
    out = Path(".cache/scaling")
    out.mkdir(parents=True, exist_ok=True)
    what = {"eval": f"`evaluate()`: {args.attacks} × {args.models} × {args.defenses} (adaptive {args.adaptive}, "
                    f"EOT 2, 2 draws), {args.n} images, batch {args.batch_size}",
            "audit": f"`audit()`: {args.audit_defense} + {args.audit_model}, quick, EOT 4, 4 draws, {args.n} images, "
                     f"blocks of {args.batch_size}",
            "train": f"`train_purifier()`: nrp-small, SSP-10 on fmnist-vgg, {args.train_steps} steps of 16 crops"}
    rows = []
    for job in args.jobs.split(","):
        ref = None
        base = None
        for k in [int(v) for v in args.procs.split(",")]:
            flags = out / f"{job}-{k}.safetensors"
            secs = launch(args, job, k, flags)
            got = load_file(str(flags))
            ref = ref or got
            base = base or secs
            unit = args.train_steps if job == "train" else args.n
            loop = f"{float(got['train_time_s']):.1f} s" if job == "train" else "—"
            rows.append((job, k, secs, unit / secs, base / secs, loop, compare(job, got, ref)))
            print(f"{job}, {k} process(es): {secs:.1f} s, {unit / secs:.2f} /s, {rows[-1][-1]}")
    command = (f".venv/bin/python benchmarks/scaling.py --procs {args.procs} --jobs {args.jobs} --images {args.n} "
               f"--threads {args.threads}")
    lines = ["## Scaling: torchrun on CPU (gloo)", "",
             f"Command: `{command}`", f"Machine: {machine()}", "",
             f"{args.threads} torch thread(s) per process; wall time includes start-up (imports, models, data, the "
             "process group); the training loop time (from the card) excludes it. Jobs:", ""]
    lines += [f"- **{job}** — {text}" for job, text in what.items() if job in args.jobs.split(",")]
    lines += ["", "| job | processes | wall time | per s (images or steps) | speed-up | training loop | "
                  "output vs 1 process |", "|:---|---:|---:|---:|---:|---:|:---|"]
    lines += [f"| {job} | {k} | {s:.1f} s | {r:.2f} | {sp:.2f}× | {loop} | {cmp} |"
              for job, k, s, r, sp, loop, cmp in rows]
    lines += ["", "On 2 cores the speed-up is bounded by 2 and eaten by start-up and communication; the point here is "
              "that the outputs agree. Every rank reads the first batch (the defense probe) and gathers the results; "
              "`audit` runs its sanity checks (unbounded attack, eps curve, repeat) on rank 0 while the other ranks "
              "wait, and a training step on 8 crops per rank costs more than half a step on 16 (small-batch "
              "convolutions, the critic's batch-norm all-reduces, the gradient all-reduce). The `Machine` line gives "
              "the launcher's thread count; each worker process uses the thread count above."]
    update_section("scaling", "\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    main()
