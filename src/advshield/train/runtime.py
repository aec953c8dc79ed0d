"""What every trainer does before and around its steps under torchrun: pick the device and join the process group,
check that a batch splits over the ranks, silence the other ranks' log, wrap a net for data-parallel training, and
mixed precision (autocast and fp16 loss scaling on CUDA only)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..errors import AdvshieldError
from ..utils import pick_device


def quiet(_: str) -> None:
    """The log of ranks other than 0."""


def start(cfg: Any, log: Callable[[str], None], split: bool = True
          ) -> tuple[torch.device, int, Callable[[str], None]]:
    """(device, process count, log) for a run of ``cfg`` (fields ``threads``, ``device``, ``amp``, and with
    ``split`` ``batch_size``/``accum``, which must split over processes × accumulation parts). Under torchrun the
    device is this rank's GPU and ranks other than 0 get a silent log."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = distributed.local_device(pick_device(cfg.device))
    _, size = distributed.init(device)
    if split and cfg.batch_size % (size * cfg.accum):
        raise AdvshieldError(f"batch size {cfg.batch_size} does not split into {size} process(es) × {cfg.accum} "
                             "accumulation steps; pick a multiple of their product")
    if not distributed.is_main():
        log = quiet
    if cfg.amp and device.type != "cuda":
        log(f"note: --amp {cfg.amp} applies on CUDA only; training in float32 on {device.type}")
    return device, size, log


def data_parallel(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` itself in one process; under torchrun its batch norms switched to global-batch statistics (in
    place) and the net wrapped in DistributedDataParallel (call the wrapper, keep ``net`` for its state)."""
    if distributed.world()[1] == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    distributed.global_batchnorm(net)
    return DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 / float16 autocast on CUDA when ``amp`` asks for it; nothing otherwise."""
    if amp in ("bf16", "fp16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    return contextlib.nullcontext()


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA; a pass-through scaler otherwise."""
    return torch.amp.GradScaler("cuda", enabled=amp == "fp16" and device.type == "cuda")


def no_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for every accumulation part but the ``last``; nothing in one process."""
    return contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
