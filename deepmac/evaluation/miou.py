"""Mask IoU of box-prompted predictions against their ground-truth instances (mIoU).

In box-prompted evaluation every ground-truth box yields exactly one predicted mask, so each
prediction is compared with its own instance: no matching, no scores. Reported per class split
as the mean over instances and as the mean over categories of the per-category mean. Values are
fractions in [0, 1], like the AP of ``deepmac.evaluation.coco``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from deepmac.data.class_splits import resolve_split

ArrayLike = Tensor | np.ndarray

#: ``None`` means every processed instance, whatever its category.
DEFAULT_SPLITS: dict[str, str | None] = {"all": None, "voc": "voc", "nonvoc": "nonvoc"}


def _as_bool_masks(masks: ArrayLike, name: str) -> np.ndarray:
    """Bool ``(N, H, W)`` NumPy array (counting pixels is ~10x faster in NumPy than with torch's
    bool reductions on CPU)."""
    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    if not isinstance(masks, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(masks).__name__}")
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {tuple(masks.shape)}")
    if not (masks.dtype == bool or np.issubdtype(masks.dtype, np.integer)):
        raise TypeError(
            f"{name} must be bool (N, H, W), got {masks.dtype}; "
            "threshold probabilities (> 0.5) first"
        )
    return masks.astype(bool, copy=False)


def _as_vector(values: ArrayLike, num: int, name: str) -> np.ndarray:
    array = torch.as_tensor(values, device="cpu").reshape(-1).numpy()
    if array.shape[0] != num:
        raise ValueError(f"{name} must have shape ({num},) to match the masks, got {array.shape}")
    return array


def _mean(values: np.ndarray | list[float]) -> float:
    """Mean as a Python float; NaN (not a warning) when empty."""
    return float(np.mean(values)) if len(values) else float("nan")


def matched_mask_iou(pred_masks: ArrayLike, gt_masks: ArrayLike) -> Tensor:
    """IoU of each predicted mask with the ground-truth mask at the same index.

    Args:
        pred_masks: bool ``(N, H, W)`` masks in the image frame (integer 0/1 is cast).
        gt_masks: bool ``(N, H, W)`` masks in the same frame.

    Returns:
        float64 ``(N,)`` CPU tensor; NaN where both masks are empty (empty union).

    Raises:
        ValueError: if the shapes differ or are not ``(N, H, W)``.
        TypeError: if either input is floating point.
    """
    pred = _as_bool_masks(pred_masks, "pred_masks")
    gt = _as_bool_masks(gt_masks, "gt_masks")
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred_masks and gt_masks must have the same (N, H, W) shape, got "
            f"{pred.shape} and {gt.shape}"
        )
    # Explicit sizes: an image without instances has N = 0, where -1 cannot be inferred.
    num, height, width = pred.shape
    pred = pred.reshape(num, height * width)  # (N, H * W)
    gt = gt.reshape(num, height * width)  # (N, H * W)
    inter = np.count_nonzero(pred & gt, axis=1).astype(np.float64)  # (N,)
    union = np.count_nonzero(pred | gt, axis=1).astype(np.float64)  # (N,)
    iou = np.divide(inter, union, out=np.full_like(inter, np.nan), where=union > 0)
    return torch.from_numpy(iou)


class MaskIoUEvaluator:
    """Accumulates per-instance mask IoU over images and reports mIoU per class split.

    Instances whose ground-truth mask is empty are skipped (their IoU is undefined; COCO masks
    are never empty in practice) and counted in ``mask_iou/num_skipped_empty_gt``. Crowd regions
    are skipped when flagged via ``is_crowd`` and counted in ``mask_iou/num_skipped_crowd``.

    Args:
        splits: split name -> ``"voc"`` / ``"nonvoc"`` / COCO category ids, or ``None`` for
            every instance. Defaults to ``DEFAULT_SPLITS`` (``all``, ``voc``, ``nonvoc``).

    Example::

        evaluator = MaskIoUEvaluator()
        for image in images:
            evaluator.process(pred_masks, gt_masks, category_ids)
        evaluator.evaluate()["mask_iou/nonvoc/mIoU"]
    """

    def __init__(self, *, splits: Mapping[str, str | Iterable[int] | None] | None = None) -> None:
        specs = DEFAULT_SPLITS if splits is None else splits
        self.splits: dict[str, frozenset[int] | None] = {
            name: None if spec is None else frozenset(resolve_split(spec))
            for name, spec in specs.items()
        }
        self.reset()

    def reset(self) -> None:
        """Forget all processed instances."""
        self._ious: list[np.ndarray] = []
        self._category_ids: list[np.ndarray] = []
        self.num_skipped_empty_gt = 0
        self.num_skipped_crowd = 0

    def process(
        self,
        pred_masks: ArrayLike,
        gt_masks: ArrayLike,
        category_ids: ArrayLike,
        *,
        is_crowd: ArrayLike | None = None,
    ) -> Tensor:
        """Add one image's instances.

        Args:
            pred_masks: bool ``(N, H, W)`` predicted masks, pasted into the image frame.
            gt_masks: bool ``(N, H, W)`` ground-truth masks, same order and frame.
            category_ids: int ``(N,)`` COCO category ids.
            is_crowd: optional bool ``(N,)``; flagged instances are skipped.

        Returns:
            float64 ``(N,)`` IoU per instance (NaN for empty ground truth), for inspection.

        Raises:
            ValueError: if ``N`` differs between the arguments, or masks are not ``(N, H, W)``.
        """
        ious = matched_mask_iou(pred_masks, gt_masks)
        num = ious.shape[0]
        cats = _as_vector(category_ids, num, "category_ids").astype(np.int64)
        keep = np.ones(num, dtype=bool)
        if is_crowd is not None:
            crowd = _as_vector(is_crowd, num, "is_crowd").astype(bool)
            self.num_skipped_crowd += int(crowd.sum())
            keep &= ~crowd
        # An empty union implies an empty GT mask; a non-empty union with an empty GT gives IoU 0,
        # which would punish a prediction for an undefined target, so both are skipped.
        gt_empty = ~_as_bool_masks(gt_masks, "gt_masks").any(axis=(1, 2))
        self.num_skipped_empty_gt += int((gt_empty & keep).sum())
        keep &= ~gt_empty
        self._ious.append(ious.numpy()[keep])
        self._category_ids.append(cats[keep])
        return ious

    def synchronize(self) -> None:
        """Under ``torch.distributed``, gather the instances every process added (in rank
        order), so that ``evaluate`` scores the whole sharded dataset; a no-op alone."""
        from deepmac.engine.distributed import all_gather_object

        gathered = all_gather_object(
            (self._ious, self._category_ids, self.num_skipped_empty_gt, self.num_skipped_crowd)
        )
        if len(gathered) == 1:
            return
        self._ious = [iou for part in gathered for iou in part[0]]
        self._category_ids = [cats for part in gathered for cats in part[1]]
        self.num_skipped_empty_gt = sum(part[2] for part in gathered)
        self.num_skipped_crowd = sum(part[3] for part in gathered)

    def evaluate(self) -> dict[str, float | int]:
        """mIoU per split over everything processed since the last ``reset``.

        Returns:
            For each split ``s``: ``mask_iou/s/mIoU`` (mean over instances),
            ``mask_iou/s/mIoU_class`` (mean over categories of the per-category mean),
            ``mask_iou/s/num_instances`` and ``mask_iou/s/num_classes``; plus
            ``mask_iou/num_skipped_empty_gt`` and ``mask_iou/num_skipped_crowd``. The means are
            NaN for a split without instances.
        """
        ious = np.concatenate(self._ious) if self._ious else np.zeros(0)
        cats = np.concatenate(self._category_ids) if self._category_ids else np.zeros(0, np.int64)
        metrics: dict[str, float | int] = {}
        for name, cat_ids in self.splits.items():
            selected = np.ones(len(cats), bool) if cat_ids is None else np.isin(cats, list(cat_ids))
            split_ious, split_cats = ious[selected], cats[selected]
            classes = np.unique(split_cats)
            per_class = [split_ious[split_cats == c].mean() for c in classes]
            metrics[f"mask_iou/{name}/mIoU"] = _mean(split_ious)
            metrics[f"mask_iou/{name}/mIoU_class"] = _mean(per_class)
            metrics[f"mask_iou/{name}/num_instances"] = int(len(split_ious))
            metrics[f"mask_iou/{name}/num_classes"] = int(len(classes))
        metrics["mask_iou/num_skipped_empty_gt"] = self.num_skipped_empty_gt
        metrics["mask_iou/num_skipped_crowd"] = self.num_skipped_crowd
        return metrics
