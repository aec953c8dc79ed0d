"""The one step loop every advshield trainer runs: resume, progress bar, loss CSV, checkpoints.

A trainer supplies ``step_fn(step) -> {loss name: float}`` (all randomness of a step drawn from generators
seeded by (seed, step), see :func:`step_generator`) plus ``state_fn()``/``load_fn(state)`` for the tensors it
owns (nets, optimisers). The loop saves ``WORK/state.pt`` every ``save_every`` steps and at the end, resumes
from it when the run's settings (``config_key``) are unchanged, and appends running means to ``WORK/log.csv``
(rows past the resumed checkpoint are dropped), so a stopped run continues exactly where it stopped.

Under torchrun the losses are averaged over the ranks every step and rank 0 alone prints, logs and saves; every
rank resumes from the same ``state.pt`` (which holds no process count, so a run may resume on another one).
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .. import distributed
from ..errors import AdvshieldError
from ..utils import atomic_path, progress
from .runtime import quiet


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream)."""
    state = np.random.SeedSequence([int(seed) % 2**32, int(step) % 2**32, stream]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 32-bit integer seed that depends only on (seed, step, stream)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(step) % 2**32, stream]).generate_state(1)[0])


AMP_MODES = ("bf16", "fp16")


def check_accum(accum: int, batch_size: int, amp: str | None = None) -> None:
    """One-line errors for ``--accum`` (a positive divisor of the batch size) and ``--amp`` (bf16, fp16 or None)."""
    if isinstance(accum, bool) or int(accum) != accum or not 1 <= accum <= batch_size or batch_size % accum:
        raise AdvshieldError(f"accum must divide the batch size {batch_size} (1 to {batch_size}), not {accum!r}")
    if amp not in (None, *AMP_MODES):
        raise AdvshieldError(f"amp must be one of {', '.join(AMP_MODES)}, not {amp!r}")


def append_log(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` (header written when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(list(row))
        w.writerow(list(row.values()))


def truncate_log(path: Path, step: int) -> None:
    """Keep the CSV rows of steps ≤ ``step`` (rows written after the checkpoint being resumed are dropped)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if ln and int(ln.split(",", 1)[0]) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(keep) + "\n")


@dataclass
class LoopResult:
    """What a finished loop reports: the last step's losses and the training time in seconds (all sessions)."""

    last: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    resumed_from: int = 0


def run_steps(name: str, steps: int, step_fn: Callable[[int], dict[str, float]], *, work: Path,
              config_key: str, state_fn: Callable[[], dict[str, Any]],
              load_fn: Callable[[dict[str, Any]], None], resume: bool = True, save_every: int = 200,
              log_every: int = 10, log: Callable[[str], None] = print,
              batches: Callable[[int, int], Iterable[Any]] | None = None) -> LoopResult:
    """Run ``step_fn`` for steps [start, steps), where start comes from ``WORK/state.pt`` when resuming.

    ``batches(start, stop)``: optional iterable of per-step inputs; then ``step_fn(step, batch)`` is called.
    Raises :class:`AdvshieldError` on a non-finite loss or a checkpoint made with other settings."""
    work = Path(work)
    main = distributed.is_main()
    if not main:
        log = quiet
    work.mkdir(parents=True, exist_ok=True)
    state_path, log_path = work / "state.pt", work / "log.csv"
    start, elapsed = 0, 0.0
    acc: dict[str, float] = {}
    acc_n = 0
    last: dict[str, float] = {}
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if state.get("config") != config_key:
            raise AdvshieldError(f"{state_path} was made with other settings; delete it or pass --fresh")
        load_fn(state)
        torch.set_rng_state(state["torch_rng"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        acc, acc_n, last = dict(state["acc"]), int(state["acc_n"]), dict(state["last"])
        truncate_log(log_path, start)
        log(f"resuming {name} at step {start}/{steps}")
    elif main:
        for p in (state_path, log_path):
            if p.exists():
                p.unlink()
    distributed.barrier()  # no rank reads a checkpoint rank 0 is about to replace

    def save(step: int) -> None:
        if not main:
            return
        with atomic_path(state_path) as tmp:
            torch.save({**state_fn(), "step": step, "config": config_key, "elapsed": elapsed,
                        "torch_rng": torch.get_rng_state(), "acc": acc, "acc_n": acc_n, "last": last}, tmp)

    inputs: Iterable[Any] = batches(start, steps) if batches is not None else range(start, steps)
    t0 = time.time()
    for step, item in zip(range(start, steps), progress(inputs, name, total=steps - start, disable=not main)):
        losses = step_fn(step, item) if batches is not None else step_fn(step)  # type: ignore[call-arg]
        losses = distributed.mean_over_ranks(losses)
        if not all(math.isfinite(v) for v in losses.values()):
            raise AdvshieldError(f"{name}: non-finite loss at step {step + 1}: {losses}")
        last = dict(losses)
        for k, v in losses.items():
            acc[k] = acc.get(k, 0.0) + v
        acc_n += 1
        done = step + 1
        now = time.time()
        elapsed, t0 = elapsed + (now - t0), now
        if done % log_every == 0 or done == steps:
            means = {k: v / acc_n for k, v in acc.items()}
            if main:
                append_log(log_path, {"step": done, **{f"loss_{k}": f"{v:.6g}" for k, v in means.items()},
                                      "elapsed_s": f"{elapsed:.1f}"})
            log(f"{name} step {done}/{steps} " + " ".join(f"{k} {v:.4g}" for k, v in means.items())
                + f" ({elapsed:.0f}s)")
            acc, acc_n = {}, 0
        if done % save_every == 0 or done == steps:
            save(done)
    return LoopResult(last=last, elapsed=elapsed, resumed_from=start)

