"""Multi-level RoIAlign over FPN levels for the box and mask branches, always in float32.

``aligned=True`` (half-pixel, detectron2 ``ROIAlignV2``), adaptive sampling
(``ceil(bin size)`` points per bin), each box pooled from the level of its size (FPN eq. 1,
canonical 224 px at P4). Under autocast the features arrive in bfloat16; the pooling runs on
float32 copies with autocast off, as torchvision's autocast policy does for ``roi_align``: the
sampling weights and the bin averages stay exact, and the head that follows casts back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from deepmac.ops import multilevel_roi_align

__all__ = ["pool_levels"]


def pool_levels(
    features: Sequence[Tensor],
    strides: Sequence[int],
    boxes: Tensor,
    output_size: int,
    batch_index: Tensor,
) -> Tensor:
    """``(N, C, S, S)`` float32 RoIAlign features of ``(N, 4)`` xyxy boxes (input pixels).

    Args:
        features: ``(B, C, h_l, w_l)`` maps, finest first; the first ``len(strides)`` are used.
        strides: stride of each pooled level (P2-P5: 4, 8, 16, 32).
        boxes: ``(N, 4)`` boxes. batch_index: ``(N,)`` image of each box.
        output_size: ``S``.
    """
    levels = [f.float() for f in features[: len(strides)]]  # keeps channels_last
    with torch.autocast(levels[0].device.type, enabled=False):
        return multilevel_roi_align(
            levels,
            list(strides),
            boxes.float(),
            output_size,
            batch_index,
            sampling_ratio=0,
            aligned=True,
        )
