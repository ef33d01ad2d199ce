"""Deep-MAC's training losses: CenterNet's on every box, the partially supervised mask loss at
the ground-truth boxes the model's sampler picked; both averaged over the backbone stacks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from deepmac.models.centernet import centernet_losses, encode_centernet_targets
from deepmac.models.deepmac.model import DeepMACOutputs
from deepmac.models.losses import sampled_mask_loss
from deepmac.models.mask_branch import MaskBranch

#: Output stride of every Deep-MAC backbone.
STRIDE = 4


class DeepMACCriterion:
    """``criterion(outputs, targets) -> {"loss_center", ..., "loss_mask"}``, the mask loss
    weighted (official 5.0), the CenterNet losses with their own weights.

    Args:
        num_classes: heatmap channels.
        mask_loss_weight: task weight of the mask loss.
    """

    def __init__(self, *, num_classes: int, mask_loss_weight: float) -> None:
        self.num_classes = num_classes
        self.mask_loss_weight = mask_loss_weight

    def __call__(
        self, outputs: DeepMACOutputs, targets: Sequence[dict[str, Any]]
    ) -> dict[str, Tensor]:
        if outputs.instances is None:
            raise ValueError("the criterion needs outputs of model(images, targets=targets)")
        heatmap = outputs.center_heatmap[0]
        height, width = heatmap.shape[-2:]
        centernet_targets = [
            encode_centernet_targets(
                t["boxes"],
                t["labels"],
                num_classes=self.num_classes,
                output_size=(height, width),
                stride=STRIDE,
            )
            for t in targets
        ]
        # Padding is not image: the heatmap loss ignores it (official valid-pixel weights).
        valid = torch.zeros(len(targets), 1, height, width, device=heatmap.device)
        for b, target in enumerate(targets):
            h, w = target["size"]
            valid[b, :, : math.ceil(h / STRIDE), : math.ceil(w / STRIDE)] = 1
        losses = centernet_losses(
            outputs.center_heatmap,
            outputs.box_size,
            outputs.center_offset,
            centernet_targets,
            valid,
        )
        mask_loss = sampled_mask_loss(
            outputs.mask_logits, outputs.instances, targets, MaskBranch.mask_targets
        )
        losses["loss_mask"] = self.mask_loss_weight * mask_loss
        return losses
