"""Running under ``torchrun``: the process group, this process's rank and the world size, which batches a rank
owns, and gathering per-rank results. Without torchrun (or with one process) everything is the identity.

Sharding is by batch: global batch ``b`` belongs to rank ``b % world``. Every random choice of a batch (attack
seeds, defense noise, EOT draws) is seeded from the run seed and the batch's global start index, so the
per-sample results are identical for 1 and N processes given the same batch size."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo on CPU) when launched
    with several processes and not joined yet; returns (rank, world size)."""
    if launched() and dist.is_available() and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world()


def local_device(device: torch.device) -> torch.device:
    """One GPU per rank: ``cuda`` → ``cuda:LOCAL_RANK`` under torchrun; other devices as given."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def owns(batch: int) -> bool:
    """Whether this rank processes global batch ``batch``."""
    rank, size = world()
    return batch % size == rank


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (on every rank); ``[obj]`` without a process group. Tensors inside are
    moved to the CPU first."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, _to_cpu(obj))
    return out


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes files and prints."""
    return world()[0] == 0
