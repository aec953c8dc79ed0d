"""Running under ``torchrun``: the process group, this process's rank and the world size, which batches a rank
owns, gathering per-rank results, and the data-parallel pieces the trainers need (a rank's rows of a global batch,
a differentiable global mean, batch norm over the global batch, gradient averaging). Without torchrun (or with one
process) everything is the identity.

Evaluation shards by batch: global batch ``b`` belongs to rank ``b % world``. Every random choice of a batch
(attack seeds, defense noise, EOT draws) is seeded from the run seed and the batch's global start index, so the
per-sample results are identical for 1 and N processes given the same batch size. Training shards each global
batch by rows (:func:`rows`); random draws are made for the global batch and sliced (:func:`global_like`)."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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


def comm_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU under NCCL, else the CPU."""
    if world()[1] > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world()[1] > 1:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if world()[1] == 1:
        return obj
    box = [_to_cpu(obj)]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rows(n: int) -> slice:
    """This rank's rows of a global batch of ``n``: consecutive parts, as ``torch.tensor_split`` cuts them (the
    first ``n % world`` ranks take one row more)."""
    rank, size = world()
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (1 if rank < extra else 0))


def global_like(x: torch.Tensor, draw: Any, total: tuple[int, int] | None) -> torch.Tensor:
    """``draw(shape)`` for the global batch, this shard's rows returned. ``total``: (offset of ``x``'s first row,
    global row count), or None when ``x`` is the whole batch. Drawing the whole batch on every rank consumes the
    random generator exactly as one process does, so 1 and N processes see the same numbers."""
    if total is None:
        return draw(tuple(x.shape))
    lo, n = total
    return draw((n, *x.shape[1:]))[lo : lo + len(x)]


class _Sum(torch.autograd.Function):
    """All-reduce sum whose backward all-reduces the incoming gradient (the adjoint of a sum over ranks)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        g = g.clone()
        dist.all_reduce(g)
        return g


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``t`` over the ranks (``t`` itself with one process)."""
    return _Sum.apply(t) if world()[1] > 1 else t


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Differentiable mean of all elements of ``t`` over every rank's shard (equal to ``t.mean()`` of the global
    batch; shards may differ in size)."""
    if world()[1] == 1:
        return t.mean()
    s = all_sum(torch.stack([t.sum(), torch.tensor(float(t.numel()), device=t.device, dtype=t.dtype)]))
    return s[0] / s[1]


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch (summed over ranks with a
    differentiable all-reduce), so N processes normalise exactly as one process with the whole batch does.
    Works on CPU (gloo), where torch's SyncBatchNorm refuses to run. Same state dict as BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        c = x.shape[1]
        n_local = torch.tensor([x.numel() / c], device=x.device, dtype=x.dtype)
        stats = all_sum(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n_local]))
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c : 2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp_min(1))
                self.num_batches_tracked.add_(1)
        shape = (1, c, 1, 1)
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm2d inside ``module`` a :class:`GlobalBatchNorm`, in place: the class is swapped, so the
    parameters and buffers stay the same objects (an optimiser built before keeps working)."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm
    return module


def average_gradients(params: Any) -> None:
    """Replace each parameter's gradient by its mean over the ranks (what DDP does, by hand: for a module called
    several times before one backward)."""
    size = world()[1]
    if size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(size)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Every rank's float values averaged (same keys on every rank)."""
    size = world()[1]
    if size == 1 or not values:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return {k: float(v) / size for k, v in zip(values, t.tolist())}
