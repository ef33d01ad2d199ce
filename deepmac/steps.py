"""Training forward steps: one batch in, named weighted losses out (the engine's
``forward_step``). One per model type."""

from __future__ import annotations

import math

import torch

from deepmac.config import ExperimentConfig
from deepmac.models.centernet import centernet_losses, encode_centernet_targets
from deepmac.models.instances import (
    TrainingInstances,
    check_mask_head_instances,
    gather_training_instances,
)
from deepmac.models.losses import deepmac_mask_loss


class BoxPromptedStep:
    """One training forward pass: GT boxes of the batch through the model, weighted mask loss.

    Used as the engine's ``forward_step(model, criterion, batch)``; ``criterion`` is unused
    because the loss needs the flattened instances built here.
    """

    def __init__(
        self,
        *,
        mask_size: int,
        max_instances: int,
        mask_loss_weight: float,
        mask_head_instances: str = "all",
    ) -> None:
        self.mask_size = mask_size
        self.max_instances = max_instances
        self.mask_loss_weight = mask_loss_weight
        self.mask_head_instances = check_mask_head_instances(mask_head_instances)

    def instances(self, targets) -> TrainingInstances:
        """The GT instances of the batch that go through the mask head."""
        return gather_training_instances(
            targets,
            mask_size=self.mask_size,
            max_instances=self.max_instances,
            mode=self.mask_head_instances,
        )

    def __call__(self, model, criterion, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        instances = self.instances(targets)
        outputs = model(images.tensor, instances.boxes, instances.batch_index)
        loss = deepmac_mask_loss(outputs.mask_logits, instances.mask_targets, instances.has_mask)
        return {"loss_mask": self.mask_loss_weight * loss}


class DeepMACStep(BoxPromptedStep):
    """One Deep-MAC training pass: CenterNet losses on every box, mask loss on the
    ground-truth boxes (weighted by ``has_mask``), both averaged over the backbone stacks."""

    def __init__(self, *, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def __call__(self, model, criterion, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        stride = 4  # every backbone's output stride
        height, width = images.tensor.shape[-2] // stride, images.tensor.shape[-1] // stride
        centernet_targets = [
            encode_centernet_targets(
                t["boxes"],
                t["labels"],
                num_classes=self.num_classes,
                output_size=(height, width),
                stride=stride,
            )
            for t in targets
        ]
        # Padding is not image: the heatmap loss ignores it (official valid-pixel weights).
        valid = torch.zeros(len(targets), 1, height, width, device=images.tensor.device)
        for b, (h, w) in enumerate(images.image_sizes):
            valid[b, :, : math.ceil(h / stride), : math.ceil(w / stride)] = 1
        instances = self.instances(targets)
        outputs = model(images.tensor, instances.boxes, instances.batch_index)
        losses = centernet_losses(
            outputs.center_heatmap,
            outputs.box_size,
            outputs.center_offset,
            centernet_targets,
            valid,
        )
        mask_loss = deepmac_mask_loss(
            outputs.mask_logits, instances.mask_targets, instances.has_mask
        )
        losses["loss_mask"] = self.mask_loss_weight * mask_loss
        return losses


class DeepMARCStep:
    """One Deep-MARC training pass: the model computes its RPN, box and mask losses from the
    targets (Mask R-CNN samples anchors and RoIs inside); the mask loss gets its task weight
    (1.0 in Mask R-CNN; ``train.mask_loss_weight``)."""

    def __init__(
        self, *, max_instances: int, mask_loss_weight: float, mask_head_instances: str = "all"
    ) -> None:
        self.max_instances = max_instances
        self.mask_loss_weight = mask_loss_weight
        self.mask_head_instances = check_mask_head_instances(mask_head_instances)

    def __call__(self, model, criterion, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        out = model(
            images.tensor,
            targets,
            images.image_sizes,
            max_mask_instances=self.max_instances,
            mask_head_instances=self.mask_head_instances,
        )
        losses = dict(out.losses)
        losses["loss_mask"] = self.mask_loss_weight * losses["loss_mask"]
        return losses


def training_step(cfg: ExperimentConfig) -> BoxPromptedStep | DeepMARCStep:
    """The engine's ``forward_step`` for the model type of ``cfg``."""
    common = dict(
        mask_size=cfg.model.mask_size,
        max_instances=cfg.data.max_instances,
        mask_loss_weight=cfg.train.mask_loss_weight,
        mask_head_instances=cfg.train.mask_head_instances,
    )
    if cfg.model.type == "deepmarc":
        common.pop("mask_size")
        return DeepMARCStep(**common)
    if cfg.model.type == "deepmac":
        return DeepMACStep(num_classes=cfg.model.num_classes, **common)
    return BoxPromptedStep(**common)
