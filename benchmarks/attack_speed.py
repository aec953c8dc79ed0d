"""Attack-loop overhead: advshield PGD vs. a bare PyTorch loop vs. torchattacks.PGD, advshield SSP vs. a bare
feature-distance loop, and advshield APGD-CE vs. a bare APGD loop vs. torchattacks.APGD, on one batch with one zoo
model.

Runs are interleaved (each round runs every contender once, the order rotated round by round) so that load
changes on the machine hit all contenders alike; the table gives medians. The PGD and SSP contenders do the same
math (no random start; sign step, project, clamp) and their outputs are compared. The APGD-CE contenders all
start from a seeded random point and follow Croce & Hein's step-size rule (torchattacks with its own checkpoint
schedule), so their outputs differ; their robust accuracies are compared instead. advshield's APGD drops samples
from the batch once they are fooled, the other two run the whole batch at every step: the APGD row uses a small
eps (default 0.003, under 1/255) at which few samples are fooled, so that it times the loop, not that shortcut.

Run: .venv/bin/python benchmarks/attack_speed.py --threads 1  (writes the `speed` and `speed-apgd` sections of
docs/RESULTS.md); add --apgd-only to run only the APGD-CE row (writes only `speed-apgd`).
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

from advshield.attacks import APGD, PGD, SSP
from advshield.data import load_dataset
from advshield.models import load_model
from advshield.report.tables import markdown_table
from advshield.utils import pick_device

GOAL_BARE, GOAL_TA, GOAL_APGD_TA = 1.05, 1.0, 1.05


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


def apgd_checkpoints(steps: int) -> list[int]:
    """Croce & Hein's checkpoints ⌈p_j·steps⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),
    in hundredths (the same list as advshield.attacks.apgd.checkpoints, written out again for the bare loop)."""
    out: list[int] = []
    prev, cur = 0, 22
    while cur <= 100:
        w = -(-cur * steps // 100)
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return out


def bare_apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int = 0,
              rho: float = 0.75) -> torch.Tensor:
    """APGD-CE (L∞, one run) written by hand on the whole batch: a seeded random start on the ball's surface, step
    2·eps, momentum 0.75, and at each checkpoint the step halved (back to the best point) where the loss rose in
    fewer than ``rho`` of the window's steps or the best loss stalled after a check that did not halve. Returns the
    first fooling point per sample, else the best-loss point. x N×C×H×W in [0,1], y N, eps in [0,1] units."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    t = torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1
    t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    x_adv = (x + eps * t).clamp(0, 1)

    def ce_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        logits = model(z)
        loss = F.cross_entropy(logits, y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach(), logits.detach(), g

    def project(z: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)

    loss, logits, grad = ce_grad(x_adv)
    fooled = logits.argmax(1) != y
    x_out = torch.where(fooled.view(-1, 1, 1, 1), x_adv, x)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    x_prev, loss_prev = x_adv.clone(), torch.zeros_like(loss)
    eta = torch.full((len(x), 1, 1, 1), 2 * eps, device=x.device)
    ups, reduced, best_at_check = torch.zeros_like(loss), torch.zeros_like(fooled), loss.clone()
    marks, last = set(apgd_checkpoints(steps)), 0
    for i in range(steps):
        a = 1.0 if i == 0 else 0.75
        z = project(x_adv + eta * grad.sign())
        x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
        x_prev, x_adv = x_adv, x_new
        loss, logits, grad = ce_grad(x_adv)
        new = (logits.argmax(1) != y) & ~fooled
        x_out[new], fooled = x_adv[new], fooled | new
        ups += (loss > loss_prev).float()
        loss_prev = loss
        better = loss > loss_best
        x_best[better], grad_best[better], loss_best = x_adv[better], grad[better], torch.where(better, loss, loss_best)
        if i + 1 in marks:
            window, last = i + 1 - last, i + 1
            halve = (ups < rho * window) | (~reduced & (loss_best <= best_at_check))
            eta[halve] /= 2
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
            loss_prev = torch.where(halve, loss_best, loss_prev)
            reduced, best_at_check, ups = halve, loss_best.clone(), torch.zeros_like(ups)
    return torch.where(fooled.view(-1, 1, 1, 1), x_out, x_best)


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


def robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x_adv`` still classified as ``y``."""
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def paired(times: dict[str, list[float]], a: str, b: str) -> str:
    """Median over rounds of the ratio within a round (robust to load drifting between rounds)."""
    return f"{statistics.median(u / v for u, v in zip(times[a], times[b])):.3f}×"


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def pgd_ssp_section(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: str,
                    sync: Callable[[], None]) -> str:
    """Time advshield PGD / bare loop / torchattacks PGD and advshield SSP / bare feature loop; the `speed` body."""
    import torchattacks

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
    feats = truncated(model, layer)
    ssp_times, ssp_out = interleaved({
        "advshield SSP": lambda: ssp(x),
        "bare feature loop": lambda: bare_ssp(feats, x, eps, 0.01, args.ssp_steps)}, args.rounds, sync)
    total = time.time() - t0

    times = {**pgd_times, **ssp_times}
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    r_bare = med["advshield PGD"] / med["bare loop"]
    r_ta = med["advshield PGD"] / med["torchattacks PGD"]
    r_ssp = med["advshield SSP"] / med["bare feature loop"]
    diff = lambda a, b: float((a - b).abs().max())  # noqa: E731
    rows = [[k, fmt_ms(med[k]), f"{fmt_ms(spread[k][0])}–{fmt_ms(spread[k][1])}",
             fmt_ms(med[k] / (args.steps if k in pgd_times else args.ssp_steps))] for k in med]
    return "\n".join([
        "## Attack-loop speed", "", head,
        f"Model `{args.model}`, batch {len(x)} Fashion-MNIST test images, L∞ eps {eps:g}. PGD: {args.steps} steps of "
        f"eps/10, no random start. SSP: {args.ssp_steps} iterations of 0.01 at `{layer}`, MSE, no random start. "
        f"{args.rounds} interleaved rounds (order rotated each round) after one warm-up run each; medians. "
        f"Total benchmark time {total:.0f} s.", "",
        markdown_table(["contender", "median (ms)", "min–max (ms)", "per iteration (ms)"], rows), "",
        "Ratios of medians (goal) and, in brackets, the median of the per-round ratios:", "",
        f"- advshield PGD / bare loop: **{r_bare:.3f}×** (goal ≤ {GOAL_BARE}×: {met(r_bare <= GOAL_BARE)}) "
        f"[{paired(times, 'advshield PGD', 'bare loop')}]",
        f"- advshield PGD / torchattacks PGD: **{r_ta:.3f}×** (goal ≤ {GOAL_TA}×: {met(r_ta <= GOAL_TA)}) "
        f"[{paired(times, 'advshield PGD', 'torchattacks PGD')}]",
        f"- advshield SSP / bare feature loop, per iteration: **{r_ssp:.3f}×** (goal ≤ {GOAL_BARE}×: "
        f"{met(r_ssp <= GOAL_BARE)}) [{paired(times, 'advshield SSP', 'bare feature loop')}]",
        f"- Same math: max |Δ| advshield vs bare {diff(pgd_out['advshield PGD'], pgd_out['bare loop']):.2g}, vs "
        f"torchattacks {diff(pgd_out['advshield PGD'], pgd_out['torchattacks PGD']):.2g}; SSP vs bare "
        f"{diff(ssp_out['advshield SSP'], ssp_out['bare feature loop']):.2g}.", ""])


def apgd_section(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: str,
                 sync: Callable[[], None]) -> str:
    """Time advshield APGD-CE / bare APGD loop / torchattacks APGD (L∞, one run, seed 0); the `speed-apgd` body."""
    import torchattacks

    eps, steps = args.apgd_eps, args.apgd_steps
    t0 = time.time()
    ours = APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
    ta = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)

    def theirs() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # torchattacks seeds the global generator
            return ta(x, y)

    times, out = interleaved({
        "advshield APGD-CE": lambda: ours(x, y),
        "bare APGD loop": lambda: bare_apgd(model, x, y, eps, steps),
        "torchattacks APGD": theirs}, args.rounds, sync)
    total = time.time() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [[k, fmt_ms(med[k]), f"{fmt_ms(min(v))}–{fmt_ms(max(v))}", fmt_ms(med[k] / steps),
             f"{robust(model, out[k], y):.3f}"] for k, v in times.items()]
    r_bare = med["advshield APGD-CE"] / med["bare APGD loop"]
    r_ta = med["advshield APGD-CE"] / med["torchattacks APGD"]
    return "\n".join([
        "## Attack-loop speed: APGD-CE", "", head,
        f"Model `{args.model}`, batch {len(x)} Fashion-MNIST test images (clean accuracy {robust(model, x, y):.3f}), "
        f"L∞ eps {eps:g}, APGD-CE: {steps} steps, 1 run from a random start (seed 0), rho 0.75. The bare loop is "
        "APGD-CE written out by hand on the whole batch (`bare_apgd`); torchattacks' APGD also runs the whole batch, "
        "advshield's drops samples once fooled (few are, at this eps: see the robust accuracies). "
        f"{args.rounds} interleaved rounds (order rotated each round) after one warm-up run each; medians. "
        f"Total time for this row {total:.0f} s.", "",
        markdown_table(["contender", "median (ms)", "min–max (ms)", "per iteration (ms)", "robust accuracy"], rows),
        "", "Ratios of medians (goal) and, in brackets, the median of the per-round ratios:", "",
        f"- advshield APGD-CE / bare APGD loop: **{r_bare:.3f}×** (goal ≤ {GOAL_BARE}×: {met(r_bare <= GOAL_BARE)}) "
        f"[{paired(times, 'advshield APGD-CE', 'bare APGD loop')}]",
        f"- advshield APGD-CE / torchattacks APGD: **{r_ta:.3f}×** (goal ≤ {GOAL_APGD_TA}×: "
        f"{met(r_ta <= GOAL_APGD_TA)}) [{paired(times, 'advshield APGD-CE', 'torchattacks APGD')}]", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo:fmnist-vgg")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--ssp-steps", type=int, default=20, help="SSP iterations per timed run (default 20)")
    p.add_argument("--apgd-steps", type=int, default=10, help="APGD-CE steps (default 10)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--eps", type=float, default=0.1, help="L∞ budget of PGD and SSP in [0,1] units (default 0.1)")
    p.add_argument("--apgd-eps", type=float, default=0.003, help="L∞ budget of APGD-CE in [0,1] units (default 0.003)")
    p.add_argument("--apgd-only", action="store_true",
                   help="run only the APGD-CE row (writes only the speed-apgd section)")
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
    command = "python benchmarks/attack_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    head = "\n".join([
        f"Command: `{command.strip()}`",
        f"Machine: {machine()}, device {device}; torch threads {torch.get_num_threads()}; torchattacks "
        f"{torchattacks.__version__}", ""])
    bodies = {} if args.apgd_only else {"speed": pgd_ssp_section(args, model, x, y, head, sync)}
    bodies["speed-apgd"] = apgd_section(args, model, x, y, head, sync)
    for name, body in bodies.items():
        update_section(name, body, args.results)
        print(body)


if __name__ == "__main__":
    main()
