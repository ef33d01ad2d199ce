"""CenterNet losses of the official configs (digest §4.3): penalty-reduced focal loss on the
centre heatmap, L1 on sizes (weight 0.1) and offsets (weight 1.0), all normalised by the
number of boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from deepmac.models.centernet.targets import CenterNetTargets


def penalty_reduced_focal_loss(
    logits: Tensor,
    target: Tensor,
    valid: Tensor | None = None,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> Tensor:
    """Summed penalty-reduced focal loss (CornerNet / CenterNet), unnormalised.

    ``p = clip(sigmoid(logit), 1e-4, 1 - 1e-4)``; pixels whose target is exactly 1 cost
    ``-(1 - p)^alpha log p``, all others ``-(1 - y)^beta p^alpha log(1 - p)``.

    Args:
        logits: ``(B, K, h, w)``.
        target: ``(B, K, h, w)`` Gaussian heatmaps.
        valid: ``(B, 1, h, w)`` weights (0 on padding), or None.

    Returns:
        Scalar sum over pixels and classes.
    """
    prob = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target == 1.0
    pos_loss = -((1 - prob) ** alpha) * torch.log(prob)
    neg_loss = -((1 - target) ** beta) * prob**alpha * torch.log(1 - prob)
    loss = torch.where(positive, pos_loss, neg_loss)
    if valid is not None:
        loss = loss * valid
    return loss.sum()


def _gather_at(maps: Tensor, indices: Sequence[Tensor]) -> Tensor:
    """Values of ``(B, C, h, w)`` maps at per-image flat pixel indices, ``(N, C)``."""
    rows = [maps[b].flatten(1)[:, idx].t() for b, idx in enumerate(indices)]  # each (n_b, C)
    return torch.cat(rows) if rows else maps.new_zeros(0, maps.shape[1])


def centernet_losses(
    heatmap_logits: Sequence[Tensor],
    box_sizes: Sequence[Tensor],
    center_offsets: Sequence[Tensor],
    targets: Sequence[CenterNetTargets],
    valid: Tensor | None = None,
    *,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Weighted CenterNet losses averaged over the backbone stacks.

    Args:
        heatmap_logits, box_sizes, center_offsets: one tensor per stack, ``(B, K, h, w)``,
            ``(B, 2, h, w)`` and ``(B, 2, h, w)``.
        targets: one ``CenterNetTargets`` per image.
        valid: ``(B, 1, h, w)`` 1 inside each image's unpadded area, or None.

    Returns:
        ``{"loss_center", "loss_size", "loss_offset"}``, each divided by
        ``max(#boxes, 1) * #stacks`` as the official code.
    """
    heatmap = torch.stack([t.heatmap for t in targets]).to(heatmap_logits[0].device)
    indices = [t.indices.to(heatmap.device) for t in targets]
    sizes = torch.cat([t.sizes for t in targets]).to(heatmap.device)
    offsets = torch.cat([t.offsets for t in targets]).to(heatmap.device)
    num_stacks = len(heatmap_logits)
    norm = max(int(sizes.shape[0]), 1) * num_stacks
    center = sum(penalty_reduced_focal_loss(h, heatmap, valid) for h in heatmap_logits)
    size = sum((_gather_at(s, indices).float() - sizes).abs().sum() for s in box_sizes)
    offset = sum((_gather_at(o, indices).float() - offsets).abs().sum() for o in center_offsets)
    return {
        "loss_center": center / norm,
        "loss_size": size_weight * size / norm,
        "loss_offset": offset_weight * offset / norm,
    }
