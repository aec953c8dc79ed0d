"""Argument helpers shared by the sub-commands.

Every ``type=`` here raises :class:`argparse.ArgumentTypeError` with a short message; the root parser (see
:mod:`advshield.cli.main`) prints it as one line ``advshield: error: --flag: message`` and exits with code 2.
Numbers are refused when they are not finite (``nan``, ``inf``) or out of range, before any work is done.
Budgets and step sizes are given in 0-255 pixel units and returned in [0,1] units (divided by 255)."""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import AdvshieldError

MAX_PIXELS = 255.0
MAX_NAME = 200
MAX_SEED = 2**32 - 1
MAX_BATCH = 65536  # images per batch; more would allocate absurd memory in training
MAX_SIZE = 4096  # image side, crop, widths, latent sizes, kernel sizes …


# -- numbers ------------------------------------------------------------------------------------------------
def _finite(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {value!r}")
    return v


def finite_float(value: str) -> float:
    """Any finite real (nan and ±inf refused); range checks are left to the library."""
    return _finite(value)


def positive_float(value: str) -> float:
    """A finite real > 0 (learning rates, kernel radii, resize rates)."""
    v = _finite(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value!r}")
    return v


def non_negative_float(value: str) -> float:
    """A finite real >= 0 (loss weights)."""
    v = _finite(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value!r}")
    return v


def unit_float(value: str) -> float:
    """A finite real in [0, 1]: probabilities, fractions, shares, sigma in [0,1] image units."""
    v = _finite(value)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {value!r}")
    return v


def budget_pixels(value: str) -> float:
    """An L∞ budget in 0-255 pixel units (floats allowed), 0 < v <= 255 → [0,1] units (v / 255)."""
    v = _finite(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (0 < eps <= 255 in 0-255 pixel units), not {value!r}")
    if v > MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"{value} is above 255, more than the whole pixel range")
    return v / 255.0


def step_pixels(value: str) -> float:
    """A step size in 0-255 pixel units, 0 < v <= 255 → [0,1] units (v / 255)."""
    v = _finite(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive step (0 < step <= 255 in 0-255 pixel units), "
                                         f"not {value!r}")
    if v > MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"{value} is above 255, more than the whole pixel range")
    return v / 255.0


def min_budget_pixels(value: str) -> float:
    """A lower budget bound in 0-255 pixel units, 0 <= v <= 255 → [0,1] units (0 allowed: clean samples)."""
    v = _finite(value)
    if not 0 <= v <= MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"must be in [0, 255] (0-255 pixel units), not {value!r}")
    return v / 255.0


