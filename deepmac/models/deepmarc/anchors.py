"""Anchor boxes on every FPN level (Faster R-CNN / FPN papers, detectron2 layout).

One anchor size per level (32, 64, 128, 256, 512 on P2-P6) times aspect ratios 0.5, 1, 2
(ratio = height / width, area kept at size^2). Anchors are centred on the feature cells
(``offset = 0.5``: the centre of cell ``(i, j)`` is ``((j + 0.5) s, (i + 0.5) s)``), as Model
Garden's ``Anchor`` places them; detectron2 keeps a 0.0 default only for backward compatibility
and recommends 0.5 with aligned RoIAlign.

Order within a level: row-major over cells, anchors of one cell consecutive
(``(h_l * w_l * A, 4)``), matching the RPN head outputs after
``(B, A, h, w) -> (B, h, w, A)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "cell_anchors"]


def cell_anchors(size: float, aspect_ratios: Sequence[float]) -> Tensor:
    """The ``(A, 4)`` xyxy anchors of one cell, centred on the origin.

    ``w = sqrt(size^2 / r)``, ``h = r w`` for each ratio ``r = h / w``.
    """
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64)
    if (ratios <= 0).any() or size <= 0:
        raise ValueError(f"anchor size and aspect ratios must be positive, got {size}, {ratios}")
    widths = torch.sqrt(size * size / ratios)
    heights = ratios * widths
    return torch.stack([-widths, -heights, widths, heights], dim=1).float() / 2


class AnchorGenerator(nn.Module):
    """Anchors of every level for a feature pyramid.

    Args:
        sizes: one anchor size (pixels) per level.
        aspect_ratios: height / width ratios, the same on every level.
        strides: stride of each level (len(sizes)).
        offset: cell-centre offset in units of the stride (0.5 = cell centres).

    Attributes:
        num_anchors: ``A``, anchors per cell.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"need one anchor size per stride, got {sizes} and {strides}")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"offset must be in [0, 1), got {offset}")
        self.strides = tuple(int(s) for s in strides)
        self.offset = offset
        self.num_anchors = len(aspect_ratios)
        for level, size in enumerate(sizes):
            self.register_buffer(
                f"cell_anchors_{level}", cell_anchors(size, aspect_ratios), persistent=False
            )

    def level_anchors(self, level: int, height: int, width: int) -> Tensor:
        """``(height * width * A, 4)`` xyxy anchors of level ``level`` on an ``h x w`` map."""
        base: Tensor = getattr(self, f"cell_anchors_{level}")
        stride = self.strides[level]
        ys = (torch.arange(height, dtype=torch.float32, device=base.device) + self.offset) * stride
        xs = (torch.arange(width, dtype=torch.float32, device=base.device) + self.offset) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (h w, 1, 4)
        return (shifts + base[None]).reshape(-1, 4)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Per level ``(h_l * w_l * A, 4)`` anchors for maps ``(B, C, h_l, w_l)`` (same for every
        image of the batch: images are padded to one size)."""
        if len(features) != len(self.strides):
            raise ValueError(
                f"AnchorGenerator has {len(self.strides)} levels, got {len(features)} maps"
            )
        return [
            self.level_anchors(level, *feature.shape[-2:]) for level, feature in enumerate(features)
        ]
