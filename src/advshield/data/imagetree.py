"""Reading a tree of images and writing one back, for the commands that transform a tree (``ssp``, ``attack``,
``purify``) or read one to evaluate (``bypass``).

- Reading: :func:`load_folder` lists and decodes every image once (a corrupt file fails before anything is
  written); :func:`check_image_sizes` refuses images below a size the caller needs; :func:`size_batches` groups
  images of one shape (C×H×W) into batches; :func:`load_batch` stacks one batch as uint8. Labels: see
  :mod:`advshield.data.labels`.
- Writing: :func:`check_dirs` refuses an out-dir equal to, inside, or symlinked into the source tree;
  :func:`plan_outputs` maps every image to ``out/<relative path>.png``, refuses clashes and (unless resuming)
  existing files up front, and with ``resume`` skips finished files and removes stale temp files;
  :func:`write_batch` writes lossless 8-bit PNGs atomically (one file at a time);
  :func:`quantize_in_budget` rounds an adversarial batch to 8 bits inside the budget of the 8-bit input.

Images are float N×C×H×W in [0,1] (C = 1 gray or 3 RGB; alpha is dropped on reading) or uint8 N×C×H×W. Messages
name the caller's flags (``source_flag``, ``out_flag``), since these functions serve the commands.
"""
from __future__ import annotations

import fnmatch
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AdvshieldError, DataError
from .folder import IMAGE_EXTS, ImageFolder, group_by_size, header_shape, is_image, read_image, save_png, to_uint8


# -- reading ------------------------------------------------------------------------------------------------
def load_folder(source: str | os.PathLike, verb: str = "attacked",
                size: int | tuple[int, int] | None = None) -> ImageFolder:
    """The :class:`ImageFolder` at ``source`` (every image resized to ``size`` (H, W) when given); decodes every
    image once so a corrupt file fails before any output is written. ``verb`` completes the note about loose
    files skipped beside class folders."""
    folder = ImageFolder(source, size=size)
    for i in range(len(folder)):
        read_image(folder.files[i], folder.channels)
    if folder.classes:
        loose = [p for p in folder.root.iterdir() if p.is_file() and is_image(p)]
        if loose:
            print(f"advshield: note: {len(loose)} image(s) directly in {folder.root} are skipped (the tree has "
                  f"class sub-folders; {', '.join(IMAGE_EXTS)} files inside them are {verb})", file=sys.stderr)
    return folder


def check_image_sizes(folder: ImageFolder, min_size: int | tuple[int, int], why: str = "") -> None:
    """Refuse (one line, from file headers only) the first image smaller than ``min_size`` (an int or (H, W), in
    pixels) in height or width; ``why`` ends the message (e.g. ``" (--attack mi-di-ti needs it)"``)."""
    mh, mw = (min_size, min_size) if isinstance(min_size, int) else min_size
    for i, f in enumerate(folder.files):
        _, h, w = header_shape(f, folder.channels)
        if h < mh or w < mw:
            raise DataError(f"{folder.rel(i)} in {folder.root} is {h}×{w} pixels, smaller than the {mh}×{mw} "
                            f"minimum{why}")


def size_batches(folder: ImageFolder, batch_size: int, indices: Iterable[int] | None = None) -> list[list[int]]:
    """Image indices of ``folder`` (only ``indices`` when given, e.g. an :class:`OutputPlan`'s ``todo``) in batches
    of at most ``batch_size`` images of one shape (C, H, W); groups in order of first appearance, indices
    ascending within a group."""
    keep = None if indices is None else set(indices)
    groups = [g if keep is None else [i for i in g if i in keep] for g in group_by_size(folder)]
    return [g[i:i + batch_size] for g in groups for i in range(0, len(g), batch_size)]


def load_batch(folder: ImageFolder, idx: Sequence[int]) -> torch.Tensor:
    """Images ``idx`` of ``folder`` (all one shape) as uint8 N×C×H×W."""
    return torch.stack([to_uint8(folder.load(i)) for i in idx])


# -- writing ------------------------------------------------------------------------------------------------
def _inside(path: Path, src: Path) -> bool:
    return path == src or src in path.parents


def _check_subdirs(source: Path, out: Path, rels: Iterable[Path], source_flag: str, out_flag: str) -> None:
    """Refuse ``out``, or an existing folder under it that the plan writes into (``out/<rel parent>`` and the
    folders between), when it resolves into ``source`` (a symlink into the source tree)."""
    src = source.resolve()
    if (out.exists() or out.is_symlink()) and _inside(out.resolve(), src):
        raise AdvshieldError(f"{out_flag} {out} leads into {source_flag} {source}; choose a directory outside the "
                             "source tree")
    seen: set[Path] = set()
    for rel in rels:
        d = out
        for part in rel.parent.parts:
            d = d / part
            if d in seen:
                continue
            seen.add(d)
            if (d.exists() or d.is_symlink()) and _inside(d.resolve(), src):
                raise AdvshieldError(f"{out_flag} sub-folder {d} leads into {source_flag} {source} (a symlink); "
                                     "remove it or choose another directory")


