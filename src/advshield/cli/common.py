"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import AdvshieldError


def pixels(value: str) -> float:
    """A budget or step in 0-255 pixel units (floats allowed) → [0,1] units."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be non-negative")
    return v / 255.0


def _int_at_least(value: str, minimum: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if v < minimum:
        raise argparse.ArgumentTypeError("must be a positive integer" if minimum else "must be a non-negative integer")
    return v


def positive_int(value: str) -> int:
    return _int_at_least(value, 1)


def non_negative_int(value: str) -> int:
    return _int_at_least(value, 0)


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")


def apply_runtime(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def command_line() -> str:
    return "advshield " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def check_names(kind: str, names: list[str], known: list[str]) -> None:
    bad = [n for n in names if n not in known]
    if bad:
        raise AdvshieldError(f"unknown {kind} {bad[0]!r} (known: {', '.join(known)})")
