"""Non-maximum suppression and CenterNet heatmap peak extraction, in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.structures.boxes import box_iou, check_boxes


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS; same result as ``torchvision.ops.nms``.

    Args:
        boxes: ``(N, 4)`` float xyxy.
        scores: ``(N,)`` float.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is
            strictly greater than this.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score.
    """
    check_boxes(boxes)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if torch.compiler.is_compiling():  # graph export: one opaque node (ONNX NonMaxSuppression)
        return nms_op(boxes, scores, float(iou_threshold))
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    # One IoU matrix, then a greedy sweep over plain bools: the sweep visits each box once
    # and only does work for boxes that survive.
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    removed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        for j in overlaps[i, i + 1 :].nonzero()[0]:
            removed[i + 1 + j] = True
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class independently (boxes of different labels never suppress).

    Args:
        boxes: ``(N, 4)`` float xyxy. scores: ``(N,)``. labels: ``(N,)`` int64 class ids.

    Returns:
        ``(K,)`` int64 kept indices by decreasing score.
    """
    check_boxes(boxes)
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels must have shape ({boxes.shape[0]},), got {tuple(labels.shape)}")
    if not torch.compiler.is_compiling() and boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Shift each class to its own disjoint region so one NMS call handles all classes. (The
    # appended 0 keeps the reduction defined for an empty set of boxes in an exported graph.)
    span = 2 * torch.cat([boxes.flatten(), boxes.new_zeros(1)]).abs().max() + 1
    offsets = labels.to(boxes.dtype) * span
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def heatmap_peaks(heatmap: Tensor, k: int = 100, kernel_size: int = 3) -> tuple[Tensor, ...]:
    """Top-``k`` local maxima of a CenterNet heatmap, jointly over classes and positions.

    A pixel is a peak when it equals the max of its ``kernel_size`` neighbourhood (SAME
    padding), as in the official ``top_k_feature_map_locations``. No NMS, no threshold.

    Args:
        heatmap: ``(B, K_cls, h, w)`` scores (probabilities, after sigmoid).
        k: number of peaks per image (fewer if the map is smaller).

    Returns:
        ``scores (B, k)``, ``classes (B, k)`` int64, ``ys (B, k)`` int64, ``xs (B, k)`` int64.
    """
    if heatmap.dim() != 4:
        raise ValueError(f"heatmap must have shape (B, K, h, w), got {tuple(heatmap.shape)}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    batch, num_classes, h, w = heatmap.shape
    pooled = F.max_pool2d(heatmap, kernel_size, stride=1, padding=kernel_size // 2)
    # Same tolerance as the official code: |x - maxpool(x)| < 1e-6.
    peaks = torch.where((heatmap - pooled).abs() < 1e-6, heatmap, torch.zeros_like(heatmap))
    flat = peaks.permute(0, 2, 3, 1).reshape(batch, -1)  # (B, h * w * K_cls), class fastest
    scores, index = flat.topk(min(k, flat.shape[1]), dim=1)
    classes = index % num_classes
    pixel = index // num_classes
    return scores, classes, pixel // w, pixel % w


# ``torch.export`` cannot trace the eager code above (a Python loop over a data-dependent
# number of boxes): while a graph is traced, it calls this opaque operator instead, which runs
# the eager code when executed and is one node of known output shape in the graph;
# ``deepmac.export.onnx_ops`` maps it to ONNX's NonMaxSuppression (same semantics, checked by the
# export parity tests).
@torch.library.custom_op("deepmac::nms", mutates_args=())
def nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """``deepmac.ops.nms`` as one operator: ``(K,)`` int64 kept indices by decreasing score."""
    return nms(boxes, scores, iou_threshold)


@nms_op.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    # The number of kept boxes depends on the data: a fresh symbolic size.
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, dtype=torch.long)
