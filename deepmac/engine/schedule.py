"""Learning-rate schedule: linear warm-up then cosine decay to zero.

Matches the TF Object Detection API ``learning_schedules.cosine_decay_with_warmup`` used by the
Deep-MAC configs (base 1e-3, warm-up 2.5e-4 over 5000 steps, 50000 steps in all).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosineSchedule", "build_warmup_cosine"]


class WarmupCosineSchedule:
    """Multiplicative LR factor for ``LambdaLR``: ``lr(step) / base_lr``.

    ``lr(step)`` follows the OD API formula:

    - ``step < warmup_steps``: ``warmup_lr + (base_lr - warmup_lr) * step / warmup_steps``;
    - otherwise: ``0.5 * base_lr * (1 + cos(pi * (step - warmup_steps) / (total_steps -
      warmup_steps)))``, which reaches 0 at ``total_steps``;
    - ``step > total_steps``: 0 (the OD API clamps there too).

    It is a plain callable object (not a lambda) so ``LambdaLR.state_dict`` stores its
    attributes and ``load_state_dict`` restores them.

    Args:
        base_lr: peak learning rate, reached at the end of warm-up.
        total_steps: step at which the learning rate reaches 0.
        warmup_steps: length of the linear warm-up; 0 disables it.
        warmup_lr: learning rate at step 0 of the warm-up.

    Raises:
        ValueError: non-positive ``base_lr`` or ``total_steps``, negative ``warmup_steps`` or
            ``warmup_lr``, ``warmup_steps > total_steps``, or ``warmup_lr > base_lr`` (the OD API
            refuses a decreasing warm-up too).
    """

    def __init__(
        self, *, base_lr: float, total_steps: int, warmup_steps: int, warmup_lr: float
    ) -> None:
        if base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
            )
        if not 0 <= warmup_lr <= base_lr:
            raise ValueError(f"warmup_lr must be in [0, base_lr={base_lr}], got {warmup_lr}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)

    def lr_at(self, step: int) -> float:
        """Absolute learning rate used by the optimizer step numbered ``step`` (0-based)."""
        if step > self.total_steps:
            return 0.0
        if step < self.warmup_steps:
            slope = (self.base_lr - self.warmup_lr) / self.warmup_steps
            return self.warmup_lr + slope * step
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps == 0:  # all warm-up: the OD API formula would divide by zero here
            return 0.0
        progress = (step - self.warmup_steps) / decay_steps
        return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.lr_at(step) / self.base_lr

    def __repr__(self) -> str:
        return (
            f"WarmupCosineSchedule(base_lr={self.base_lr}, total_steps={self.total_steps}, "
            f"warmup_steps={self.warmup_steps}, warmup_lr={self.warmup_lr})"
        )


def build_warmup_cosine(
    optimizer: Optimizer,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    warmup_lr: float,
) -> LambdaLR:
    """``LambdaLR`` applying :class:`WarmupCosineSchedule`; call ``.step()`` after each update.

    Every parameter group's learning rate is set to ``base_lr`` first, so the group learning
    rates follow the schedule exactly whatever ``lr`` the optimizer was built with. (Groups
    meant to have their own multiplier should scale their gradients or use their own scheduler.)

    Args:
        optimizer: optimizer whose groups to schedule.
        base_lr: peak learning rate.
        total_steps: step at which the learning rate reaches 0.
        warmup_steps: length of the linear warm-up.
        warmup_lr: learning rate at step 0.

    Returns:
        The scheduler; right after construction the groups hold ``lr_at(0) == warmup_lr``.

    Example:
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        >>> sched = build_warmup_cosine(opt, base_lr=1e-3, total_steps=50_000,
        ...                             warmup_steps=5_000, warmup_lr=2.5e-4)
    """
    schedule = WarmupCosineSchedule(
        base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps, warmup_lr=warmup_lr
    )
    for group in optimizer.param_groups:
        # LambdaLR multiplies each group's ``initial_lr`` by the factor; pin it to base_lr so the
        # factor lr_at(step) / base_lr yields the OD API value.
        group["lr"] = schedule.base_lr
        group["initial_lr"] = schedule.base_lr
    return LambdaLR(optimizer, lr_lambda=schedule)
