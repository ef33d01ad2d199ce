"""The training loop: one readable, model-agnostic ``train`` function and exact resume.

The engine only relies on the model/criterion protocol (STYLE §3.4):
``model(images, targets=targets)`` returns raw outputs and ``criterion(outputs, targets)``
returns named, already-weighted scalar losses whose sum is the training loss (every deepmac
family has one: ``ModelFamily.criterion``).

Exact (bit-for-bit) resume. Restoring weights, optimizer, scheduler and RNGs is not enough: the
data order must continue where it stopped. :class:`~deepmac.engine.checkpoint.LoaderCursor`
snapshots, at the start of every epoch, the loader's ``torch.Generator`` states and the global
RNG states, and the checkpoint stores that snapshot with the number of batches consumed in the
epoch. On resume the snapshot is restored, the epoch's iterator is re-created (same shuffle, same
worker seeds) and the consumed batches are drawn again and discarded; then the checkpoint's own
RNG states are restored. Cost: re-loading up to one epoch of batches (data loading only: no
forward or backward). It works for any loader whose randomness comes from its generators,
``set_epoch`` or the global RNGs, without changing how the loader is seeded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from deepmac.engine.checkpoint import (
    LoaderCursor,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from deepmac.engine.distributed import all_reduce_mean, get_world_size, is_main_process
from deepmac.engine.metrics import MetricsLog, write_json_atomic
from deepmac.engine.precision import autocast, run_dtype
from deepmac.engine.progress import TrainProgress

__all__ = [
    "ForwardStep",
    "LoopSettings",
    "ResumeState",
    "default_forward_step",
    "move_to_device",
    "resume_from",
    "train",
]

logger = logging.getLogger(__name__)

ForwardStep = Callable[[nn.Module, Callable[..., Mapping[str, Tensor]], Any], Mapping[str, Tensor]]


def default_forward_step(
    model: nn.Module, criterion: Callable[..., Mapping[str, Tensor]], batch: Any
) -> Mapping[str, Tensor]:
    """``criterion(model(images, targets=targets), targets)`` for a ``(images, targets)`` batch.

    ``images`` may be a ``(B, 3, H, W)`` tensor or an object with a ``.tensor`` attribute (e.g.
    ``deepmac.data.collate.ImageBatch``), whose tensor is passed. Supply your own
    ``forward_step`` for any other batch layout.
    """
    images, targets = batch[0], batch[1]
    images = getattr(images, "tensor", images)
    return criterion(model(images, targets=targets), targets)


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside dicts, lists, tuples, or objects with ``.to``) to ``device``."""
    if isinstance(obj, Tensor) or (hasattr(obj, "to") and not isinstance(obj, type)):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move_to_device(v, device) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):  # namedtuples: left as they are
        return tuple(move_to_device(v, device) for v in obj)
    return obj


def _batch_size(batch: Any) -> int:
    """Images in a ``(images, targets)`` batch, for the images/s figure (0 when unknown)."""
    images = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    images = getattr(images, "tensor", images)
    if isinstance(images, Tensor) and images.dim() > 0:
        return int(images.shape[0])
    try:
        return len(images)
    except TypeError:
        return 0


@dataclass
class ResumeState:
    """What :func:`train` needs to continue a run after :func:`resume_from` loaded the weights.

    Attributes:
        step: optimizer steps already done.
        rng: global RNG states at save time, restored after the data position is replayed.
        loader: :meth:`LoaderCursor.state_dict` at save time (``None`` if not recorded).
        scaler: fp16 ``GradScaler`` state, if any.
    """

    step: int
    rng: dict[str, Any]
    loader: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None


def resume_from(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: Any,
    expected_model_type: str | None = None,
) -> ResumeState:
    """Restore model, optimizer, scheduler and RNGs from a checkpoint written by :func:`train`.

    Args:
        path: checkpoint, e.g. ``out_dir / "last.pt"``.
        model: model built as in the original run (wrapped or not).
        optimizer: optimizer over ``model``'s parameters, built as in the original run.
        scheduler: scheduler over ``optimizer``.
        expected_model_type: checked against the checkpoint's ``model_type``.

    Returns:
        The state to pass as ``train(..., resume=state)``.

    Raises:
        CheckpointError: see :func:`~deepmac.engine.checkpoint.load_checkpoint`; also when the
            weights do not fit ``model`` (one line: the first missing, unexpected and
            differently shaped tensors).
    """
    ckpt = load_checkpoint(path, expected_model_type=expected_model_type)
    load_model_state(model, ckpt["model"], str(path))  # one line when the config differs
    if ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng_state(ckpt["rng"])
    logger.info("resumed from %s at step %d", path, ckpt["step"])
    return ResumeState(
        step=int(ckpt["step"]),
        rng=ckpt["rng"],
        loader=ckpt["extra"].get("loader"),
        scaler=ckpt.get("scaler"),
    )


