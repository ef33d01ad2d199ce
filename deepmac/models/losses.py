"""The Deep-MAC mask loss with partial supervision (reference digest §3.1-3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
