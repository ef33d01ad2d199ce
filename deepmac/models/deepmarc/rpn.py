"""Region Proposal Network over an FPN (Ren et al., 2015; Lin et al., 2017), detectron2 defaults.

One head shared by every level: 3x3 conv + ReLU, then a 1x1 conv to ``A`` objectness logits and
a 1x1 conv to ``4 A`` box deltas (weights ``(1, 1, 1, 1)``). Training labels anchors with the
IoU matcher (``< 0.3`` negative, ``>= 0.7`` positive, plus each ground-truth box's best anchors),
samples 256 anchors per image with at most half positive, and sums a sigmoid cross-entropy over
the sampled anchors and an L1 (smooth-L1 with beta 0) over the positive deltas, both divided by
``256 x images``.

Proposals: per image and level the ``pre_nms_topk`` best anchors (2000 in training, 1000 at
test) are decoded, clipped to the image, emptied boxes dropped, NMS 0.7 within the level, then
the ``post_nms_topk`` (1000) best over all levels are kept. Proposals carry no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.models.deepmarc.anchors import AnchorGenerator
from deepmac.models.deepmarc.box_coder import RPN_BOX_WEIGHTS, BoxCoder
from deepmac.models.deepmarc.matcher import IGNORE, NEGATIVE, POSITIVE, BalancedSampler, Matcher
from deepmac.ops import nms
from deepmac.structures.boxes import box_iou, clip_boxes

__all__ = ["Proposals", "RPNHead", "RegionProposalNetwork"]


@dataclass
class Proposals:
    """Proposals of one image: ``boxes`` ``(P, 4)`` xyxy input pixels (no gradient) and their
    ``objectness`` logits ``(P,)``, best first."""

    boxes: Tensor
    objectness: Tensor


class RPNHead(nn.Module):
    """Shared per-level RPN head (detectron2 ``StandardRPNHead``).

    Args:
        in_channels: FPN channels ``C``.
        num_anchors: ``A`` anchors per cell.

    Forward: per level ``(B, C, h, w)`` -> objectness ``(B, h w A)`` and deltas ``(B, h w A, 4)``
    per level, in the anchor order of ``AnchorGenerator``.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            x = F.relu(self.conv(x))
            batch, _, h, w = x.shape
            # (B, A, h, w) -> (B, h, w, A): the anchors of one cell consecutive.
            objectness.append(self.objectness(x).permute(0, 2, 3, 1).reshape(batch, -1))
            d = self.deltas(x).reshape(batch, -1, 4, h, w)  # (B, A, 4, h, w)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))
        return objectness, deltas


