"""The Deep-MARC mask branch: class-agnostic mask head on RoIAlign features of FPN levels.

``RoIMaskBranch`` pools ``S x S`` features (RoIAlign ``aligned=True``, adaptive sampling, level by
box size over P2-P5) at the boxes it is given and runs any trainable head of
``deepmac.mask_heads.MASK_HEADS`` on them; the Deep-MARC heads (``deepmarc_default``: 4 convs +
deconv, 14 -> 28; ``deepmarc_hourglass20``: 16 -> 32; ``deepmarc_hourglass52``: 32 -> 64, paper
Sec. 3) end in a 2x deconv and one logit channel. Which boxes it sees in training is the model's
choice (``mask_train_boxes``, ``deepmac.models.deepmarc.model``).

Targets and paste-back use the same half-pixel RoIAlign convention as the features (detectron2):
mask cell ``(i, j)`` of a box ``(x0, y0, x1, y1)`` covers ``[x0 + j w / S, x0 + (j + 1) w / S)``.
Targets are the ground-truth masks RoIAligned at the boxes, kept soft (Model Garden crops its
GT masks bilinearly and never binarises them); pasting samples the probabilities bilinearly at
every image pixel centre inside the box (zeros beyond the outer cell centres' half cell) and
thresholds at ``>= 0.5``, as detectron2's ``paste_masks_in_image``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepmac.mask_heads import MASK_HEADS, build_mask_head
from deepmac.models.deepmarc.pooler import pool_levels
from deepmac.ops import roi_align
from deepmac.structures.boxes import check_boxes
from deepmac.structures.masks import paste_roi_masks

__all__ = ["RoIMaskBranch", "paste_roi_masks", "roi_mask_targets"]


class RoIMaskBranch(nn.Module):
    """RoIAlign at boxes + mask head.

    Args:
        head: a trainable ``MASK_HEADS`` name (``deepmarc_default``, ``deepmarc_hourglass52``...).
        in_channels: FPN channels.
        crop_size: RoIAlign side ``S`` (14 / 16 / 32 for the Deep-MARC heads).
        num_init_channels: the head's width (``None``: the registry default).
        strides: strides of the pooled levels (P2-P5).

    Attributes:
        crop_size: ``S``.
        output_size: side of the mask logits (``2 S`` for the Deep-MARC heads).
        paste: box-relative masks into an image (``paste_roi_masks``, RoIAlign convention).
        mask_targets: ground-truth masks RoIAligned at boxes (``roi_mask_targets``).

    Raises:
        ValueError: unknown or parameter-free head, or a crop side the head cannot take.
    """

    def __init__(
        self,
        head: str,
        in_channels: int,
        *,
        crop_size: int,
        num_init_channels: int | None = None,
        strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        entry = MASK_HEADS.get(head)
        if entry is not None and entry.param_free:
            raise ValueError(
                f"mask head {head!r} has no parameters and needs Deep-MAC embeddings; Deep-MARC "
                f"takes a trainable head, e.g. deepmarc_default or deepmarc_hourglass52"
            )
        self.head = build_mask_head(head, in_channels, num_init_channels, crop_size)
        multiple = getattr(self.head, "size_multiple", 1)
        if crop_size < 1 or crop_size % multiple:
            raise ValueError(
                f"mask head {head!r} needs a crop side that is a multiple of {multiple}, got "
                f"model.mask_size={crop_size} (paper: 14 for deepmarc_default, 16 for "
                f"deepmarc_hourglass20, 32 for deepmarc_hourglass52)"
            )
        self.crop_size = crop_size
        self.strides = tuple(strides)
        self.output_size = self.head.output_size(crop_size)

    paste_convention = "roi_align"
    paste = staticmethod(paste_roi_masks)

    @staticmethod
    def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
        """``(N, S, S)`` soft targets: mask ``gt_index[n]`` of ``(G, H, W)`` RoIAligned at box
        ``n``; only the masks used are converted to float (several RoIs may share one)."""
        used, remap = gt_index.unique(return_inverse=True)
        return roi_mask_targets(gt_masks[used], boxes, remap, size)

    def forward(
        self, features: Sequence[Tensor], boxes: Tensor, batch_index: Tensor | None = None
    ) -> Tensor:
        """Mask logits ``(N, 1, S_out, S_out)`` for ``(N, 4)`` xyxy boxes (input pixels) on the
        images ``batch_index`` ``(N,)`` names (None: all on the first); ``features`` are P2..
        maps ``(B, C, h_l, w_l)``."""
        if batch_index is None:
            batch_index = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        if len(boxes) == 0 and not torch.compiler.is_exporting():
            # No boxes: skip the head (BatchNorm cannot normalise an empty batch); an exact 0
            # loss on the result still back-propagates into the features.
            size = self.output_size
            return features[0].sum() * 0 + features[0].new_zeros(0, 1, size, size)
        rois = pool_levels(features, self.strides, boxes, self.crop_size, batch_index)
        return self.head(rois)


def roi_mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """Soft ``size x size`` targets: ground-truth mask ``gt_index[n]`` RoIAligned at box ``n``.

    Args:
        gt_masks: ``(G, H, W)`` bool/float masks of one image, in the input frame.
        boxes: ``(N, 4)`` xyxy boxes in that frame (ground-truth boxes or proposals).
        gt_index: ``(N,)`` int64 mask of each box.
        size: output side.

    Returns:
        ``(N, size, size)`` float32 in ``[0, 1]``.
    """
    if gt_masks.dim() != 3:
        raise ValueError(f"gt_masks must be (G, H, W), got {tuple(gt_masks.shape)}")
    check_boxes(boxes)
    if gt_index.shape != boxes.shape[:1]:
        raise ValueError(
            f"gt_index must be ({boxes.shape[0]},) like boxes, got {tuple(gt_index.shape)}"
        )
    if len(boxes) == 0:
        return torch.zeros(0, size, size, device=boxes.device)
    masks = gt_masks[:, None].float()  # (G, 1, H, W)
    crops = roi_align(masks, boxes.float(), size, gt_index, 1.0, sampling_ratio=0, aligned=True)
    return crops[:, 0].clamp(0.0, 1.0)
