"""NMS and RoIAlign as opaque ``torch.library`` operators, for graph export.

``torch.export`` cannot trace the eager NMS (a Python loop over a data-dependent number of
boxes) or the eager RoIAlign (boxes grouped by their adaptive sample count, also data
dependent). While a graph is being traced, ``deepmac.ops.nms`` and ``deepmac.ops.roi_align``
call these operators instead: each runs the eager code when executed, and appears in the traced
graph as one node with a known output shape (a symbolic length for NMS).
``deepmac.export.onnx_ops`` maps the two nodes to ONNX's ``NonMaxSuppression`` and ``RoiAlign``,
whose semantics are the same (checked by the export parity tests).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("deepmac::nms", mutates_args=())
def nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """``deepmac.ops.nms`` as one operator: ``(K,)`` int64 kept indices by decreasing score."""
    from deepmac.ops.nms import nms

    return nms(boxes, scores, iou_threshold)


@nms_op.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    # The number of kept boxes depends on the data: a fresh symbolic size.
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, dtype=torch.long)


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
    from deepmac.ops.roi_align import roi_align

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
