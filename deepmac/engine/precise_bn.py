"""Precise BatchNorm statistics: after training, every BatchNorm's running mean and variance
recomputed as the average over many training batches (no weight changes).

Why: the official hourglass heads use Keras BN momentum 0.1 (PyTorch 0.9), so their running
statistics are almost those of the last training batch alone. With the official batches (128+
images, thousands of crops) one batch is the population; with 4 images and about 16
mask-supervised crops it is one noisy sample, and the eval-mode model depends on which batch
came last: one Hourglass-20 run of Table 4 scored 0.596 mIoU with its running statistics and
0.690 with statistics recomputed over 200 batches (docs/results.md). The remedy is
the PreciseBN of detectron2 and of Wu & Johnson, "Rethinking 'Batch' in BatchNorm" (2021):
average the batch statistics of N batches, drawn as in training. ``torch.optim.swa_utils.
update_bn`` does the same for models called on one input tensor; the models here need their
targets (the boxes the mask head runs on), so the forward is the caller's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deepmac.engine.precision import autocast

__all__ = ["recompute_batch_norm_statistics"]


def recompute_batch_norm_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any],
    *,
    num_batches: int,
    amp_dtype: torch.dtype | None = None,
) -> int:
    """Reset the running statistics of every ``BatchNorm`` of ``model`` and set them to the
    mean of the batch statistics of ``num_batches`` batches of ``batches`` (cycled when it is
    shorter), each run through ``forward(model, batch)`` in train mode without gradients.

    Frozen BatchNorms (``FrozenBatchNorm2d``: no running update) are left alone; momentum and
    train/eval mode are restored afterwards.

    Returns:
        The number of BatchNorm modules recomputed (0: nothing to do, no batch run).
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or num_batches < 1:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches seen since the reset
    device = next(model.parameters()).device
    model.train()
    try:
        with torch.no_grad(), autocast(device, amp_dtype):
            for batch in itertools.islice(_epochs(batches), num_batches):
                forward(model, batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)


def _epochs(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches`` over and over, iterated anew each time (a loader reshuffles; unlike
    ``itertools.cycle``, nothing is kept in memory)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return
