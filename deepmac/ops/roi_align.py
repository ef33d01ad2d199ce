"""RoIAlign (Mask R-CNN) in plain PyTorch, with the torchvision / detectron2 semantics.

For bin ``(i, j)`` of a box, ``sampling_ratio`` x ``sampling_ratio`` points are placed at the
centres of a regular sub-grid of the bin and bilinearly sampled; the bin value is their mean.
With ``aligned=True`` the box is shifted by -0.5 pixel so that a continuous coordinate ``x``
maps to the pixel whose centre is at ``x - 0.5`` (detectron2 ROIAlignV2); with ``aligned=False``
there is no shift and box sizes are clamped to at least 1 (the original Mask R-CNN).
Bilinear sampling follows torchvision exactly: a point with ``y < -1`` or ``y > h`` is 0; inside
that band coordinates are clamped to the map. ``sampling_ratio <= 0`` picks
``ceil(box_size / output_size)`` points per bin for each box, as torchvision does.

Used by Deep-MARC. Deep-MAC crops with ``crop_and_resize`` instead (see deepmac.structures).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.ops._checks import (
    check_boxes_and_index,
    check_features,
    output_hw,
    pixel_to_grid,
    sample_box_grids,
)


def _bin_sample_points(start: Tensor, bin_size: Tensor, bins: int, ratio: int) -> Tensor:
    """Sample positions along one axis, ``(N, bins * ratio)``, ordered bin by bin."""
    offsets = (torch.arange(bins * ratio, dtype=start.dtype, device=start.device) + 0.5) / ratio
    return start[:, None] + offsets[None, :] * bin_size[:, None]


def _roi_align_fixed_ratio(
    features: Tensor,
    starts: Tensor,
    bin_sizes: Tensor,
    batch_index: Tensor,
    out_hw: tuple[int, int],
    ratio: tuple[int, int],
) -> Tensor:
    """RoIAlign for boxes that share one ``(ratio_h, ratio_w)``; returns ``(N, C, S_h, S_w)``."""
    num_boxes = starts.shape[0]
    h, w = features.shape[-2:]
    (out_h, out_w), (ratio_h, ratio_w) = out_hw, ratio
    ys = _bin_sample_points(starts[:, 1], bin_sizes[:, 1], out_h, ratio_h)  # (N, P)
    xs = _bin_sample_points(starts[:, 0], bin_sizes[:, 0], out_w, ratio_w)  # (N, Q)
    # torchvision zeroes samples outside [-1, size] and clamps the rest to the map; grid_sample
    # with border padding does the clamping, the validity mask the zeroing.
    valid = ((ys >= -1) & (ys <= h))[:, :, None] & ((xs >= -1) & (xs <= w))[:, None, :]  # (N, P, Q)
    ys, xs = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
    num_p, num_q = ys.shape[1], xs.shape[1]
    grid = torch.stack(
        [
            pixel_to_grid(xs, w)[:, None, :].expand(num_boxes, num_p, num_q),
            pixel_to_grid(ys, h)[:, :, None].expand(num_boxes, num_p, num_q),
        ],
        dim=-1,
    )  # (N, P, Q, 2)
    samples = sample_box_grids(features, grid, batch_index, padding_mode="border")
    samples = samples * valid[:, None].to(samples.dtype)
    return F.avg_pool2d(samples, kernel_size=(ratio_h, ratio_w))  # (N, C, S_h, S_w)


def roi_align(
    features: Tensor,
    boxes: Tensor,
    output_size: int | tuple[int, int],
    batch_index: Tensor | None = None,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """Pool ``(N, C, S_h, S_w)`` features from ``(B, C, h, w)`` at ``(N, 4)`` xyxy boxes.

    Args:
        features: ``(B, C, h, w)`` float feature map.
        boxes: ``(N, 4)`` float xyxy boxes in image pixels.
        output_size: ``S`` or ``(S_h, S_w)``.
        batch_index: ``(N,)`` int64 image of each box; may be omitted when ``B == 1``.
        spatial_scale: feature pixels per image pixel (``1 / stride``).
        sampling_ratio: points per bin along each axis; ``<= 0`` = adaptive per box.
        aligned: half-pixel shift (detectron2 ``ROIAlignV2``, torchvision ``aligned=True``).

    Returns:
        ``(N, C, S_h, S_w)`` pooled features, differentiable w.r.t. ``features``.
    """
    check_features(features)
    batch_index = check_boxes_and_index(boxes, batch_index, features.shape[0])
    out_h, out_w = output_hw(output_size)
    if torch.compiler.is_compiling():  # graph export: one opaque node (ONNX RoiAlign)
        return roi_align_op(
            features, boxes, batch_index, out_h, out_w, spatial_scale, sampling_ratio, aligned
        )
    offset = 0.5 if aligned else 0.0
    scaled = boxes.to(features.dtype) * spatial_scale - offset  # (N, 4)
    starts = scaled[:, :2]
    sizes = scaled[:, 2:] - scaled[:, :2]
    if not aligned:
        sizes = sizes.clamp(min=1.0)
    bin_sizes = sizes / torch.tensor([out_w, out_h], dtype=sizes.dtype, device=sizes.device)

    # The sample counts are CPU-side bookkeeping: they choose the Python loop's groups.
    if sampling_ratio > 0:
        ratios = torch.full((boxes.shape[0], 2), sampling_ratio, dtype=torch.long, device="cpu")
    else:
        ratios = torch.ceil(bin_sizes.detach().cpu()).long().clamp(min=1)  # (N, 2) as (w, h)
    out = features.new_zeros(boxes.shape[0], features.shape[1], out_h, out_w)
    # Boxes are grouped by their sample count so that each group is one vectorised call.
    for ratio_w, ratio_h in ratios.unique(dim=0).tolist() if boxes.shape[0] else []:
        (idx,) = torch.nonzero((ratios[:, 0] == ratio_w) & (ratios[:, 1] == ratio_h), as_tuple=True)
        idx = idx.to(boxes.device)
        out[idx] = _roi_align_fixed_ratio(
            features,
            starts[idx],
            bin_sizes[idx],
            batch_index[idx],
            (out_h, out_w),
            (ratio_h, ratio_w),
        )
    return out


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """FPN level of each box (FPN paper eq. 1, as detectron2): ``(N,)`` int64 in [min, max]."""
    sizes = torch.sqrt(
        (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    )
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    return levels.clamp(min_level, max_level).long()


def multilevel_roi_align(
    features: list[Tensor],
    strides: list[int],
    boxes: Tensor,
    output_size: int | tuple[int, int],
    batch_index: Tensor | None = None,
    sampling_ratio: int = 0,
    aligned: bool = True,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """RoIAlign over an FPN pyramid: each box is pooled from the level its size selects.

    Args:
        features: per level ``(B, C, h_l, w_l)`` maps, finest first.
        strides: the stride of each level (powers of two, e.g. ``[4, 8, 16, 32]``).
        boxes, output_size, batch_index, sampling_ratio, aligned: as in ``roi_align``.

    Returns:
        ``(N, C, S_h, S_w)`` pooled features.
    """
    if len(features) != len(strides) or not features:
        raise ValueError(
            f"need one stride per feature level, got {len(features)} levels, {len(strides)} strides"
        )
    levels_of_strides = [int(round(math.log2(s))) for s in strides]
    if any(2**lvl != s for lvl, s in zip(levels_of_strides, strides, strict=True)):
        raise ValueError(f"strides must be powers of two, got {strides}")
    out_h, out_w = output_hw(output_size)
    if batch_index is None:
        batch_index = check_boxes_and_index(boxes, None, features[0].shape[0])
    levels = assign_fpn_levels(
        boxes, levels_of_strides[0], levels_of_strides[-1], canonical_box_size, canonical_level
    )
    pool = lambda feature, stride, keep: roi_align(  # noqa: E731
        feature, boxes[keep], (out_h, out_w), batch_index[keep], 1.0 / stride, sampling_ratio,
        aligned,
    )  # fmt: skip
    if torch.compiler.is_compiling():
        # Graph export: every box pooled at every level, then each box keeps its own level's
        # result (no data-dependent grouping; 4x the pooling work, small next to the heads).
        every = slice(None)
        out = None
        for feature, stride, level in zip(features, strides, levels_of_strides, strict=True):
            pooled = pool(feature, stride, every)
            mine = levels[:, None, None, None] == level
            out = pooled if out is None else torch.where(mine, pooled, out)
        return out
    out = features[0].new_zeros(boxes.shape[0], features[0].shape[1], out_h, out_w)
    for feature, stride, level in zip(features, strides, levels_of_strides, strict=True):
        (idx,) = torch.nonzero(levels == level, as_tuple=True)
        if idx.numel():
            out[idx] = pool(feature, stride, idx)
    return out


# ``torch.export`` cannot trace the eager code above (boxes grouped by their data-dependent
# sample counts): while a graph is traced, it calls this opaque operator instead, which runs
# the eager code when executed and is one node of known output shape in the graph;
# ``deepmac.export.onnx_ops`` maps it to ONNX's RoiAlign (same semantics, checked by the
# export parity tests).
@torch.library.custom_op("deepmac::roi_align", mutates_args=())
def roi_align_op(
    features: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    output_height: int,
    output_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``deepmac.ops.roi_align`` as one operator: ``(N, C, S_h, S_w)``."""
    return roi_align(
        features,
        boxes,
        (output_height, output_width),
        batch_index,
        spatial_scale,
        sampling_ratio,
        aligned,
    )


@roi_align_op.register_fake
def _roi_align_fake(
    features: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    output_height: int,
    output_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return features.new_empty(boxes.shape[0], features.shape[1], output_height, output_width)
