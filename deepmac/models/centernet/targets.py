"""CenterNet training targets: class heatmaps, box sizes and centre offsets (digest §4.2).

Follows the official ``CenterNetCenterHeatmapTargetAssigner`` and ``CenterNetBoxTargetAssigner``:
boxes are taken to output-map pixels (``/ stride``); each box puts a Gaussian on its class
channel centred on ``floor(centre)`` (not the float centre), with the CornerNet radius for
``min_overlap`` and ``sigma = (2 * floor(r) + 1) / 6``; overlapping Gaussians of one class keep the
maximum. Size targets are raw ``(h, w)`` in output pixels (no log) and offsets are
``centre - floor(centre)``, both read at the ``floor(centre)`` pixel only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deepmac.structures.boxes import check_boxes


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """The CornerNet radius, as the official ``max_distance_for_overlap``.

    The minimum of the three quadratic roots, each computed as ``(-b + sqrt(b^2 - 4ac)) / 2``:
    the division by ``2a`` is deliberately missing, as in the official code (a known quirk kept
    so that targets match the released models).

    Args:
        height, width: ``(N,)`` box sizes in output pixels.
        min_overlap: IoU the shifted box must keep (official ``min_box_overlap_iou``: 0.7).

    Returns:
        ``(N,)`` radii.
    """
    iou = min_overlap
    a1, b1, c1 = 1.0, -(height + width), width * height * (1 - iou) / (1 + iou)
    a2, b2, c2 = 4.0, -2 * (height + width), (1 - iou) * width * height
    a3, b3, c3 = 4 * iou, 2 * iou * (height + width), (iou - 1) * width * height
    roots = [
        (-b + torch.sqrt((b * b - 4 * a * c).clamp(min=0))) / 2
        for a, b, c in ((a1, b1, c1), (a2, b2, c2), (a3, b3, c3))
    ]
    return torch.minimum(torch.minimum(roots[0], roots[1]), roots[2])


@dataclass
class CenterNetTargets:
    """Targets of one image.

    Attributes:
        heatmap: ``(K, h, w)`` float32 in [0, 1]; exactly 1.0 at each box's centre pixel.
        indices: ``(N,)`` int64 flat index ``y * w + x`` of each box's centre pixel.
        sizes: ``(N, 2)`` float32 ``(h, w)`` in output pixels.
        offsets: ``(N, 2)`` float32 ``(dy, dx)`` = centre - floor(centre).
    """

    heatmap: Tensor
    indices: Tensor
    sizes: Tensor
    offsets: Tensor


def encode_centernet_targets(
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    min_overlap: float = 0.7,
) -> CenterNetTargets:
    """Heatmap, size and offset targets of one image, on the device of ``boxes``.

    Args:
        boxes: ``(N, 4)`` float xyxy in input-image pixels.
        labels: ``(N,)`` int64 contiguous class ids in ``[0, num_classes)``, on the device of
            ``boxes``.
        num_classes: ``K``.
        output_size: ``(h, w)`` of the output map.
        stride: input pixels per output pixel.
        min_overlap: see ``gaussian_radius``.
    """
    check_boxes(boxes)
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels must have shape ({boxes.shape[0]},), got {tuple(labels.shape)}")
    if boxes.shape[0] and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}], "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    h, w = output_size
    scaled = boxes.float() / stride
    centre_y = (scaled[:, 1] + scaled[:, 3]) / 2
    centre_x = (scaled[:, 0] + scaled[:, 2]) / 2
    box_h = (scaled[:, 3] - scaled[:, 1]).clamp(min=0)
    box_w = (scaled[:, 2] - scaled[:, 0]).clamp(min=0)
    # Clamp the centre pixel to the map: a box clipped at the far border has its centre inside.
    peak_y = centre_y.floor().clamp(0, h - 1)
    peak_x = centre_x.floor().clamp(0, w - 1)

    radius = gaussian_radius(box_h, box_w, min_overlap)
    sigma = (2 * radius.floor().clamp(min=0) + 1) / 6  # (N,)
    device = boxes.device
    ys = torch.arange(h, dtype=torch.float32, device=device)[None, :, None]
    xs = torch.arange(w, dtype=torch.float32, device=device)[None, None, :]
    distance = (ys - peak_y[:, None, None]) ** 2 + (xs - peak_x[:, None, None]) ** 2  # (N, h, w)
    gaussians = torch.exp(-distance / (2 * sigma[:, None, None] ** 2))
    heatmap = torch.zeros(num_classes, h, w, device=device)
    for k in labels.unique().tolist():
        heatmap[k] = gaussians[labels == k].amax(dim=0)
    return CenterNetTargets(
        heatmap=heatmap,
        indices=(peak_y * w + peak_x).long(),
        sizes=torch.stack([box_h, box_w], dim=1),
        offsets=torch.stack([centre_y - peak_y, centre_x - peak_x], dim=1),
    )
