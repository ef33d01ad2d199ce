"""Deep-MARC: class-agnostic Mask R-CNN with a deep mask head (paper Sec. 3 and 5; digest §5).

``FPN backbone -> RPN -> RoI box heads`` is a standard Mask R-CNN detector (detectron2 /
Model Garden defaults). The mask branch is class-agnostic (one logit channel) and is trained on

* ``mask_train_boxes="gt"`` (the paper; Model Garden ``use_gt_boxes_for_masks: true``): the
  ground-truth boxes of every class the model's ``InstanceSampler`` picks; or
* ``"proposals+gt"`` (standard Mask R-CNN, the baseline of Tables 1-2): the foreground RoIs of
  the box head's sample (proposals with IoU >= 0.5, ground-truth boxes included), each with the
  mask of its matched ground-truth box cropped at the RoI.

Either way the mask loss (``DeepMARCCriterion``: per-pixel sigmoid cross-entropy against soft
RoIAligned targets, averaged over the pixels of the instances that have a mask) only counts
instances whose class is mask-supervised (``has_mask``); the others still pass through the head,
as the official model's disallowed classes do. Detection losses see every class; they are
computed where anchors and RoIs are sampled and matched (the RPN and box heads, as in
detectron2 and torchvision) and returned as raw outputs. At test time masks are predicted at
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
from deepmac.models.deepmarc.mask_head import RoIMaskBranch
from deepmac.models.deepmarc.roi_heads import RoIBoxHeads, SampledRoIs, flatten_boxes
from deepmac.models.deepmarc.rpn import Proposals, RegionProposalNetwork
from deepmac.models.instances import InstanceSampler, SampledInstances
from deepmac.models.pixel_normalization import PixelNormalization

__all__ = ["MASK_TRAIN_BOXES", "DeepMARC", "DeepMARCOutputs"]

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
class DeepMARCOutputs:
    """What ``DeepMARC.forward`` returns.

    Attributes:
        losses: training only: the detector's ``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``,
            ``loss_box_reg`` (unweighted; ``DeepMARCCriterion`` adds the mask loss).
        proposals: RPN proposals per image.
        mask_logits: one ``(N, 1, S_out, S_out)`` tensor: at the mask training boxes in
            training, at the detections (in their order, images concatenated) in eval mode.
        detections: eval only: per image ``Detections`` (input-pixel boxes, scores, labels).
        instances: training only: the boxes the mask head ran on (``SampledInstances``).
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    proposals: list[Proposals] = field(default_factory=list)
    mask_logits: list[Tensor] = field(default_factory=list)
    detections: list[Detections] | None = None
    instances: SampledInstances | None = None


class DeepMARC(PixelNormalization, nn.Module):
    """Mask R-CNN with a class-agnostic (deep) mask head.

    Args:
        backbone: an ``FPNBackbone`` returning P2-P6.
        rpn: the region proposal network (runs on every level).
        roi_heads: the box branch (pools P2-P5).
        mask_branch: the class-agnostic mask branch (pools P2-P5).
        mask_train_boxes: ``"gt"`` or ``"proposals+gt"`` (see the module docstring).
        pixel_mean, pixel_std: per-channel statistics of 0..255 RGB input.
        instance_sampler: which ground-truth boxes the mask head trains on in ``"gt"`` mode
            (its ``mode`` also filters the RoIs of ``"proposals+gt"``).

    Raises:
        ValueError: unknown ``mask_train_boxes``.
    """

    model_type = "deepmarc"

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
        instance_sampler: InstanceSampler | None = None,
    ) -> None:
        super().__init__()
        self.mask_train_boxes = check_mask_train_boxes(mask_train_boxes)
        self.instance_sampler = instance_sampler or InstanceSampler()
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

    def prompt_features(self, images: Tensor) -> list[Tensor]:
        """What ``mask_branch`` reads for boxes on ``images``: the FPN levels (the mask-branch
        contract, ``deepmac.models.mask_branch``)."""
        return self.features(images)

    def forward(
        self,
        images: Tensor,
        targets: Sequence[dict[str, Any]] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> DeepMARCOutputs:
        """Detector losses and mask logits at the training boxes (training), or detections
        with masks (eval mode).

        Args:
            images: ``(B, 3, H, W)`` float RGB 0..255, padded to ``size_multiple``.
            targets: training only: per image ``boxes`` ``(G, 4)`` xyxy input pixels,
                ``labels`` ``(G,)`` contiguous, ``gt_masks`` ``(G, H', W')`` bool in the input
                frame (``H' <= H``, ``W' <= W``), ``has_mask`` ``(G,)`` bool, and ``size``.
            image_sizes: unpadded ``(H, W)`` of each image (default: the targets' ``size``,
                else the padded size); proposals and detections are clipped to it.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if image_sizes is None:
            if targets is not None and all("size" in t for t in targets):
                image_sizes = [tuple(int(v) for v in t["size"]) for t in targets]
            else:
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
        instances = self.mask_training_boxes(targets, rois)
        logits = self.mask_branch(features, instances.boxes, instances.batch_index)
        return DeepMARCOutputs(
            losses=losses, proposals=proposals, mask_logits=[logits], instances=instances
        )

    @torch.no_grad()
    def mask_training_boxes(
        self, targets: Sequence[dict[str, Any]], rois: SampledRoIs
    ) -> SampledInstances:
        """The boxes the mask head trains on, per ``mask_train_boxes`` and the sampler."""
        if self.mask_train_boxes == "gt":
            return self.instance_sampler(targets)
        device = rois.boxes.device
        (fg,) = torch.nonzero(rois.foreground, as_tuple=True)
        index, gt_index = rois.batch_index[fg], rois.matched_gt[fg]
        has_mask = torch.zeros(len(fg), dtype=torch.bool, device=device)
        for image, target in enumerate(targets):
            rows = index == image
            has_mask[rows] = target["has_mask"].to(device)[gt_index[rows]]
        if self.instance_sampler.mode == "supervised":
            fg, index, gt_index = fg[has_mask], index[has_mask], gt_index[has_mask]
            has_mask = has_mask[has_mask]
        return SampledInstances(rois.boxes[fg], index, gt_index, has_mask)

    @torch.no_grad()
    def detect(
        self, features: list[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> tuple[list[Proposals], list[Detections]]:
        """Proposals and per-image detections (input-pixel boxes, scores, labels) of FPN
        ``features``: the RPN, the box head, its score threshold and per-class NMS."""
        proposals, _ = self.rpn(features, image_sizes)
        return proposals, self.roi_heads.inference(features, proposals, image_sizes)

    @torch.no_grad()
    def _inference(
        self, features: list[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> DeepMARCOutputs:
        proposals, detections = self.detect(features, image_sizes)
        boxes, index = flatten_boxes([d.boxes for d in detections])
        logits = self.mask_branch(features, boxes, index)
        return DeepMARCOutputs(proposals=proposals, mask_logits=[logits], detections=detections)
