"""Fast R-CNN box branch of Mask R-CNN over FPN RoI features (detectron2 ``StandardROIHeads``).

Training: the ground-truth boxes are appended to each image's proposals; every RoI is matched to
the ground truth (IoU ``>= 0.5`` foreground, else background) and 512 RoIs per image are sampled
with at most 25 % foreground. RoIAlign (``aligned=True``, adaptive sampling) pools ``7 x 7``
features from P2-P5 (level by box size, canonical 224 px at P4), two 1024-d FC layers follow,
then a ``K + 1``-way classifier (background is the last class, ``K``) and class-specific box
deltas ``(4 K)`` coded with weights ``(10, 10, 5, 5)``. Losses: softmax cross-entropy averaged
over the sampled RoIs, L1 (smooth-L1 beta 0) on the foreground deltas of the true class, summed
and divided by the number of sampled RoIs.

Inference: softmax scores, per-class decoded boxes clipped to the image, scores ``> 0.05``, NMS
0.5 within each class, the 100 best per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.models.centernet.decode import Detections
from deepmac.models.deepmarc.box_coder import ROI_BOX_WEIGHTS, BoxCoder
from deepmac.models.deepmarc.matcher import NEGATIVE, POSITIVE, BalancedSampler, Matcher
from deepmac.models.deepmarc.pooler import pool_levels
from deepmac.models.deepmarc.rpn import Proposals
from deepmac.ops import batched_nms, nms
from deepmac.structures.boxes import box_iou, clip_boxes

__all__ = ["BoxHead", "RoIBoxHeads", "SampledRoIs", "class_nms", "flatten_boxes"]


def flatten_boxes(per_image: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image ``(n_i, 4)`` boxes to one ``(N, 4)`` tensor and its ``(N,)`` image index."""
    if not per_image:
        raise ValueError("flatten_boxes needs at least one image")
    # new_full with the (possibly symbolic, when exported) length, not a Python int.
    index = torch.cat(
        [b.new_full((b.shape[0],), i, dtype=torch.long) for i, b in enumerate(per_image)]
    )
    return torch.cat([b.float() for b in per_image]), index


#: Above this many candidates, NMS runs class by class instead of on one (N x N) IoU matrix.
_SINGLE_MATRIX_NMS_LIMIT = 4000


