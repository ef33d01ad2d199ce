"""Box format converters, area, clipping and pairwise IoU (pure tensor functions).

All functions take and return ``(N, 4)`` floating tensors; see ``deepmac.structures`` for the
box conventions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_boxes(boxes: Tensor, name: str = "boxes") -> Tensor:
    """Validate a ``(N, 4)`` floating box tensor and return it unchanged.

    Raises:
        TypeError: if ``boxes`` is not a floating-point tensor.
        ValueError: if its shape is not ``(N, 4)``.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}"
        )
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {boxes.dtype}")
    return boxes


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``(x, y, w, h)`` to ``(x1, y1, x2, y2)``."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` to COCO ``(x, y, w, h)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` to centre form ``(cx, cy, w, h)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Centre form ``(cx, cy, w, h)`` to ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(N, 4)`` xyxy boxes, ``(N,)``; inverted boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Clip ``(N, 4)`` xyxy boxes to an image of ``(height, width)`` (ints, or a ``(2,)``
    tensor as in exported graphs, where the content size is an input); returns a new tensor."""
    height, width = image_size
    limits = torch.stack(
        [torch.as_tensor(v, dtype=boxes.dtype, device=boxes.device) for v in (width, height) * 2]
    )
    return torch.minimum(boxes.clamp(min=0), limits)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes, ``(N, M)``.

    Pairs where both boxes have zero area get IoU 0 (not NaN).
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def boxes_inside(boxes: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(clipped, keep)``: finite ``(N, 4)`` xyxy boxes clipped to the ``(H, W)`` image, and
    the ``(N,)`` bool mask of those with area left inside it (``clipped`` is all N boxes)."""
    clipped = clip_boxes(boxes, image_size)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep
