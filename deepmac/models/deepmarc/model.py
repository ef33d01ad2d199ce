"""Deep-MARC: class-agnostic Mask R-CNN with a deep mask head (paper Sec. 3 and 5; digest §5).

``FPN backbone -> RPN -> RoI box heads`` is a standard Mask R-CNN detector (detectron2 /
Model Garden defaults). The mask branch is class-agnostic (one logit channel) and is trained on

* ``mask_train_boxes="gt"`` (the paper; Model Garden ``use_gt_boxes_for_masks: true``): the
  ground-truth boxes of every class, at most ``max_mask_instances`` per image; or
* ``"proposals+gt"`` (standard Mask R-CNN, the baseline of Tables 1-2): the foreground RoIs of
  the box head's sample (proposals with IoU >= 0.5, ground-truth boxes included), each with the
  mask of its matched ground-truth box cropped at the RoI.

Either way the mask loss (per-pixel sigmoid cross-entropy against soft RoIAligned targets,
averaged over the pixels of the instances that have a mask) only counts instances whose class is
mask-supervised (``has_mask``); the others still pass through the head, as the official model's
disallowed classes do. Detection losses see every class. At test time masks are predicted at
the detected boxes, whatever the training boxes were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from deepmac.backbones.fpn import FPNBackbone
from deepmac.models.centernet.decode import Detections
from deepmac.models.deepmarc.mask_head import RoIMaskBranch, paste_roi_masks, roi_mask_targets
from deepmac.models.deepmarc.roi_heads import RoIBoxHeads, SampledRoIs, flatten_boxes
from deepmac.models.deepmarc.rpn import Proposals, RegionProposalNetwork
from deepmac.models.instances import check_mask_head_instances, select_mask_instances
from deepmac.models.losses import deepmac_mask_loss
from deepmac.models.pixel_normalization import PixelNormalization

__all__ = ["MASK_TRAIN_BOXES", "DeepMARC", "DeepMARCOutputs", "MaskTrainingBoxes"]

#: Valid ``mask_train_boxes`` values.
MASK_TRAIN_BOXES = ("gt", "proposals+gt")


def check_mask_train_boxes(value: str) -> str:
    """Return ``value`` if it is a valid ``mask_train_boxes`` setting.

    Raises:
        ValueError: naming the valid values.
    """
    if value not in MASK_TRAIN_BOXES:
        raise ValueError(
            f"model.mask_train_boxes must be one of {', '.join(map(repr, MASK_TRAIN_BOXES))} "
            f"('gt' trains the mask head on ground-truth boxes only, as the paper; "
            f"'proposals+gt' on the foreground RoIs, as standard Mask R-CNN), got {value!r}"
        )
    return value


@dataclass
class MaskTrainingBoxes:
    """The boxes the mask head is trained on, flattened over the batch.

    Attributes:
        boxes: ``(N, 4)`` xyxy input pixels. batch_index: ``(N,)`` image of each box.
        gt_index: ``(N,)`` ground-truth instance (within its image) whose mask is the target.
        has_mask: ``(N,)`` bool, whether that instance's mask supervises the head.
    """

    boxes: Tensor
    batch_index: Tensor
    gt_index: Tensor
    has_mask: Tensor


@dataclass
class DeepMARCOutputs:
    """What ``DeepMARC.forward`` returns.

    Attributes:
        losses: training only: ``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``,
            ``loss_box_reg``, ``loss_mask`` (unweighted).
        proposals: RPN proposals per image.
        mask_logits: one ``(N, 1, S_out, S_out)`` tensor: at the mask training boxes in
            training, at the detections (in their order, images concatenated) in eval mode.
        detections: eval only: per image ``Detections`` (input-pixel boxes, scores, labels).
        mask_boxes: training only: the ``MaskTrainingBoxes`` used.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    proposals: list[Proposals] = field(default_factory=list)
    mask_logits: list[Tensor] = field(default_factory=list)
    detections: list[Detections] | None = None
    mask_boxes: MaskTrainingBoxes | None = None


