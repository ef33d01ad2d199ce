"""IoU matching of predictions to ground truth, and balanced positive/negative sampling.

``Matcher`` follows detectron2's ``Matcher``: each prediction (anchor or proposal) takes the
ground-truth box of highest IoU and a label from IoU thresholds (RPN: ``< 0.3`` negative,
``[0.3, 0.7)`` ignored, ``>= 0.7`` positive; RoI heads: ``< 0.5`` background, ``>= 0.5``
foreground). With ``allow_low_quality_matches`` (RPN) every ground-truth box also makes positive
the predictions that reach its own highest IoU, so small or odd-shaped objects get anchors.

``BalancedSampler`` draws at most ``num_samples`` predictions per image with at most
``positive_fraction`` of them positive, filling up with negatives (RPN 256 / 0.5, RoI heads
512 / 0.25).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BalancedSampler", "Matcher", "IGNORE", "NEGATIVE", "POSITIVE"]

NEGATIVE, IGNORE, POSITIVE = 0, -1, 1


class Matcher:
    """Assign each of N predictions to one of M ground-truth boxes.

    Args:
        thresholds: increasing IoU thresholds splitting ``[0, 1]`` into ``len + 1`` intervals
            (an interval includes its lower bound).
        labels: one label per interval, from ``{NEGATIVE, IGNORE, POSITIVE}``.
        allow_low_quality_matches: also label ``POSITIVE`` every prediction whose IoU with a
            ground-truth box equals that box's best IoU (ties all count). A ground-truth box
            that overlaps no prediction at all (best IoU 0) creates no match.
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        *,
        allow_low_quality_matches: bool = False,
    ) -> None:
        thresholds = [float(t) for t in thresholds]
        if any(b < a for a, b in zip(thresholds, thresholds[1:], strict=False)):
            raise ValueError(f"thresholds must increase, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"need len(thresholds) + 1 = {len(thresholds) + 1} labels, got {list(labels)}"
            )
        if any(label not in (NEGATIVE, IGNORE, POSITIVE) for label in labels):
            raise ValueError(f"labels must be -1, 0 or 1, got {list(labels)}")
        self.thresholds = [-float("inf"), *thresholds, float("inf")]
        self.labels = [int(label) for label in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """Match.

        Args:
            iou: ``(M, N)`` IoU of M ground-truth boxes with N predictions.

        Returns:
            ``matches`` ``(N,)`` int64: index of the matched ground-truth box (0 when M = 0;
            meaningful only where the label is positive) and ``labels`` ``(N,)`` int8.
        """
        if iou.dim() != 2:
            raise ValueError(f"iou must be an (M, N) matrix, got shape {tuple(iou.shape)}")
        num_gt, num_pred = iou.shape
        if num_gt == 0:
            # No ground truth: everything is the first (background) label.
            matches = torch.zeros(num_pred, dtype=torch.long, device=iou.device)
            labels = torch.full((num_pred,), self.labels[0], dtype=torch.int8, device=iou.device)
            return matches, labels
        best, matches = iou.max(dim=0)  # (N,)
        labels = torch.empty(num_pred, dtype=torch.int8, device=iou.device)
        for label, low, high in zip(
            self.labels, self.thresholds[:-1], self.thresholds[1:], strict=True
        ):
            labels[(best >= low) & (best < high)] = label
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values  # (M, 1)
            ties = (iou == best_per_gt) & (best_per_gt > 0)
            labels[ties.any(dim=0)] = POSITIVE
        return matches, labels


class BalancedSampler:
    """Random subset of positives and negatives of fixed total size and bounded positive share.

    Args:
        num_samples: total per image.
        positive_fraction: at most ``int(num_samples * positive_fraction)`` positives; the rest
            of the budget goes to negatives (fewer in all when there are not enough).
    """

    def __init__(self, num_samples: int, positive_fraction: float) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.num_samples = num_samples
        self.positive_fraction = positive_fraction

    def __call__(
        self, positive: Tensor, negative: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample.

        Args:
            positive, negative: ``(N,)`` bool masks (disjoint; neither = ignored).
            generator: RNG for the draw (default: the global one).

        Returns:
            ``(positive_index, negative_index)``: int64 indices into N.
        """
        if positive.shape != negative.shape or positive.dim() != 1:
            raise ValueError(
                f"positive and negative must be (N,) masks, got {tuple(positive.shape)} and "
                f"{tuple(negative.shape)}"
            )
        if (positive & negative).any():
            raise ValueError("a prediction cannot be both positive and negative")
        (pos,) = torch.nonzero(positive, as_tuple=True)
        (neg,) = torch.nonzero(negative, as_tuple=True)
        num_pos = min(pos.numel(), int(self.num_samples * self.positive_fraction))
        num_neg = min(neg.numel(), self.num_samples - num_pos)
        # Drawn on the CPU (the global RNG the engine checkpoints, or a CPU ``generator``), so a
        # seed samples the same anchors and RoIs on every device.
        order_pos = torch.randperm(pos.numel(), generator=generator, device="cpu")
        order_neg = torch.randperm(neg.numel(), generator=generator, device="cpu")
        pos = pos[order_pos[:num_pos].to(pos.device)]
        neg = neg[order_neg[:num_neg].to(neg.device)]
        return pos, neg