class RegionProposalNetwork(nn.Module):
    """Anchors + head + proposal selection + training losses.

    Args:
        in_channels: FPN channels.
        strides: strides of the levels the RPN runs on (P2-P6).
        anchor_sizes: one per level. aspect_ratios: height / width.
        pre_nms_topk: ``(train, test)`` best anchors per level and image before NMS.
        post_nms_topk: ``(train, test)`` proposals kept per image after NMS.
        nms_threshold: IoU above which a lower-scored proposal of the same level is dropped.
        batch_size_per_image, positive_fraction: anchor sampling for the losses.
        iou_thresholds: ``(negative below, positive from)``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pre_nms_topk: tuple[int, int] = (2000, 1000),
        post_nms_topk: tuple[int, int] = (1000, 1000),
        nms_threshold: float = 0.7,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        iou_thresholds: tuple[float, float] = (0.3, 0.7),
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios, strides)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors)
        self.box_coder = BoxCoder(RPN_BOX_WEIGHTS)
        self.matcher = Matcher(
            iou_thresholds, [NEGATIVE, IGNORE, POSITIVE], allow_low_quality_matches=True
        )
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_threshold = nms_threshold

    def forward(
        self,
        features: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        gt_boxes: Sequence[Tensor] | None = None,
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        """Proposals for every image, and the RPN losses when ``gt_boxes`` is given.

        Args:
            features: ``(B, C, h_l, w_l)`` per level.
            image_sizes: unpadded ``(H, W)`` per image; proposals are clipped to it.
            gt_boxes: per image ``(G_i, 4)`` xyxy ground-truth boxes (training only).

        Returns:
            ``(proposals, losses)``; ``losses`` holds ``loss_rpn_cls`` and ``loss_rpn_loc``
            when ``gt_boxes`` is given, else it is empty.
        """
        if len(image_sizes) != features[0].shape[0]:
            raise ValueError(
                f"need one image size per image: {len(image_sizes)} sizes for "
                f"{features[0].shape[0]} images"
            )
        anchors = self.anchor_generator(features)  # per level (n_l, 4)
        objectness, deltas = self.head(features)
        proposals = self.select_proposals(anchors, objectness, deltas, image_sizes)
        losses: dict[str, Tensor] = {}
        if gt_boxes is not None:
            losses = self.losses(torch.cat(anchors), objectness, deltas, gt_boxes)
        return proposals, losses

    @torch.no_grad()
    def select_proposals(
        self,
        anchors: list[Tensor],
        objectness: list[Tensor],
        deltas: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Proposals]:
        """Top-k per level, decode, clip, drop empty boxes, NMS per level, top-k per image."""
        mode = 0 if self.training else 1
        pre_k, post_k = self.pre_nms_topk[mode], self.post_nms_topk[mode]
        out = []
        for image, size in enumerate(image_sizes):
            boxes, scores = [], []
            for level_anchors, level_logits, level_deltas in zip(
                anchors, objectness, deltas, strict=True
            ):
                logits = level_logits[image].float()
                top = logits.topk(min(pre_k, logits.numel())).indices
                decoded = self.box_coder.decode(level_deltas[image][top], level_anchors[top])
                decoded = clip_boxes(decoded, size)
                keep = (
                    torch.isfinite(decoded).all(dim=1)
                    & (decoded[:, 2] > decoded[:, 0])
                    & (decoded[:, 3] > decoded[:, 1])
                )
                decoded, level_scores = decoded[keep], logits[top][keep]
                # NMS within the level (detectron2 runs it batched with the level as the class).
                kept = nms(decoded, level_scores, self.nms_threshold)
                boxes.append(decoded[kept])
                scores.append(level_scores[kept])
            all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
            order = all_scores.argsort(descending=True)[:post_k]
            out.append(Proposals(boxes=all_boxes[order], objectness=all_scores[order]))
        return out

    def losses(
        self,
        anchors: Tensor,
        objectness: list[Tensor],
        deltas: list[Tensor],
        gt_boxes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Objectness and box losses over the sampled anchors of each image.

        Args:
            anchors: ``(N_a, 4)`` anchors of all levels, concatenated.
            objectness, deltas: per level ``(B, n_l)`` / ``(B, n_l, 4)`` head outputs.
            gt_boxes: per image ``(G_i, 4)``.
        """
        logits = torch.cat(objectness, dim=1).float()  # (B, N_a)
        pred_deltas = torch.cat(deltas, dim=1).float()  # (B, N_a, 4)
        cls_terms, loc_terms = [], []
        for image, boxes in enumerate(gt_boxes):
            boxes = boxes.to(anchors)
            matches, labels = self.matcher(box_iou(boxes, anchors))
            pos, neg = self.sampler(labels == POSITIVE, labels == NEGATIVE)
            sampled = torch.cat([pos, neg])
            target = torch.cat([logits.new_ones(len(pos)), logits.new_zeros(len(neg))])
            cls_terms.append(
                F.binary_cross_entropy_with_logits(logits[image, sampled], target, reduction="sum")
            )
            if len(pos):
                target_deltas = self.box_coder.encode(anchors[pos], boxes[matches[pos]])
                loc_terms.append(F.l1_loss(pred_deltas[image, pos], target_deltas, reduction="sum"))
            else:  # keeps the graph (and DDP) happy with an exact zero
                loc_terms.append(pred_deltas[image, :0].sum())
        normalizer = self.sampler.num_samples * len(gt_boxes)
        return {
            "loss_rpn_cls": torch.stack(cls_terms).sum() / normalizer,
            "loss_rpn_loc": torch.stack(loc_terms).sum() / normalizer,
        }