def check_dirs(source: Path, out: Path, source_flag: str = "--source-dir", out_flag: str = "--out-dir",
               folder: ImageFolder | None = None) -> None:
    """Refuse an out-dir equal to or inside the source dir (also through a symlink), or one that is a file; with
    ``folder``, also an existing sub-folder of the out-dir that the plan writes into and that is a symlink into the
    source tree. Flags are named in messages."""
    source, out = Path(source), Path(out)
    src, dst = source.resolve(), out.resolve()
    if _inside(dst, src):
        how = "the same as" if dst == src else "inside"
        link = f" (through a symlink: it resolves to {dst})" if Path(os.path.abspath(out)) != dst else ""
        raise AdvshieldError(f"{out_flag} {out} is {how} {source_flag} {source}{link}; choose a directory outside "
                             "the source tree")
    if out.exists() and not out.is_dir():
        raise AdvshieldError(f"{out_flag} {out} exists and is not a directory")
    if folder is not None:
        _check_subdirs(source, out, (folder.rel(i) for i in range(len(folder))), source_flag, out_flag)


@dataclass
class OutputPlan:
    """``targets[i]``: the PNG image ``i`` is written to; ``todo``: indices still to write (all without resume);
    ``removed``: stale temp files that were deleted."""

    targets: list[Path]
    todo: list[int]
    removed: list[Path]

    @property
    def done(self) -> int:
        """Targets already finished (skipped by a resumed run)."""
        return len(self.targets) - len(self.todo)


def _stale_temps(targets: Sequence[Path]) -> list[Path]:
    """Hidden temp files that :func:`advshield.utils.atomic_path` leaves when a write of one of ``targets`` was
    interrupted: ``.NAME.<random>.tmp<suffix>`` beside the target."""
    by_dir: dict[Path, set[str]] = {}
    for t in targets:
        by_dir.setdefault(t.parent, set()).add(t.name)
    out = []
    for d, names in by_dir.items():
        if not d.is_dir():
            continue
        for entry in d.iterdir():
            n = entry.name
            if n.startswith(".") and ".tmp" in n and entry.is_file() and not entry.is_symlink() and any(
                    fnmatch.fnmatchcase(n, f".{_escape(name)}.*.tmp*") for name in names):
                out.append(entry)
    return sorted(out)


def _escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def plan_outputs(folder: ImageFolder, out: Path, resume: bool = False, out_flag: str = "--out-dir",
                 source_flag: str = "the source tree") -> OutputPlan:
    """``out/<relative path>.png`` per image of ``folder``, checked before anything is written.

    Two inputs mapping to one file are refused, and so is an existing folder on the way that is a symlink into
    the source tree. Without ``resume`` an existing target is an error. With ``resume`` an existing regular file
    is a finished target and is skipped (writes are atomic, so a file that exists is complete); a target that is a
    symlink or a directory is still an error; stale temp files of interrupted writes beside the targets are
    deleted."""
    out = Path(out)
    rels = [folder.rel(i) for i in range(len(folder))]
    targets = [out / r.with_suffix(".png") for r in rels]
    seen: dict[Path, int] = {}
    todo = []
    for i, t in enumerate(targets):
        if t in seen:
            raise AdvshieldError(f"{folder.rel(seen[t])} and {folder.rel(i)} would both be written to {t}")
        seen[t] = i
    _check_subdirs(folder.root, out, rels, source_flag, out_flag)
    for i, t in enumerate(targets):
        if not (t.exists() or t.is_symlink()):
            todo.append(i)
        elif not resume:
            raise AdvshieldError(f"{t} already exists; not overwriting it (choose a new {out_flag} or remove it)")
        elif t.is_symlink() or not t.is_file():
            raise AdvshieldError(f"{t} exists and is not a regular file; cannot resume into {out_flag} {out}")
    removed = _stale_temps(targets) if resume else []
    for p in removed:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DataError(f"cannot remove stale temp file {p}: {e.strerror or e}") from None
    return OutputPlan(targets, todo, removed)


def write_batch(images: torch.Tensor, idx: Sequence[int], targets: Sequence[Path]) -> None:
    """Write ``images`` (N×C×H×W, uint8 or float in [0,1]; C = 1 → "L", 3 → "RGB") to ``targets[i]`` for
    ``i`` in ``idx``, each as an 8-bit PNG written atomically."""
    for i, img in zip(idx, images):
        save_png(img, targets[i])


def quantize_in_budget(x_adv: torch.Tensor, x8: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Round ``x_adv`` (N×C×H×W in [0,1]) to uint8 and pull it back into the ``eps`` ball around the uint8 input
    ``x8``: L∞ clamps each value to ``x8 ± floor(eps·255)``; L2 scales the integer perturbation of an image that
    rounding pushed past ``eps`` and truncates it toward zero (so its norm can only shrink)."""
    base = x8.to(torch.int32)
    d = to_uint8(x_adv.cpu()).to(torch.int32) - base
    if norm == "linf":
        e = math.floor(eps * 255 + 1e-6)
        d = d.clamp(-e, e)
    else:
        n = d.flatten(1).float().norm(dim=1).view(-1, 1, 1, 1) / 255
        over = n > eps
        if over.any():
            scaled = torch.trunc(d.double() * (eps / n.double().clamp_min(1e-12)))
            d = torch.where(over, scaled.to(torch.int32), d)
    return (base + d).clamp(0, 255).to(torch.uint8)


__all__ = ["OutputPlan", "check_dirs", "check_image_sizes", "load_batch", "load_folder", "plan_outputs",
           "quantize_in_budget", "size_batches", "write_batch"]
