"""Evaluation: COCO box/mask AP per class split, box-prompted mask mIoU, COCO results files.

Evaluators follow detectron2's protocol (``reset()`` / ``process(...)`` / ``evaluate() -> dict``)
so the engine can drive them without knowing the model. Metric values are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Protocol

from deepmac.evaluation.coco import (
    CocoEvaluator,
    evaluate_coco,
    load_coco_gt,
    resolve_coco_splits,
)
from deepmac.evaluation.miou import MaskIoUEvaluator, matched_mask_iou
from deepmac.evaluation.results import (
    encode_masks,
    instances_to_coco_results,
    load_coco_results,
    write_coco_results,
)


class Evaluator(Protocol):
    """What the engine needs from an evaluator; ``process`` arguments depend on the evaluator."""

    def reset(self) -> None: ...

    def evaluate(self) -> dict[str, float | int]: ...


__all__ = [
    "CocoEvaluator",
    "Evaluator",
    "MaskIoUEvaluator",
    "encode_masks",
    "evaluate_coco",
    "instances_to_coco_results",
    "load_coco_gt",
    "load_coco_results",
    "matched_mask_iou",
    "resolve_coco_splits",
    "write_coco_results",
]
