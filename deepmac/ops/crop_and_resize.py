"""TF ``crop_and_resize`` semantics, as Deep-MAC crops its pixel embedding and GT masks.

The official Deep-MAC crops with ``spatial_transform_ops.matmul_crop_and_resize`` (see
reference/official-implementation.md §1.5):

* a box coordinate ``y`` of an image of height ``H_img`` is normalised, ``y / H_img``, and the
  normalised value maps to the feature pixel ``y / H_img * (h - 1)`` (pixels are points);
* the ``S`` samples along an axis are ``linspace(y1, y2, S)`` in that pixel frame, so the first
  and last samples fall exactly on the box edges (for ``S = 1``, the box centre);
* each sample is bilinear over its 4 neighbours, and a neighbour outside ``[0, h - 1]``
  contributes 0 (the test is per neighbour, as in the matmul implementation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepmac.ops._checks import (
    check_boxes_and_index,
    check_features,
    output_hw,
    pixel_to_grid,
    sample_box_grids,
)


def crop_sample_points(lo: Tensor, hi: Tensor, num: int, scale: float) -> Tensor:
    """Sample positions of one axis, ``(N, num)``, in feature pixels.

    Args:
        lo, hi: ``(N,)`` box edges, already normalised to ``[0, 1]`` of the image extent.
        num: number of samples.
        scale: ``h - 1`` of the feature map along this axis.
    """
    if num == 1:
        return ((lo + hi) * 0.5 * scale)[:, None]
    steps = torch.linspace(0.0, 1.0, num, dtype=lo.dtype, device=lo.device)
    return (lo[:, None] + (hi - lo)[:, None] * steps[None, :]) * scale


def crop_and_resize(
    features: Tensor,
    boxes: Tensor,
    output_size: int | tuple[int, int],
    batch_index: Tensor | None = None,
    image_size: tuple[float, float] | None = None,
) -> Tensor:
    """Crop ``features`` at ``boxes`` and resize each crop to ``output_size``, TF style.

    Differentiable with respect to ``features`` (and ``boxes``).

    Args:
        features: ``(B, C, h, w)`` float feature map (or masks as a 1-channel map).
        boxes: ``(N, 4)`` float ``xyxy`` boxes in absolute pixels of an image of size
            ``image_size`` that the feature map covers.
        output_size: ``S`` or ``(S_h, S_w)``.
        batch_index: ``(N,)`` int64 image index of each box; may be omitted when ``B == 1``.
        image_size: ``(H_img, W_img)`` of the frame the boxes are in; defaults to ``(h, w)``,
            i.e. boxes already in feature-map pixels of the normalised TF convention.

    Returns:
        ``(N, C, S_h, S_w)`` crops, dtype of ``features``.
    """
    check_features(features)
    batch_index = check_boxes_and_index(boxes, batch_index, features.shape[0])
    out_h, out_w = output_hw(output_size)
    num_boxes = boxes.shape[0]
    h, w = features.shape[-2:]
    img_h, img_w = (h, w) if image_size is None else image_size

    boxes = boxes.to(features.dtype)
    ys = crop_sample_points(boxes[:, 1] / img_h, boxes[:, 3] / img_h, out_h, h - 1)  # (N, S_h)
    xs = crop_sample_points(boxes[:, 0] / img_w, boxes[:, 2] / img_w, out_w, w - 1)  # (N, S_w)
    grid_y = pixel_to_grid(ys, h)[:, :, None].expand(num_boxes, out_h, out_w)
    grid_x = pixel_to_grid(xs, w)[:, None, :].expand(num_boxes, out_h, out_w)
    grid = torch.stack([grid_x, grid_y], dim=-1)  # (N, S_h, S_w, 2)

    return sample_box_grids(features, grid, batch_index, padding_mode="zeros")