class DeepMARC(PixelNormalization, nn.Module):
    """Mask R-CNN with a class-agnostic (deep) mask head.

    Args:
        backbone: an ``FPNBackbone`` returning P2-P6.
        rpn: the region proposal network (runs on every level).
        roi_heads: the box branch (pools P2-P5).
        mask_branch: the class-agnostic mask branch (pools P2-P5).
        mask_train_boxes: ``"gt"`` or ``"proposals+gt"`` (see the module docstring).
        pixel_mean, pixel_std: per-channel statistics of 0..255 RGB input.

    Raises:
        ValueError: unknown ``mask_train_boxes``.
    """

    model_type = "deepmarc"
    #: Pastes this model's box-relative masks into images (RoIAlign convention).
    paste_masks = staticmethod(paste_roi_masks)

    def __init__(
        self,
        backbone: FPNBackbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIBoxHeads,
        mask_branch: RoIMaskBranch,
        *,
        mask_train_boxes: str = "gt",
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.mask_train_boxes = check_mask_train_boxes(mask_train_boxes)
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.mask_branch = mask_branch
        self.register_pixel_statistics(pixel_mean, pixel_std)

    @property
    def size_multiple(self) -> int:
        return self.backbone.size_multiple

    @property
    def num_classes(self) -> int:
        return self.roi_heads.num_classes

    def features(self, images: Tensor) -> list[Tensor]:
        """P2-P6 ``(B, C, H/s, W/s)`` of ``(B, 3, H, W)`` 0..255 RGB images.

        On CPU the maps are returned channels_last: RoIAlign samples them once per box group
        and level, and reads C contiguous values per tap that way (converting once here instead
        of in every pooling call); the convolutions that follow run as fast or faster on it.
        """
        features = self.backbone(self.normalize(images))
        if images.device.type == "cpu":
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        return features

    def forward(
        self,
        images: Tensor,
        targets: Sequence[dict[str, Any]] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        *,
        max_mask_instances: int = 100,
        mask_head_instances: str = "all",
    ) -> DeepMARCOutputs:
        """Losses (training) or detections with masks (eval mode).

        Args:
            images: ``(B, 3, H, W)`` float RGB 0..255, padded to ``size_multiple``.
            targets: training only: per image ``boxes`` ``(G, 4)`` xyxy input pixels,
                ``labels`` ``(G,)`` contiguous, ``gt_masks`` ``(G, H', W')`` bool in the input
                frame (``H' <= H``, ``W' <= W``), ``has_mask`` ``(G,)`` bool.
            image_sizes: unpadded ``(H, W)`` of each image (default: the padded size);
                proposals and detections are clipped to it.
            max_mask_instances: ``"gt"`` mode: at most this many ground-truth boxes per image
                go through the mask head (a random subset, supervised ones first; official
                cap 100).
            mask_head_instances: ``"all"`` or ``"supervised"`` (only boxes or RoIs whose
                instance has a mask go through the head; ``select_mask_instances``).
        """
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        features = self.features(images)
        if not self.training:
            return self._inference(features, image_sizes)
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError(
                f"Deep-MARC training needs one target dict per image "
                f"({images.shape[0]} images, got {None if targets is None else len(targets)})"
            )
        gt_boxes = [t["boxes"].float() for t in targets]
        proposals, losses = self.rpn(features, image_sizes, gt_boxes)
        rois = self.roi_heads.sample(proposals, gt_boxes, [t["labels"] for t in targets])
        losses.update(self.roi_heads.losses(features, rois, gt_boxes))
        mask_boxes = self.mask_training_boxes(
            targets, rois, max_mask_instances, mask_head_instances
        )
        logits, losses["loss_mask"] = self._mask_loss(features, targets, mask_boxes)
        return DeepMARCOutputs(
            losses=losses, proposals=proposals, mask_logits=[logits], mask_boxes=mask_boxes
        )

    @torch.no_grad()
    def mask_training_boxes(
        self,
        targets: Sequence[dict[str, Any]],
        rois: SampledRoIs,
        max_mask_instances: int,
        mask_head_instances: str = "all",
    ) -> MaskTrainingBoxes:
        """The boxes the mask head trains on, per ``mask_train_boxes`` and
        ``mask_head_instances``."""
        device = rois.boxes.device
        if self.mask_train_boxes == "proposals+gt":
            (fg,) = torch.nonzero(rois.foreground, as_tuple=True)
            index, gt_index = rois.batch_index[fg], rois.matched_gt[fg]
            has_mask = torch.zeros(len(fg), dtype=torch.bool, device=device)
            for image, target in enumerate(targets):
                rows = index == image
                has_mask[rows] = target["has_mask"].to(device)[gt_index[rows]]
            if check_mask_head_instances(mask_head_instances) == "supervised":
                fg, index, gt_index = fg[has_mask], index[has_mask], gt_index[has_mask]
                has_mask = has_mask[has_mask]
            return MaskTrainingBoxes(rois.boxes[fg], index, gt_index, has_mask)
        boxes, index, gt_index, has_mask = [], [], [], []
        for image, target in enumerate(targets):
            keep = select_mask_instances(
                target["has_mask"].to(device), max_mask_instances, mask_head_instances
            )
            boxes.append(target["boxes"].to(device).float()[keep])
            index.append(torch.full_like(keep, image))
            gt_index.append(keep)
            has_mask.append(target["has_mask"].to(device).bool()[keep])
        return MaskTrainingBoxes(
            torch.cat(boxes), torch.cat(index), torch.cat(gt_index), torch.cat(has_mask)
        )

    def _mask_loss(
        self,
        features: list[Tensor],
        targets: Sequence[dict[str, Any]],
        mask_boxes: MaskTrainingBoxes,
    ) -> tuple[Tensor, Tensor]:
        """Mask logits at the training boxes and the mask loss (exact 0 without boxes)."""
        size = self.mask_branch.output_size
        if len(mask_boxes.boxes) == 0:
            empty = features[0].new_zeros(0, 1, size, size)
            return empty, features[0].sum() * 0.0
        logits = self.mask_branch(features, mask_boxes.boxes, mask_boxes.batch_index)
        mask_targets = torch.zeros(len(mask_boxes.boxes), size, size, device=logits.device)
        for image, target in enumerate(targets):
            (rows,) = torch.nonzero(
                (mask_boxes.batch_index == image) & mask_boxes.has_mask, as_tuple=True
            )
            if len(rows) == 0:
                continue
            # Only the masks used are converted to float for the crop.
            used, remap = mask_boxes.gt_index[rows].unique(return_inverse=True)
            masks = target["gt_masks"].to(logits.device)[used]
            mask_targets[rows] = roi_mask_targets(masks, mask_boxes.boxes[rows], remap, size)
        loss = deepmac_mask_loss([logits], mask_targets, mask_boxes.has_mask)
        return logits, loss

    @torch.no_grad()
    def _inference(
        self, features: list[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> DeepMARCOutputs:
        proposals, _ = self.rpn(features, image_sizes)
        detections = self.roi_heads.inference(features, proposals, image_sizes)
        boxes, index = flatten_boxes([d.boxes for d in detections])
        size = self.mask_branch.output_size
        if len(boxes):
            logits = self.mask_branch(features, boxes, index)
        else:
            logits = features[0].new_zeros(0, 1, size, size)
        return DeepMARCOutputs(proposals=proposals, mask_logits=[logits], detections=detections)
