"""Box <-> regression-delta coding of R-CNN (Girshick et al.), as detectron2 ``Box2BoxTransform``.

For a reference box (anchor or proposal) of centre ``(x_a, y_a)`` and size ``(w_a, h_a)`` and a
target box ``(x, y, w, h)``::

    dx = wx (x - x_a) / w_a      dy = wy (y - y_a) / h_a
    dw = ww log(w / w_a)         dh = wh log(h / h_a)

with weights ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)`` for the RoI box head. Sizes are
``x2 - x1`` (continuous coordinates, no +1). Decoding clamps ``dw, dh`` at ``log(1000 / 16)`` so
that an untrained head cannot produce overflowing boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder", "RPN_BOX_WEIGHTS", "ROI_BOX_WEIGHTS"]

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: detectron2 ``_DEFAULT_SCALE_CLAMP``: no box grows more than 1000/16 times in one step.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """Encode target boxes relative to reference boxes, and decode deltas back.

    Args:
        weights: ``(wx, wy, ww, wh)``.
        scale_clamp: upper bound on ``dw / ww`` and ``dh / wh`` when decoding.
    """

    def __init__(
        self, weights: Sequence[float] = RPN_BOX_WEIGHTS, scale_clamp: float = DEFAULT_SCALE_CLAMP
    ) -> None:
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """Deltas ``(N, 4)`` that turn ``(N, 4)`` xyxy ``reference`` boxes into ``target``.

        Raises:
            ValueError: shapes differ or are not ``(N, 4)``.
        """
        if reference.shape != target.shape or reference.shape[-1:] != (4,):
            raise ValueError(
                f"reference and target must both be (N, 4), got {tuple(reference.shape)} and "
                f"{tuple(target.shape)}"
            )
        reference, target = reference.float(), target.float()
        ax, ay, aw, ah = _centre_size(reference)
        tx, ty, tw, th = _centre_size(target)
        wx, wy, ww, wh = self.weights
        return torch.stack(
            [
                wx * (tx - ax) / aw,
                wy * (ty - ay) / ah,
                ww * torch.log(tw / aw),
                wh * torch.log(th / ah),
            ],
            dim=-1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Apply ``(N, 4 k)`` deltas (k = 1, or one set per class) to ``(N, 4)`` reference boxes.

        Returns:
            ``(N, 4 k)`` xyxy boxes, float32.
        """
        if reference.dim() != 2 or reference.shape[1] != 4:
            raise ValueError(f"reference must be (N, 4), got {tuple(reference.shape)}")
        if deltas.dim() != 2 or deltas.shape[1] % 4 or deltas.shape[0] != reference.shape[0]:
            raise ValueError(
                f"deltas must be (N, 4 k) with N = {reference.shape[0]}, got {tuple(deltas.shape)}"
            )
        deltas = deltas.float().reshape(deltas.shape[0], -1, 4)  # (N, k, 4)
        ax, ay, aw, ah = (v[:, None] for v in _centre_size(reference.float()))
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        return boxes.reshape(deltas.shape[0], -1)
