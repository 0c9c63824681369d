"""torch.distributed for the trainer: one process per device under ``torchrun``.

``torchrun --nproc_per_node=N -m model_runtime.training --config FILE.json`` starts N copies of
the trainer with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
set; :func:`init_distributed` joins them into one process group (gloo on CPU, nccl on CUDA) and
the trainer wraps its model in ``DistributedDataParallel``. Started without torchrun, it is a
one-process run and nothing here touches ``torch.distributed``.

Each global micro-batch is split between the ranks (``data.shard``); gradients are averaged by
DDP and the loss is normalised by the token count of the whole global batch (see
``trainer.Trainer``), so N processes take the same optimizer steps as one process would on the
same global batch, up to float rounding of the sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the progress bar."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment names a rank, a world size and a rendezvous address."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` ->
    ``cuda:<local_rank>``; anything else as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the torchrun process group if launched by torchrun, else a one-process context.

    The backend is nccl for CUDA devices, gloo for CPU. Call :func:`shutdown` at the end.
    """
    if not launched_by_torchrun():
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if resolved.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=resolved
    )


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (no-op for a one-process run)."""
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` in DistributedDataParallel for a distributed run, as is otherwise."""
    if not context.is_distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise sum of ``values`` over all ranks (a copy; the input is left alone)."""
    total = values.detach().clone().to(context.device)
    if context.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op for a one-process run)."""
    if context.is_distributed:
        if context.device.type == "cuda":
            dist.barrier(device_ids=[context.device.index or 0])
        else:
            dist.barrier()


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=context.device)
    dist.broadcast(value, src=0)
    return bool(value.item())
