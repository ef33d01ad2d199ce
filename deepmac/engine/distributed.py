"""torchrun-only distributed helpers: process-group setup, rank queries, reductions, DDP.

Launch with ``torchrun --nproc_per_node=N ...``; there is no custom launcher. Without torchrun's
environment every helper degrades to single-process behaviour, so the same code runs both ways.
Only rank 0 writes files and logs.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from deepmac.engine.sync_batchnorm import convert_to_distributed_batchnorm

__all__ = [
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, the only process that writes checkpoints, metrics and logs."""
    return get_rank() == 0


def init_distributed(timeout_s: float = 1800.0) -> tuple[int, int, int]:
    """Initialise the default process group from torchrun's environment, if present.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and torchrun's ``MASTER_ADDR`` /
    ``MASTER_PORT`` through the ``env://`` init method). Uses NCCL when CUDA is available, after
    pinning this process to ``cuda:LOCAL_RANK``, and gloo on CPU.

    Args:
        timeout_s: collective timeout.

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` without torchrun.

    Raises:
        ValueError: ``WORLD_SIZE > 1`` but ``RANK`` or ``LOCAL_RANK`` is missing.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    missing = [name for name in ("RANK", "LOCAL_RANK") if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} but {missing} unset: launch with torchrun, which sets "
            "RANK, LOCAL_RANK and WORLD_SIZE"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if is_distributed():
        return rank, world_size, local_rank
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    logger.info("initialised %s process group: rank %d of %d", backend, rank, world_size)
    return rank, world_size, local_rank


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (a new tensor; the input is left as is).

    Not distributed: returns a detached copy, so callers never alias their input.
    """
    out = tensor.detach().clone()
    if is_distributed() and get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Pickle-able ``obj`` from every rank, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for all processes (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group, if one was initialised."""
    if is_distributed():
        dist.destroy_process_group()


def wrap_ddp(
    model: nn.Module, *, sync_batchnorm: bool = True, find_unused_parameters: bool = True
) -> nn.Module:
    """Wrap ``model`` (already on its device) in ``DistributedDataParallel`` when distributed.

    With ``sync_batchnorm``, BatchNorm statistics in training cover the global batch, as the
    paper trains: ``nn.SyncBatchNorm`` on CUDA, ``DistributedBatchNorm2d`` on CPU (gloo, where
    ``nn.SyncBatchNorm`` refuses CPU tensors).

    Args:
        model: the model, moved to ``cuda:LOCAL_RANK`` (CUDA) or left on CPU.
        sync_batchnorm: synchronise BatchNorm statistics across processes.
        find_unused_parameters: passed to DDP; on by default because a batch without boxes
            skips the mask head, whose parameters then get no gradient in that step.

    Returns:
        The DDP-wrapped model, or ``model`` unchanged when not distributed.
    """
    if not is_distributed() or get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if sync_batchnorm:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_to_distributed_batchnorm(model)
        logger.info("BatchNorm statistics synchronised over %d processes", get_world_size())
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
