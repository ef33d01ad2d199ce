"""Ground-truth instances of a batch, flattened for the mask branch, with their mask targets.

Which ground-truth boxes of an image go through the mask head in training is decided once, by
``select_mask_instances``, for every model type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deepmac.structures.masks import crop_mask_targets

#: ``train.mask_head_instances`` values: every GT box through the head (the official model, so
#: that BatchNorm statistics see every class) or only the mask-supervised ones.
MASK_HEAD_INSTANCES = ("all", "supervised")


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


def check_mask_head_instances(mode: str) -> str:
    if mode not in MASK_HEAD_INSTANCES:
        raise ValueError(
            f"train.mask_head_instances must be one of {', '.join(MASK_HEAD_INSTANCES)}, "
            f"got {mode!r}"
        )
    return mode


def select_mask_instances(
    has_mask: Tensor,
    max_instances: int,
    mode: str = "all",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices ``(K,)`` int64 (ascending, on ``has_mask``'s device) of the instances of one
    image that go through the mask head in training.

    ``mode="supervised"`` keeps only instances with a mask: the head's forward and backward
    then cost only what the loss uses, and its BatchNorm statistics come from the supervised
    classes' crops alone (``"all"``, the official behaviour, normalises with every class).
    Above ``max_instances`` (official ``max_number_of_boxes``, 100) a random subset is kept,
    supervised instances first, so the cap never drops a mask while it keeps a box without one.
    The draw uses ``generator`` or the global RNG, which the engine checkpoints, so resumed runs
    draw the same subsets.

    Args:
        has_mask: ``(n,)`` bool.
        max_instances: cap per image.
        mode: one of ``MASK_HEAD_INSTANCES``.
    """
    check_mask_head_instances(mode)
    device = has_mask.device
    has_mask = has_mask.bool()
    supervised = torch.nonzero(has_mask).flatten()
    others = torch.nonzero(~has_mask).flatten() if mode == "all" else supervised[:0]
    if len(supervised) + len(others) <= max_instances:
        keep = torch.cat([supervised, others])
    else:
        # Random order within each group (drawn on the CPU: the same draw on every device).
        order_s = torch.randperm(len(supervised), generator=generator, device="cpu").to(device)
        order_o = torch.randperm(len(others), generator=generator, device="cpu").to(device)
        keep = torch.cat([supervised[order_s], others[order_o]])[:max_instances]
    return keep.sort().values


def gather_training_instances(
    targets: Sequence[dict[str, Any]],
    *,
    mask_size: int,
    max_instances: int = 100,
    mode: str = "all",
    generator: torch.Generator | None = None,
) -> TrainingInstances:
    """Flatten per-image targets into ``TrainingInstances`` on the targets' device.

    Args:
        targets: per image, ``boxes`` (n, 4), ``gt_masks`` (n, H, W) bool, ``has_mask`` (n,).
        mask_size: ``S``.
        max_instances: cap per image (see ``select_mask_instances``).
        mode: ``"all"`` or ``"supervised"`` (see ``select_mask_instances``).
    """
    if not targets:
        raise ValueError("gather_training_instances needs at least one target")
    boxes, batch_index, has_mask, mask_targets = [], [], [], []
    for image, target in enumerate(targets):
        keep = select_mask_instances(target["has_mask"], max_instances, mode, generator)
        image_boxes = target["boxes"][keep].float()
        image_has_mask = target["has_mask"][keep].bool()
        crops = image_boxes.new_zeros(len(keep), mask_size, mask_size)
        if image_has_mask.any():
            # Only supervised instances need their (costly, full-resolution) mask cropped.
            (sel,) = torch.nonzero(image_has_mask, as_tuple=True)
            crops[sel] = crop_mask_targets(
                target["gt_masks"][keep[sel]], image_boxes[sel], mask_size
            )
        boxes.append(image_boxes)
        batch_index.append(torch.full_like(keep, image))
        has_mask.append(image_has_mask)
        mask_targets.append(crops)
    return TrainingInstances(
        boxes=torch.cat(boxes),
        batch_index=torch.cat(batch_index),
        has_mask=torch.cat(has_mask),
        mask_targets=torch.cat(mask_targets),
    )
