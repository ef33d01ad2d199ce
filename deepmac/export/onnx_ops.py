"""ONNX translations of the ``deepmac::nms`` and ``deepmac::roi_align`` export operators.

Passed to ``torch.onnx.export(custom_translation_table=...)``. Both map to standard ONNX
operators that onnxruntime implements with the semantics of the eager code:

* ``NonMaxSuppression``: greedy, a box dropped when its IoU with a kept box is strictly above
  the threshold, kept indices ordered by decreasing score (IoU does not depend on whether the
  four coordinates are read as xyxy or, as ONNX names them, yxyx);
* ``RoiAlign`` (opset 16+): ``coordinate_transformation_mode="half_pixel"`` is
  ``aligned=True``, ``"output_half_pixel"`` the original Mask R-CNN; ``sampling_ratio=0`` is
  the same adaptive ``ceil(bin size)`` rule; samples beyond one pixel outside the map are 0.
"""

from __future__ import annotations

from typing import Any

import torch


def _nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]),  # (1, N, 4): one batch
        op.Unsqueeze(scores, [0, 1]),  # (1, 1, N): one class
        op.Constant(value_ints=[2**31 - 1]),  # keep every box that survives
        op.Constant(value_floats=[iou_threshold]),
    )  # (K, 3) rows of (batch, class, box index)
    return op.Reshape(op.Gather(selected, op.Constant(value_ints=[2]), axis=1), [-1])


def _roi_align(
    features: Any,
    boxes: Any,
    batch_index: Any,
    output_height: int,
    output_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Any:
    from onnxscript import opset18 as op

    return op.RoiAlign(
        features,
        boxes,
        batch_index,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )


def custom_translation_table() -> dict:
    """``{torch operator: ONNX translation}`` for the exporter."""
    import deepmac.ops.nms  # noqa: F401  (registers the operators)
    import deepmac.ops.roi_align  # noqa: F401

    return {
        torch.ops.deepmac.nms.default: _nms,
        torch.ops.deepmac.roi_align.default: _roi_align,
    }
