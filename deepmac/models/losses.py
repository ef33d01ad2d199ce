"""The mask loss with partial supervision, shared by every family (reference digest
§3.1-3.2): targets at the sampled ground-truth boxes, weighted by ``has_mask``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.models.instances import SampledInstances

#: ``(gt_masks (G, H, W), boxes (n, 4), gt_index (n,), size) -> (n, size, size)`` soft targets:
#: a mask branch's ``mask_targets`` convention.
MaskTargets = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def deepmac_mask_loss(mask_logits: list[Tensor], mask_targets: Tensor, has_mask: Tensor) -> Tensor:
    """Per-pixel sigmoid cross-entropy, averaged over pixels, then over the instances that have a
    mask, then over the stacks (unweighted; the caller applies the task weight, 5.0).

    Instances without mask supervision still went through the head (their boxes shape the BN
    statistics, as in the official code, whose padded and disallowed instances do too) but
    carry weight 0. With no supervised instance the loss is an exact 0 that still has a graph
    to back-propagate through, never NaN.

    Args:
        mask_logits: per stack, ``(N, 1, S, S)`` logits.
        mask_targets: ``(N, S, S)`` soft targets in [0, 1] (``crop_mask_targets``).
        has_mask: ``(N,)`` bool.

    Returns:
        Scalar loss.
    """
    if mask_targets.dim() != 3 or has_mask.shape != mask_targets.shape[:1]:
        raise ValueError(
            f"mask_targets must be (N, S, S) and has_mask (N,), got {tuple(mask_targets.shape)} "
            f"and {tuple(has_mask.shape)}"
        )
    weights = has_mask.to(mask_targets.dtype)
    losses = []
    for logits in mask_logits:
        if logits.shape[0] != mask_targets.shape[0] or logits.shape[-2:] != mask_targets.shape[-2:]:
            raise ValueError(
                f"mask_logits {tuple(logits.shape)} do not match mask_targets "
                f"{tuple(mask_targets.shape)}"
            )
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, 0].float(), mask_targets, reduction="none"
        )
        per_instance = per_pixel.mean(dim=(1, 2))  # (N,)
        losses.append((per_instance * weights).sum() / weights.sum().clamp(min=1.0))
    return torch.stack(losses).mean()


def sampled_mask_targets(
    instances: SampledInstances,
    targets: Sequence[dict[str, Any]],
    crop: MaskTargets,
    size: int,
) -> Tensor:
    """``(N, size, size)`` soft targets of the sampled instances: each supervised instance's
    ground-truth mask cropped at its box with ``crop`` (the branch's convention); zeros where
    ``has_mask`` is False (only the masks the loss uses pay the full-resolution crop)."""
    boxes = instances.boxes
    out = torch.zeros(len(boxes), size, size, device=boxes.device)
    for image, target in enumerate(targets):
        (rows,) = torch.nonzero(
            (instances.batch_index == image) & instances.has_mask, as_tuple=True
        )
        if len(rows):
            masks = target["gt_masks"].to(boxes.device)
            out[rows] = crop(masks, boxes[rows], instances.gt_index[rows], size)
    return out


def sampled_mask_loss(
    mask_logits: list[Tensor],
    instances: SampledInstances,
    targets: Sequence[dict[str, Any]],
    crop: MaskTargets,
) -> Tensor:
    """``deepmac_mask_loss`` of ``(N, 1, S, S)`` logits per stack at the sampled instances,
    against their targets (``sampled_mask_targets``)."""
    size = mask_logits[0].shape[-1]
    mask_targets = sampled_mask_targets(instances, targets, crop, size)
    return deepmac_mask_loss(mask_logits, mask_targets, instances.has_mask)
