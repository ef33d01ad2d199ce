"""CenterNet decoding (digest §4.4): 3x3 peak filter, joint top-k over classes and positions,
boxes from size and offset, clipped to the image. No NMS and no score threshold, as the official
postprocess."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deepmac.ops import heatmap_peaks


@dataclass
class Detections:
    """Per image: ``boxes`` ``(K, 4)`` xyxy input pixels, ``scores`` ``(K,)``, ``labels`` ``(K,)``
    contiguous class ids."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def decode_detections(
    heatmap_logits: Tensor,
    box_size: Tensor,
    center_offset: Tensor,
    *,
    stride: int = 4,
    image_sizes: list[tuple[int, int]] | Tensor | None = None,
    k: int = 100,
) -> list[Detections]:
    """Top-``k`` detections of each image.

    Args:
        heatmap_logits: ``(B, K_cls, h, w)`` logits of the last stack.
        box_size: ``(B, 2, h, w)`` ``(h, w)`` in output pixels.
        center_offset: ``(B, 2, h, w)`` ``(dy, dx)``.
        stride: input pixels per output pixel.
        image_sizes: ``(H, W)`` of each image's unpadded content (a list of pairs, or a
            ``(B, 2)`` tensor, as an exported graph takes it), to clip boxes to; default the
            padded input size.
        k: detections per image.
    """
    batch, _, h, w = heatmap_logits.shape
    scores, labels, ys, xs = heatmap_peaks(torch.sigmoid(heatmap_logits.float()), k=k)
    out = []
    for b in range(batch):
        y, x = ys[b], xs[b]
        size = box_size[b, :, y, x].float().clamp(min=0)  # (2, k)
        offset = center_offset[b, :, y, x].float()
        cy, cx = y + offset[0], x + offset[1]
        boxes = torch.stack(
            [cx - size[1] / 2, cy - size[0] / 2, cx + size[1] / 2, cy + size[0] / 2], dim=1
        )
        boxes = boxes.clamp(min=0) * stride
        limit_h, limit_w = image_sizes[b] if image_sizes is not None else (h * stride, w * stride)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=limit_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=limit_h)
        out.append(Detections(boxes=boxes, scores=scores[b], labels=labels[b]))
    return out
