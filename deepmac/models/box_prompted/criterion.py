"""The box-prompted model's training loss: the partially supervised mask loss at the
ground-truth boxes the model's sampler picked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from deepmac.models.box_prompted.model import BoxPromptedOutputs
from deepmac.models.losses import sampled_mask_loss
from deepmac.models.mask_branch import MaskBranch


class BoxPromptedCriterion:
    """``criterion(outputs, targets) -> {"loss_mask": weighted scalar}`` (the engine's
    criterion protocol).

    Args:
        mask_loss_weight: task weight of the mask loss (official 5.0).
    """

    def __init__(self, *, mask_loss_weight: float) -> None:
        self.mask_loss_weight = mask_loss_weight

    def __call__(
        self, outputs: BoxPromptedOutputs, targets: Sequence[dict[str, Any]]
    ) -> dict[str, Tensor]:
        if outputs.instances is None:
            raise ValueError("the criterion needs outputs of model(images, targets=targets)")
        loss = sampled_mask_loss(
            outputs.mask_logits, outputs.instances, targets, MaskBranch.mask_targets
        )
        return {"loss_mask": self.mask_loss_weight * loss}
