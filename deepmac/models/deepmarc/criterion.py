"""Deep-MARC's training losses: the detector's (RPN and box head, computed where anchors and
RoIs are matched) and the partially supervised mask loss at the boxes the mask head ran on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from deepmac.models.deepmarc.mask_head import RoIMaskBranch
from deepmac.models.deepmarc.model import DeepMARCOutputs
from deepmac.models.losses import sampled_mask_loss


class DeepMARCCriterion:
    """``criterion(outputs, targets) -> {"loss_rpn_cls", "loss_rpn_loc", "loss_cls",
    "loss_box_reg", "loss_mask"}``; the mask loss gets its task weight (1.0 in Mask R-CNN,
    ``train.mask_loss_weight``).

    Args:
        mask_loss_weight: task weight of the mask loss.
    """

    def __init__(self, *, mask_loss_weight: float) -> None:
        self.mask_loss_weight = mask_loss_weight

    def __call__(
        self, outputs: DeepMARCOutputs, targets: Sequence[dict[str, Any]]
    ) -> dict[str, Tensor]:
        if outputs.instances is None:
            raise ValueError("the criterion needs outputs of a model in training mode")
        losses = dict(outputs.losses)
        mask_loss = sampled_mask_loss(
            outputs.mask_logits, outputs.instances, targets, RoIMaskBranch.mask_targets
        )
        losses["loss_mask"] = self.mask_loss_weight * mask_loss
        return losses
