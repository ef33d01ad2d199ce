"""Which ground-truth instances of a batch go through the mask branch in training.

Every family trains its mask branch on ground-truth boxes (Deep-MARC also on proposals, as the
baseline of Tables 1-2); ``InstanceSampler`` picks them, once, the same way for all: every box
or only the mask-supervised ones, capped per image with supervised instances kept first. The
mask targets at the picked boxes are the criterion's business (``deepmac.models.losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: ``train.mask_head_instances`` values: every GT box through the head (the official model, so
#: that BatchNorm statistics see every class) or only the mask-supervised ones.
MASK_HEAD_INSTANCES = ("all", "supervised")


@dataclass
class SampledInstances:
    """The boxes the mask branch trains on, flattened over the batch.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy in pixels of the padded batch.
        batch_index: ``(N,)`` int64 image of each box.
        gt_index: ``(N,)`` int64 ground-truth instance (within its image) whose mask is the
            target of the box.
        has_mask: ``(N,)`` bool, whether that mask supervises the head.
    """

    boxes: Tensor
    batch_index: Tensor
    gt_index: Tensor
    has_mask: Tensor

    def __len__(self) -> int:
        return len(self.boxes)


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


@dataclass
class InstanceSampler:
    """Picks the ground-truth boxes of a batch that the mask branch trains on.

    Attributes:
        max_instances: cap per image (``data.max_instances``; official 100).
        mode: ``train.mask_head_instances`` (see ``select_mask_instances``).
    """

    max_instances: int = 100
    mode: str = "all"

    def __post_init__(self) -> None:
        check_mask_head_instances(self.mode)

    def __call__(
        self, targets: Sequence[dict[str, Any]], generator: torch.Generator | None = None
    ) -> SampledInstances:
        """``SampledInstances`` of per-image targets (``boxes`` ``(n, 4)``, ``has_mask``
        ``(n,)``), on the targets' device."""
        if not targets:
            raise ValueError("InstanceSampler needs at least one target")
        boxes, batch_index, gt_index, has_mask = [], [], [], []
        for image, target in enumerate(targets):
            keep = select_mask_instances(
                target["has_mask"], self.max_instances, self.mode, generator
            )
            boxes.append(target["boxes"][keep].float())
            batch_index.append(torch.full_like(keep, image))
            gt_index.append(keep)
            has_mask.append(target["has_mask"][keep].bool())
        return SampledInstances(
            boxes=torch.cat(boxes),
            batch_index=torch.cat(batch_index),
            gt_index=torch.cat(gt_index),
            has_mask=torch.cat(has_mask),
        )