def _check_losses(losses: Any, step: int) -> dict[str, Tensor]:
    if not isinstance(losses, Mapping) or not losses:
        raise TypeError(
            f"forward_step must return a non-empty dict of scalar loss tensors, got "
            f"{type(losses).__name__} at step {step}"
        )
    if "loss" in losses:  # reserved for the total in logs
        raise TypeError(f"name the loss terms 'loss_*'; 'loss' is the logged total (step {step})")
    for name, value in losses.items():
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"loss {name!r} must be a scalar tensor, got {shape} at step {step}")
    return dict(losses)


@dataclass(frozen=True)
class LoopSettings:
    """How ``train`` steps, logs, evaluates and saves (its keyword arguments of those names).

    Attributes:
        clip_grad_norm: max global gradient L2 norm; ``None`` disables clipping.
        log_every: log to ``metrics.jsonl`` and the progress bar every this many steps (losses
            averaged over the window, and over ranks).
        eval_every: call ``evaluate`` every this many steps; 0 disables it.
        checkpoint_every: save ``last.pt`` every this many steps; 0 saves only at the end.
        amp_dtype: autocast dtype, e.g. ``torch.bfloat16``; ``torch.float16`` also enables a
            ``GradScaler``. ``None`` trains in float32, as does a CPU without kernels of the
            dtype (``deepmac.engine.precision.run_dtype``).
        accumulate_steps: micro-batches whose gradients make one optimizer step (each loss is
            divided by it, so a step equals one batch that many times larger for losses that
            average over the batch).
        progress: show progress on rank 0: a tqdm bar on a terminal, else an INFO log line
            per logging window with step, loss, lr, images/s and ETA
            (``deepmac.engine.progress.TrainProgress``).
        tensorboard: also write every logged record as TensorBoard scalars to
            ``out_dir/tensorboard/`` (needs the ``tensorboard`` package).

    Raises:
        ValueError: a negative period, ``log_every < 1`` or ``accumulate_steps < 1``.
    """

    clip_grad_norm: float | None = None
    log_every: int = 20
    eval_every: int = 0
    checkpoint_every: int = 0
    amp_dtype: torch.dtype | None = None
    accumulate_steps: int = 1
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name, low in (
            ("log_every", 1),
            ("eval_every", 0),
            ("checkpoint_every", 0),
            ("accumulate_steps", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")


def train(
    *,
    model: nn.Module,
    criterion: Callable[..., Mapping[str, Tensor]],
    optimizer: Optimizer,
    scheduler: Any,
    train_loader: Any,
    total_steps: int,
    out_dir: str | Path,
    config: dict[str, Any],
    model_type: str,
    forward_step: ForwardStep | None = None,
    start_step: int = 0,
    resume: ResumeState | None = None,
    evaluate: Callable[[nn.Module, int], Mapping[str, Any]] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train ``model`` for ``total_steps`` optimizer steps in all, cycling over ``train_loader``
    (``(images, targets)`` batches by default; a fixed number per epoch).

    Each step: ``forward_step(model, criterion, batch)`` (default :func:`default_forward_step`;
    the batch already on the model's device) under autocast, a guard against non-finite
    losses, backward, clip, optimizer and scheduler step; then log, ``evaluate(model, step)``
    (eval mode, ``no_grad``, RNG restored after) and checkpoint when their period divides the
    step (``settings``: the fields of ``LoopSettings``). The checkpoint saved after step ``s``
    holds ``step == s``. Rank 0 writes ``config.json`` (``config``), ``metrics.jsonl`` (on
    resume, lines after the resumed step are dropped first) and ``last.pt`` (with
    ``model_type``) in ``out_dir``. ``resume`` (from :func:`resume_from`) continues a run
    bit-for-bit; ``start_step`` numbers a fresh run's first step.

    Returns:
        ``{"step", "losses" (last logged window), "eval" (last results or None), "checkpoint"
        (path of last.pt), "elapsed_s"}``.
    Raises:
        RuntimeError: a NaN or infinite loss (the last good checkpoint is kept). TypeError:
            ``forward_step`` returns no dict of scalar tensors, or the reserved key ``"loss"``.
        ValueError: a negative step count or period, or ``log_every < 1``.
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    out_dir, main = Path(out_dir), is_main_process()
    run = _Run(
        model, criterion, forward_step or default_forward_step, optimizer, scheduler,
        cursor=LoaderCursor(train_loader),
        metrics=MetricsLog(out_dir / "metrics.jsonl", enabled=main),
        device=next(model.parameters()).device,
        loop=LoopSettings(**settings),
        ckpt_path=out_dir / "last.pt",
        main=main,
    )  # fmt: skip
    step = run.restore(resume, start_step)
    if run.loop.tensorboard:
        run.metrics.open_tensorboard(out_dir / "tensorboard", first_step=step + 1)
    if main:
        write_json_atomic(out_dir / "config.json", config)
    try:
        result = _loop(run, step, total_steps, evaluate, config, model_type)
    finally:
        run.metrics.close()
    return result


def _loop(
    run: _Run,
    step: int,
    total_steps: int,
    evaluate: Callable[[nn.Module, int], Mapping[str, Any]] | None,
    config: dict[str, Any],
    model_type: str,
) -> dict[str, Any]:
    """The steps of ``train`` from ``step`` to ``total_steps``; its result."""
    loop = run.loop
    result: dict[str, Any] = {"step": step, "losses": {}, "eval": None, "checkpoint": None}
    window = _LogWindow(time.perf_counter())
    bar = TrainProgress(total=total_steps, initial=step, enabled=loop.progress and run.main)
    run.model.train()
    try:
        while step < total_steps:
            losses, images, grad_norm, lr = run.optimizer_step(step)
            step += 1
            bar.update()
            window.add(losses, images)
            if step % loop.log_every == 0 or step == total_steps:
                result["losses"] = window.mean_losses()
                record = window.record(step, run.cursor.epoch, lr, grad_norm)
                run.metrics.write(record)
                bar.log(step, record["loss"], lr, record["images_per_s"])
            if evaluate is not None and loop.eval_every and step % loop.eval_every == 0:
                result["eval"] = run.evaluate(evaluate, step)
            if (loop.checkpoint_every and step % loop.checkpoint_every == 0) or (
                step == total_steps
            ):
                run.checkpoint(step, config, model_type)
                result["checkpoint"] = str(run.ckpt_path) if run.main else None
    finally:
        bar.close()
    result["step"] = step
    result["elapsed_s"] = time.perf_counter() - window.start_time
    return result


@dataclass
class _LogWindow:
    """Loss sums and images since the last log line: each line reports the window's mean
    losses (already averaged over ranks) and its images/s."""

    start_time: float
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    opened: float | None = None

    def add(self, losses: Mapping[str, float], images: int) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.images += images

    def mean_losses(self) -> dict[str, float]:
        """Every loss logged in the window, averaged over its steps."""
        return {k: v / self.steps for k, v in self.sums.items()}

    def record(self, step: int, epoch: int, lr: float, grad_norm: Tensor | None) -> dict:
        """The ``metrics.jsonl`` line of the window, which then starts anew."""
        now = time.perf_counter()
        opened = self.start_time if self.opened is None else self.opened
        record = {
            "type": "train",
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **self.mean_losses(),
            "images_per_s": self.images / max(now - opened, 1e-9),
            "elapsed_s": now - self.start_time,
        }
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        self.sums, self.steps, self.images, self.opened = {}, 0, 0, now
        return record


@dataclass
class _Run:
    """What one training run's steps share: the model and its optimisation state, the data
    cursor, the metrics log and where checkpoints go."""

    model: nn.Module
    criterion: Callable[..., Mapping[str, Tensor]]
    forward_step: ForwardStep
    optimizer: Optimizer
    scheduler: Any
    cursor: LoaderCursor
    metrics: MetricsLog
    device: torch.device
    loop: LoopSettings
    ckpt_path: Path
    main: bool
    scaler: torch.amp.GradScaler = field(init=False)
    #: the autocast dtype the steps run with (``loop.amp_dtype`` or float32: ``run_dtype``)
    amp_dtype: torch.dtype | None = field(init=False)

    def __post_init__(self) -> None:
        # float32 on a CPU without kernels of the dtype (deepmac.engine.precision)
        self.amp_dtype = run_dtype(self.loop.amp_dtype, self.device)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def restore(self, resume: ResumeState | None, start_step: int) -> int:
        """The step to start from: ``resume``'s, with the data order, RNGs and scaler put
        back and the metrics written after it dropped; else ``start_step``."""
        if resume is None:
            if start_step:
                logger.warning(
                    "start_step=%d without resume: the data order restarts at epoch 0", start_step
                )
            return start_step
        if start_step not in (0, resume.step):
            raise ValueError(f"start_step={start_step} contradicts resume.step={resume.step}")
        if resume.loader is not None:
            self.cursor.load_state_dict(resume.loader)
        else:
            logger.warning("checkpoint has no data-loader position: data order restarts")
        restore_rng_state(resume.rng)  # after the replay, which consumed RNG
        if resume.scaler is not None:
            self.scaler.load_state_dict(resume.scaler)
        self.metrics.truncate_after(resume.step)
        return resume.step

    def optimizer_step(self, step: int) -> tuple[dict[str, float], int, Tensor | None, float]:
        """One update from ``accumulate_steps`` micro-batches: ``(mean losses, images seen
        on all ranks, gradient norm before clipping or None, the lr the update used)``."""
        self.optimizer.zero_grad(set_to_none=True)
        named: dict[str, float] = {}
        images = 0
        for micro in range(self.loop.accumulate_steps):
            batch = move_to_device(self.cursor.next(), self.device)
            # DDP all-reduces gradients only on the last micro-batch of a step.
            last = micro == self.loop.accumulate_steps - 1
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                for name, value in self._micro_batch(batch, step).items():
                    named[name] = named.get(name, 0.0) + value / self.loop.accumulate_steps
            images += _batch_size(batch) * get_world_size()
        grad_norm = None
        if self.loop.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update used
        self.scheduler.step()
        return named, images, grad_norm, lr

    def _micro_batch(self, batch: Any, step: int) -> dict[str, float]:
        """Forward and backward of one micro-batch; its losses averaged over ranks.

        Raises:
            RuntimeError: a loss is NaN or infinite (logged; the last checkpoint is kept).
        """
        with autocast(self.device, self.amp_dtype):
            losses = _check_losses(self.forward_step(self.model, self.criterion, batch), step + 1)
        loss = sum(losses.values())
        # One small all-reduce gives every rank the same values, so they agree on stopping.
        values = all_reduce_mean(
            torch.stack(
                [loss.detach().float()] + [v.detach().float().reshape(()) for v in losses.values()]
            )
        )
        named = dict(zip(["loss", *losses], values.tolist(), strict=True))
        if not all(math.isfinite(v) for v in named.values()):
            self.metrics.write({"type": "nonfinite", "step": step + 1, **named})
            saved = (
                f"last good checkpoint: {self.ckpt_path}"
                if self.ckpt_path.is_file()
                else "none saved"
            )
            raise RuntimeError(f"non-finite loss at step {step + 1}: {named}; stopping ({saved})")
        # The mean over micro-batches, so the step's gradient is that of one batch
        # accumulate_steps times larger.
        self.scaler.scale(loss / self.loop.accumulate_steps).backward()
        return named

    def evaluate(self, evaluate: Callable[[nn.Module, int], Mapping[str, Any]], step: int) -> dict:
        """``evaluate(model, step)`` in eval mode, logged. Evaluation must not shift training
        randomness, or eval_every would change the trained weights: the RNGs are saved and
        restored around it."""
        rng = get_rng_state()
        self.model.eval()
        with torch.no_grad():
            result = dict(evaluate(self.model, step))
        self.model.train()
        restore_rng_state(rng)
        self.metrics.write({"type": "eval", "step": step, **result})
        logger.info("step %d eval: %s", step, result)
        return result

    def checkpoint(self, step: int, config: dict[str, Any], model_type: str) -> None:
        """``last.pt`` after ``step`` (rank 0 only), with the data-loader position."""
        if self.main:
            save_checkpoint(
                self.ckpt_path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                step=step,
                config=config,
                model_type=model_type,
                scaler=self.scaler if self.scaler.is_enabled() else None,
                extra={"loader": self.cursor.state_dict()},
            )