def class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS; ``(K,)`` kept indices by decreasing score (same result as
    ``batched_nms``, whose single IoU matrix would be too large for many candidates)."""
    # (Graph export: one NonMaxSuppression node handles any number of candidates.)
    if torch.compiler.is_compiling() or len(boxes) <= _SINGLE_MATRIX_NMS_LIMIT:
        return batched_nms(boxes, scores, labels, iou_threshold)
    kept = []
    for label in labels.unique():  # a loop over classes, not boxes
        (idx,) = torch.nonzero(labels == label, as_tuple=True)
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True, stable=True)]


@dataclass
class SampledRoIs:
    """The training RoIs of a batch, flattened.

    Attributes:
        boxes: ``(R, 4)`` xyxy (no gradient). batch_index: ``(R,)`` image of each RoI.
        classes: ``(R,)`` int64 target class, ``K`` for background.
        matched_gt: ``(R,)`` int64 index of the matched ground-truth box within its image
            (meaningful for foreground RoIs only).
        foreground: ``(R,)`` bool.
    """

    boxes: Tensor
    batch_index: Tensor
    classes: Tensor
    matched_gt: Tensor
    foreground: Tensor


class BoxHead(nn.Module):
    """``(R, C, 7, 7)`` pooled features -> ``(R, fc_dim)``: flatten, FC-ReLU, FC-ReLU (the
    detectron2 ``FastRCNNConvFCHead`` with 2 FC layers, Caffe2 Xavier init)."""

    def __init__(self, in_channels: int, pooler_resolution: int, fc_dim: int = 1024) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * pooler_resolution**2, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class RoIBoxHeads(nn.Module):
    """RoI sampling, pooling, box head, box predictor, losses and inference.

    Args:
        in_channels: FPN channels. strides: strides of the pooled levels (P2-P5).
        num_classes: ``K`` (contiguous ids ``0..K-1``).
        pooler_resolution: RoIAlign output side (7). fc_dim: FC width (1024).
        batch_size_per_image, positive_fraction: RoI sampling (512, 0.25).
        fg_iou_threshold: IoU for foreground (0.5).
        score_threshold, nms_threshold, detections_per_image: inference (0.05, 0.5, 100).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        strides: Sequence[int] = (4, 8, 16, 32),
        num_classes: int = 80,
        pooler_resolution: int = 7,
        fc_dim: int = 1024,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.pooler_resolution = pooler_resolution
        self.box_head = BoxHead(in_channels, pooler_resolution, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.box_coder = BoxCoder(ROI_BOX_WEIGHTS)
        self.matcher = Matcher([fg_iou_threshold], [NEGATIVE, POSITIVE])
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image

    def pool(self, features: Sequence[Tensor], boxes: Tensor, batch_index: Tensor) -> Tensor:
        """``(R, C, 7, 7)`` RoIAlign features of ``(R, 4)`` boxes from P2-P5."""
        return pool_levels(features, self.strides, boxes, self.pooler_resolution, batch_index)

    def predict(self, features: Sequence[Tensor], boxes: Tensor, batch_index: Tensor):
        """Class logits ``(R, K + 1)`` and class-specific deltas ``(R, 4 K)`` for RoIs."""
        x = self.box_head(self.pool(features, boxes, batch_index))
        return self.cls_score(x), self.bbox_pred(x)

    @torch.no_grad()
    def sample(
        self,
        proposals: Sequence[Proposals],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> SampledRoIs:
        """Append the ground truth to the proposals, match, and sample RoIs per image."""
        boxes, classes, matched, index = [], [], [], []
        for image, (props, gt, labels) in enumerate(
            zip(proposals, gt_boxes, gt_labels, strict=True)
        ):
            gt = gt.to(props.boxes)
            candidates = torch.cat([props.boxes, gt])
            matches, match_labels = self.matcher(box_iou(gt, candidates))
            foreground = match_labels == POSITIVE
            pos, neg = self.sampler(foreground, ~foreground)
            chosen = torch.cat([pos, neg])
            target = torch.full_like(chosen, self.num_classes)
            if len(gt):
                target[: len(pos)] = labels.to(chosen.device)[matches[pos]]
            boxes.append(candidates[chosen])
            classes.append(target)
            matched.append(matches[chosen])
            index.append(torch.full_like(chosen, image))
        classes_flat = torch.cat(classes)
        return SampledRoIs(
            boxes=torch.cat(boxes),
            batch_index=torch.cat(index),
            classes=classes_flat,
            matched_gt=torch.cat(matched),
            foreground=classes_flat < self.num_classes,
        )

    def losses(
        self, features: Sequence[Tensor], rois: SampledRoIs, gt_boxes: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """``loss_cls`` and ``loss_box_reg`` of the sampled RoIs."""
        logits, deltas = self.predict(features, rois.boxes, rois.batch_index)
        logits, deltas = logits.float(), deltas.float()
        loss_cls = F.cross_entropy(logits, rois.classes, reduction="mean")
        (fg,) = torch.nonzero(rois.foreground, as_tuple=True)
        fg_classes = rois.classes[fg]
        pred = deltas.reshape(len(deltas), self.num_classes, 4)[fg, fg_classes]  # (F, 4)
        if len(fg):
            gt_all = torch.cat([g.to(rois.boxes) for g in gt_boxes])
            offsets = torch.tensor(
                [0] + [len(g) for g in gt_boxes][:-1], device=rois.boxes.device
            ).cumsum(0)
            matched = gt_all[offsets[rois.batch_index[fg]] + rois.matched_gt[fg]]
            target = self.box_coder.encode(rois.boxes[fg], matched)
            loss_box = F.l1_loss(pred, target, reduction="sum")
        else:
            loss_box = pred.sum()  # exact zero with a graph
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box / max(len(rois.classes), 1)}

    @torch.no_grad()
    def inference(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Proposals],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """Detections per image: ``boxes (D, 4)`` in input pixels, ``scores``, ``labels``."""
        boxes, index = flatten_boxes([p.boxes for p in proposals])
        logits, deltas = self.predict(features, boxes, index)
        scores = F.softmax(logits.float(), dim=1)[:, :-1]  # (R, K), background dropped
        decoded = self.box_coder.decode(deltas.float(), boxes).reshape(-1, self.num_classes, 4)
        out = []
        for image, size in enumerate(image_sizes):
            (rows,) = torch.nonzero(index == image, as_tuple=True)
            image_boxes = clip_boxes(decoded[rows].reshape(-1, 4), size).reshape(
                -1, self.num_classes, 4
            )
            image_scores = scores[rows]
            valid = torch.isfinite(image_boxes).all(dim=2) & torch.isfinite(image_scores)
            keep = valid & (image_scores > self.score_threshold)  # (r, K)
            roi, cls = torch.nonzero(keep, as_tuple=True)
            cand_boxes, cand_scores = image_boxes[roi, cls], image_scores[roi, cls]
            kept = class_nms(cand_boxes, cand_scores, cls, self.nms_threshold)
            kept = kept[: self.detections_per_image]
            out.append(
                Detections(boxes=cand_boxes[kept], scores=cand_scores[kept], labels=cls[kept])
            )
        return out
