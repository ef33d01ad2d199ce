"""Training engine: model-agnostic loop, LR schedule, atomic checkpoints, torchrun helpers.

The engine imports no model, dataset or config module; it relies only on the
``model(images, targets) -> outputs`` / ``criterion(outputs, targets) -> {"loss_*": scalar}``
protocol (STYLE §3.4, §3.7).
"""

from __future__ import annotations

from deepmac.engine.checkpoint import (
    CheckpointError,
    atomic_write,
    get_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from deepmac.engine.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    wrap_ddp,
)
from deepmac.engine.metrics import MetricsLog, read_metrics, setup_logging, write_json_atomic
from deepmac.engine.schedule import WarmupCosineSchedule, build_warmup_cosine
from deepmac.engine.train import (
    LoaderCursor,
    ResumeState,
    default_forward_step,
    move_to_device,
    resume_from,
    train,
)

__all__ = [
    "CheckpointError",
    "LoaderCursor",
    "MetricsLog",
    "ResumeState",
    "WarmupCosineSchedule",
    "all_gather_object",
    "all_reduce_mean",
    "atomic_write",
    "barrier",
    "build_warmup_cosine",
    "cleanup",
    "default_forward_step",
    "get_rank",
    "get_rng_state",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "load_checkpoint",
    "move_to_device",
    "read_metrics",
    "restore_rng_state",
    "resume_from",
    "save_checkpoint",
    "setup_logging",
    "train",
    "unwrap_model",
    "wrap_ddp",
    "write_json_atomic",
]