def norm_budget_pixels(value: str) -> float:
    """A budget that may be an L2 norm over the whole image (0-255 units, so above 255 is possible): finite,
    > 0 → [0,1] units (v / 255). The command checks the L∞ cap of 255 once it knows the norm."""
    v = _finite(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (0-255 pixel units), not {value!r}")
    return v / 255.0


def finite_pixels(value: str) -> float:
    """Any finite amount in 0-255 pixel units → [0,1] units (v / 255), for a command that checks the range
    itself once it knows the norm (``uap --eps``: L∞ or L2)."""
    return _finite(value) / 255.0


def budget_list(value: str) -> list[float]:
    """Comma-separated L∞ budgets in 0-255 pixel units (``8,16,25.5``) → [0,1] units, each as :func:`budget_pixels`,
    at most 16 of them."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"needs at least one comma-separated budget, not {value!r}")
    if len(items) > 16:
        raise argparse.ArgumentTypeError(f"at most 16 budgets, not {len(items)}")
    return [budget_pixels(v) for v in items]


def pixels(value: str) -> float:
    """Former name of :func:`norm_budget_pixels` (kept for ``default=pixels("16")``): finite, > 0 → v / 255."""
    return norm_budget_pixels(value)


# -- integers -----------------------------------------------------------------------------------------------
def _int_in(value: str, minimum: int, maximum: int | None = None) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, not {value!r}" if minimum == 1 else
            f"must be a non-negative integer, not {value!r}" if minimum == 0 else f"must be >= {minimum}")
    if maximum is not None and v > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {value!r}")
    return v


def positive_int(value: str) -> int:
    """An integer >= 1 (iterations, counts)."""
    return _int_in(value, 1)


def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    return _int_in(value, 0)


def int_at_most(maximum: int, minimum: int = 1) -> Callable[[str], int]:
    """A ``type=`` for an integer in [minimum, maximum]: sizes and widths that allocate memory in proportion."""
    def parse(value: str) -> int:
        return _int_in(value, minimum, maximum)

    parse.__name__ = f"int_at_most_{maximum}"
    return parse


batch_int = int_at_most(MAX_BATCH)  # --batch-size
size_int = int_at_most(MAX_SIZE)  # image sizes, crops, widths, depths, latent sizes, kernel sizes


def worker_count(value: str) -> int:
    """DataLoader worker processes: an integer in [0, 256]."""
    return _int_in(value, 0, 256)


def seed_int(value: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1]."""
    return _int_in(value, 0, MAX_SEED)


def thread_count(value: str) -> int:
    """CPU threads: an integer in [1, 1024]."""
    return _int_in(value, 1, 1024)


# -- strings ------------------------------------------------------------------------------------------------
def csv_list(value: str) -> list[str]:
    """A comma-separated list of at least one non-empty item (``a,b`` → ``["a", "b"]``; ``,`` refused)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"needs at least one comma-separated name, not {value!r}")
    return items


def plain_name(value: str) -> str:
    """A plain file name (zoo entry names): not empty, at most 200 characters, no ``/``, ``\\``, NUL or control
    characters, not starting with ``.`` (so never ``..`` or a hidden file)."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    if len(value) > MAX_NAME:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NAME} characters, not {len(value)}")
    if any(c in value for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise argparse.ArgumentTypeError(f"must be a plain file name (no /, \\ or control characters), "
                                         f"not {value!r}")
    if value.startswith(".") or ".." in value:
        raise argparse.ArgumentTypeError(f"must be a plain file name not starting with '.' and without '..', "
                                         f"not {value!r}")
    if value != value.strip():
        raise argparse.ArgumentTypeError(f"must not start or end with spaces, not {value!r}")
    return value


def device_name(value: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a GPU that is not there is refused up front."""
    if value == "auto":
        return value
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: CUDA is not available here (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{value!r}: there are only {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: MPS is not available here (use cpu or auto)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (auto, cpu, cuda, cuda:N, mps)")
    return value


# -- shared flags -------------------------------------------------------------------------------------------
def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed_int, default=0, help="random seed, 0 to 2^32-1 (default 0)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--threads", type=thread_count, default=None, help="CPU threads for torch")


def add_resume_flags(p: argparse.ArgumentParser) -> None:
    """A trainer's --resume (default) / --fresh and --overwrite."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="fresh", action="store_false", help="continue a saved run (default)")
    g.add_argument("--fresh", dest="fresh", action="store_true", help="ignore a saved training state, start over")
    p.set_defaults(fresh=False)
    p.add_argument("--overwrite", action="store_true", help="replace an existing NAME.safetensors in --out-dir")


def new_checkpoint_path(args: argparse.Namespace, name: str) -> Path:
    """OUT/NAME.safetensors a trainer will write; refused (before anything runs) when it exists without
    --overwrite."""
    out = Path(args.out_dir) / f"{name}.safetensors"
    if out.exists() and not args.overwrite:
        raise AdvshieldError(f"{out} exists; pass --overwrite to replace it")
    return out


def add_scale_flags(p: argparse.ArgumentParser, workers: bool = True) -> None:
    """Flags of a trainer that scales out (torchrun): --amp, --accum and (reading from disk) --workers."""
    p.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"), default=None,
                   help="mixed precision on CUDA: bf16 (the default when given alone) or fp16 with loss scaling; "
                        "a no-op with a note on CPU")
    p.add_argument("--accum", type=positive_int, default=1, metavar="K",
                   help="gradient accumulation: each process's share of a batch runs as K parts (keeps the global "
                        "--batch-size when the process count changes; default 1)")
    if workers:
        p.add_argument("--workers", type=worker_count, default=0,
                       help="DataLoader worker processes reading the training data (default 0)")


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


# -- your model, your data ----------------------------------------------------------------------------------
def float_list(value: str) -> list[float]:
    """Comma-separated finite numbers (``0.485,0.456,0.406``)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"needs comma-separated numbers, not {value!r}")
    return [_finite(v) for v in items]


def add_model_flags(p: argparse.ArgumentParser, adapt: bool = True) -> None:
    """``--mean``/``--std`` (normalisation of py:/timm:/torchvision:/hf:/torchscript: models) and
    ``--adapt-channels``."""
    p.add_argument("--mean", type=float_list, default=None,
                   help="per-channel mean the model expects its input normalised with (e.g. 0.485,0.456,0.406): "
                   "wraps the user models (not zoo:/card checkpoints, which normalise inside) in Normalize; "
                   "same as SPEC?mean=...")
    p.add_argument("--std", type=float_list, default=None, help="per-channel std to go with --mean")
    if adapt:
        p.add_argument("--adapt-channels", action="store_true",
                       help="let a 1-channel model or purifier take RGB data (luma / per channel) and a 3-channel "
                       "model take grayscale data (repeated); without it a channel mismatch is an error")


def add_label_flags(p: argparse.ArgumentParser) -> None:
    """``--labels folder|model|auto`` and ``--class-map FILE.json``."""
    p.add_argument("--labels", choices=["auto", "folder", "model"], default="auto",
                   help="true labels from class sub-folders (folder) or the model's clean predictions (model); "
                   "default auto: folder when the tree has class sub-folders, else model")
    p.add_argument("--class-map", default=None, metavar="FILE.json",
                   help="class folder name → class index of the model (JSON object, or a list of folder names in "
                   "index order); without it N_name and integer folder names give N, other names sorted → 0..K-1")


def size_hw(value: str) -> int:
    """One image side in pixels, 1 to 4096."""
    return _int_in(value, 1, MAX_SIZE)


def add_size_flag(p: argparse.ArgumentParser, what: str = "image") -> None:
    p.add_argument("--size", type=size_hw, nargs="+", default=None, metavar=("H", "W"),
                   help=f"resize every {what} to H×W (one value: square) before use")


def size_arg(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--size H [W]`` as (H, W), or None."""
    size = getattr(args, "size", None)
    if size is None:
        return None
    if len(size) > 2:
        raise AdvshieldError(f"--size takes H W (or one value for a square), not {len(size)} values")
    return (size[0], size[-1])


USER_MODEL_SCHEMES = ("py:", "timm:", "torchvision:", "hf:", "torchscript:")


def _is_checkpoint(spec: str) -> bool:
    """A zoo entry or an advshield .safetensors/.json checkpoint (normalisation inside), not a user model."""
    return not spec.startswith(USER_MODEL_SCHEMES)


def open_model(spec: str, args: argparse.Namespace, flag: str = "--model") -> object:
    """``load_model(spec)`` with ``--mean``/``--std`` applied to a user model (not to zoo/card checkpoints) and a
    one-line error naming ``flag``."""
    from ..models import load_model

    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    norm = {} if _is_checkpoint(spec) else {"mean": mean, "std": std}
    try:
        return load_model(spec, **norm)
    except AdvshieldError as e:
        raise type(e)(f"{flag} {spec}: {e}") from None


def check_norm_flags(specs: list[str], args: argparse.Namespace) -> None:
    """Refuse ``--mean``/``--std`` when no model of the command would take them (all zoo/card checkpoints)."""
    if (getattr(args, "mean", None) or getattr(args, "std", None)) and all(_is_checkpoint(s) for s in specs):
        raise AdvshieldError("--mean/--std apply to py:, timm:, torchvision:, hf: and torchscript: models; zoo and "
                             ".safetensors checkpoints normalise inside")
