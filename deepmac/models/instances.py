"""Ground-truth instances of a batch, flattened for the mask branch, with their mask targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deepmac.structures.masks import crop_mask_targets


@dataclass
class TrainingInstances:
    """The instances of a batch in one flat list.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy in pixels of the padded batch.
        batch_index: ``(N,)`` int64 image of each instance.
        has_mask: ``(N,)`` bool, mask supervision available.
        mask_targets: ``(N, S, S)`` float32 soft targets (zeros where ``has_mask`` is False).
    """

    boxes: Tensor
    batch_index: Tensor
    has_mask: Tensor
    mask_targets: Tensor


def gather_training_instances(
    targets: Sequence[dict[str, Any]],
    *,
    mask_size: int,
    max_instances: int = 100,
    generator: torch.Generator | None = None,
) -> TrainingInstances:
    """Flatten per-image targets into ``TrainingInstances``.

    An image with more than ``max_instances`` instances keeps a random subset (the official
    configs cap at ``max_number_of_boxes: 100``); the draw uses ``generator`` or the global RNG,
    which the engine checkpoints, so resumed runs draw the same subsets.

    Args:
        targets: per image, ``boxes`` (n, 4), ``gt_masks`` (n, H, W) bool, ``has_mask`` (n,).
        mask_size: ``S``.
        max_instances: cap per image.
    """
    boxes, batch_index, has_mask, mask_targets = [], [], [], []
    for image, target in enumerate(targets):
        count = target["boxes"].shape[0]
        keep = torch.arange(count)
        if count > max_instances:
            keep = torch.randperm(count, generator=generator)[:max_instances].sort().values
        image_boxes = target["boxes"][keep].float()
        image_has_mask = target["has_mask"][keep].bool()
        crops = torch.zeros(len(keep), mask_size, mask_size)
        if image_has_mask.any():
            # Only supervised instances need their (costly, full-resolution) mask cropped.
            (sel,) = torch.nonzero(image_has_mask, as_tuple=True)
            crops[sel] = crop_mask_targets(
                target["gt_masks"][keep][sel], image_boxes[sel], mask_size
            )
        boxes.append(image_boxes)
        batch_index.append(torch.full((len(keep),), image, dtype=torch.long))
        has_mask.append(image_has_mask)
        mask_targets.append(crops)
    if not targets:
        raise ValueError("gather_training_instances needs at least one target")
    return TrainingInstances(
        boxes=torch.cat(boxes),
        batch_index=torch.cat(batch_index),
        has_mask=torch.cat(has_mask),
        mask_targets=torch.cat(mask_targets),
    )
