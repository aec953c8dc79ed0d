"""Attack-loop overhead: advshield PGD vs. a bare PyTorch loop vs. torchattacks.PGD, and advshield SSP vs. a
bare feature-distance loop, on one batch with one zoo model.

Runs are interleaved (each round runs every contender once, the order rotated round by round) so that load
changes on the machine hit all contenders alike; the table gives medians. All contenders do the same math
(no random start; sign step, project, clamp) and their outputs are compared.

Run: .venv/bin/python benchmarks/attack_speed.py  (writes the `speed` section of docs/RESULTS.md)
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from _results import RESULTS, machine, update_section
from torch import nn

from advshield.attacks import PGD, SSP
from advshield.data import load_dataset
from advshield.models import load_model
from advshield.report.tables import markdown_table
from advshield.utils import pick_device

GOAL_BARE, GOAL_TA = 1.05, 1.0


def bare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
             steps: int) -> torch.Tensor:
    """The PGD loop written by hand: CE (summed), input gradient, sign step, project onto the ball, clamp."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def truncated(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """[0,1] images → the ``layer`` feature map, by running the model's modules up to ``layer`` directly (what a
    hand-written feature loop does); for a VGGNet/LeNet-style ``normalize`` + ``features`` Sequential."""
    prefix, _, name = layer.partition(".")
    feats = getattr(model, prefix, None)
    if prefix != "features" or not isinstance(feats, nn.Sequential) or not hasattr(model, "normalize"):
        raise SystemExit(f"the bare SSP loop supports models with normalize + features.<name> layers, not {layer!r}")
    names = [n for n, _ in feats.named_children()]
    head = nn.Sequential(model.normalize, *list(feats.children())[: names.index(name) + 1])
    return head


def bare_ssp(features: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, alpha: float,
             steps: int) -> torch.Tensor:
    """SSP by hand: maximise the per-sample MSE to the clean features, sign steps, project, clamp."""
    with torch.no_grad():
        clean = features(x).flatten(1)
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = (features(x_adv).flatten(1) - clean).pow(2).mean(1).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def interleaved(contenders: dict[str, Callable[[], torch.Tensor]], rounds: int,
                sync: Callable[[], None]) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Run every contender once per round (order rotated each round) after one warm-up run each."""
    outputs = {k: fn() for k, fn in contenders.items()}  # warm-up, and the outputs to compare
    times: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            sync()
            t = time.perf_counter()
            contenders[k]()
            sync()
            times[k].append(time.perf_counter() - t)
    return times, outputs


def fmt_ms(v: float) -> str:
    return f"{1000 * v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo:fmnist-vgg")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--ssp-steps", type=int, default=20, help="SSP iterations per timed run (default 20)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--eps", type=float, default=0.1, help="L∞ budget in [0,1] units (default 0.1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update (default docs/RESULTS.md)")
    args = p.parse_args()
    import torchattacks

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = load_model(args.model).to(device).eval()
    for q in model.parameters():  # the same frozen model for every contender
        q.requires_grad_(False)
    data = load_dataset("fashion-mnist", "test", args.data_root).subset(args.batch)
    x, y = next(data.batches(args.batch))
    x, y = x.to(device), y.to(device)
    eps, alpha = args.eps, args.eps / 10
    t0 = time.time()

    ours = PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=False)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=False)
    pgd_times, pgd_out = interleaved({
        "advshield PGD": lambda: ours(x, y),
        "bare loop": lambda: bare_pgd(model, x, y, eps, alpha, args.steps),
        "torchattacks PGD": lambda: ta(x, y)}, args.rounds, sync)

    layer = getattr(model, "default_feature_layer", None)
    ssp = SSP(model, eps=eps, alpha=0.01, steps=args.ssp_steps, random_start=False, layer=layer)
    head = truncated(model, layer)
    ssp_times, ssp_out = interleaved({
        "advshield SSP": lambda: ssp(x),
        "bare feature loop": lambda: bare_ssp(head, x, eps, 0.01, args.ssp_steps)}, args.rounds, sync)
    total = time.time() - t0

    times = {**pgd_times, **ssp_times}
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    r_bare = med["advshield PGD"] / med["bare loop"]
    r_ta = med["advshield PGD"] / med["torchattacks PGD"]
    r_ssp = med["advshield SSP"] / med["bare feature loop"]

    def paired(a: str, b: str) -> str:
        """Median over rounds of the ratio within a round (robust to load drifting between rounds)."""
        return f"{statistics.median(u / v for u, v in zip(times[a], times[b])):.3f}×"

    diff = lambda a, b: float((a - b).abs().max())  # noqa: E731
    rows = [[k, fmt_ms(med[k]), f"{fmt_ms(spread[k][0])}–{fmt_ms(spread[k][1])}",
             fmt_ms(med[k] / (args.steps if k in pgd_times else args.ssp_steps))] for k in med]
    met = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    command = "python benchmarks/attack_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    body = "\n".join([
        "## Attack-loop speed", "",
        f"Command: `{command.strip()}`",
        f"Machine: {machine()}, device {device}; torch threads {torch.get_num_threads()}; torchattacks "
        f"{torchattacks.__version__}", "",
        f"Model `{args.model}`, batch {len(x)} Fashion-MNIST test images, L∞ eps {eps:g}. PGD: {args.steps} steps of "
        f"eps/10, no random start. SSP: {args.ssp_steps} iterations of 0.01 at `{layer}`, MSE, no random start. "
        f"{args.rounds} interleaved rounds (order rotated each round) after one warm-up run each; medians. "
        f"Total benchmark time {total:.0f} s.", "",
        markdown_table(["contender", "median (ms)", "min–max (ms)", "per iteration (ms)"], rows), "",
        "Ratios of medians (goal) and, in brackets, the median of the per-round ratios:", "",
        f"- advshield PGD / bare loop: **{r_bare:.3f}×** (goal ≤ {GOAL_BARE}×: {met(r_bare <= GOAL_BARE)}) "
        f"[{paired('advshield PGD', 'bare loop')}]",
        f"- advshield PGD / torchattacks PGD: **{r_ta:.3f}×** (goal ≤ {GOAL_TA}×: {met(r_ta <= GOAL_TA)}) "
        f"[{paired('advshield PGD', 'torchattacks PGD')}]",
        f"- advshield SSP / bare feature loop, per iteration: **{r_ssp:.3f}×** (goal ≤ {GOAL_BARE}×: "
        f"{met(r_ssp <= GOAL_BARE)}) [{paired('advshield SSP', 'bare feature loop')}]",
        f"- Same math: max |Δ| advshield vs bare {diff(pgd_out['advshield PGD'], pgd_out['bare loop']):.2g}, vs "
        f"torchattacks {diff(pgd_out['advshield PGD'], pgd_out['torchattacks PGD']):.2g}; SSP vs bare "
        f"{diff(ssp_out['advshield SSP'], ssp_out['bare feature loop']):.2g}.", ""])
    update_section("speed", body, args.results)
    print(body)


if __name__ == "__main__":
    main()
