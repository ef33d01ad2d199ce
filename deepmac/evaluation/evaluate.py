"""Evaluate a model on a COCO dataset the way its family is scored (``ModelFamily.evaluator``):
the box-prompted model by mIoU (and AP) from ground-truth boxes, Deep-MAC and Deep-MARC by box
and mask AP of their detections; any family from ground-truth boxes on request.

The model runs on its predictor's device; the scoring (pycocotools, NumPy) is CPU-side, so the
dataset's targets stay on the CPU and the predictors return CPU results.
"""

from __future__ import annotations

from typing import Any

import torch

from deepmac.config import ExperimentConfig
from deepmac.data import CocoInstances
from deepmac.engine.checkpoint import unwrap_model
from deepmac.engine.distributed import get_rank, get_world_size
from deepmac.engine.progress import progress_bar
from deepmac.evaluation import CocoEvaluator, MaskIoUEvaluator
from deepmac.inference.detector import DeepMACPredictor
from deepmac.inference.segmenter import BoxPromptedSegmenter
from deepmac.models.families import get_family
from deepmac.structures.masks import paste_masks_in_image


def coco_category_ids(dataset: CocoInstances, labels: torch.Tensor) -> torch.Tensor:
    """``(N,)`` COCO category ids of ``(N,)`` contiguous labels of ``dataset``."""
    return torch.tensor(
        [dataset.contiguous_to_category_id[int(c)] for c in labels], dtype=torch.long, device="cpu"
    )


def image_indices(dataset: CocoInstances, max_images: int) -> range:
    """The images this process evaluates: the first ``max_images`` (0 = all), every
    ``world_size``-th from this rank under ``torch.distributed``; evaluators then
    ``synchronize`` so every rank scores them all."""
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    return range(get_rank(), count, get_world_size())


def evaluate_box_prompted(
    segmenter: BoxPromptedSegmenter,
    dataset: CocoInstances,
    *,
    max_images: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Masks from the ground-truth boxes of every image; split mIoU and mask AP.

    The dataset must have no transforms: masks are pasted into, and compared in, each
    image's original frame. Mask AP treats the GT boxes as detections of score 1.

    Returns:
        ``(metrics, coco_results)``.
    """
    miou = MaskIoUEvaluator()
    coco = CocoEvaluator(dataset.ann_file)
    indices = image_indices(dataset, max_images)
    for index in progress_bar(indices, desc="eval", enabled=progress, unit="img"):
        image, target = dataset[index]
        boxes = target["boxes"]
        category_ids = coco_category_ids(dataset, target["labels"])
        masks, _ = segmenter.predict(image, boxes, return_numpy=False)
        miou.process(masks, target["gt_masks"], category_ids)
        coco.process(target["image_id"], boxes, boxes.new_ones(len(boxes)), category_ids, masks)
    miou.synchronize()
    coco.synchronize()
    return {**miou.evaluate(), **coco.evaluate()}, coco.results


def filled_box_miou(
    dataset: CocoInstances, *, max_images: int = 0, mask_size: int = 32
) -> dict[str, float]:
    """Split mIoU of the filled box used as the mask, pasted through the model's output path:
    the baseline a box-prompted model must beat (a box already scores about 0.5-0.7 mIoU).
    Same images as ``evaluate_box_prompted`` with the same ``max_images``."""
    miou = MaskIoUEvaluator()
    for index in image_indices(dataset, max_images):
        _, target = dataset[index]
        boxes = target["boxes"]
        ones = torch.ones(len(boxes), mask_size, mask_size, device=boxes.device)
        masks = paste_masks_in_image(ones, boxes, target["size"])
        miou.process(masks, target["gt_masks"], coco_category_ids(dataset, target["labels"]))
    miou.synchronize()
    return miou.evaluate()


def evaluate_deepmac(
    predictor: DeepMACPredictor,
    dataset: CocoInstances,
    *,
    max_images: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Detect and segment every image; COCO box and mask AP overall / VOC / non-VOC.

    Returns:
        ``(metrics, coco_results)``.
    """
    coco = CocoEvaluator(dataset.ann_file)
    indices = image_indices(dataset, max_images)
    for index in progress_bar(indices, desc="eval", enabled=progress, unit="img"):
        inst = predictor.predict(dataset.load_image(index))
        image_id = dataset.image_info(index)["id"]
        coco.process(image_id, inst.boxes, inst.scores, inst.category_ids, inst.masks)
    coco.synchronize()
    return coco.evaluate(), coco.results


def evaluate_from_gt_boxes(
    model, cfg: ExperimentConfig, dataset: CocoInstances, *, max_images: int = 0, progress=False
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``evaluate_box_prompted`` of a model in memory (any family: every mask branch takes
    boxes), on the model's device."""
    segmenter = BoxPromptedSegmenter(unwrap_model(model), image_size=cfg.data.image_size)
    return evaluate_box_prompted(segmenter, dataset, max_images=max_images, progress=progress)


def evaluate_detections(
    model, cfg: ExperimentConfig, dataset: CocoInstances, *, max_images: int = 0, progress=False
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``evaluate_deepmac`` of a detector in memory, on the model's device."""
    predictor = DeepMACPredictor(
        unwrap_model(model),  # DDP: the predictor calls the model's own methods
        image_size=cfg.data.image_size,
        category_ids=cfg.model.category_ids,
        class_names=cfg.model.class_names,
    )
    return evaluate_deepmac(predictor, dataset, max_images=max_images, progress=progress)


def evaluate_model(
    model,
    cfg: ExperimentConfig,
    dataset: CocoInstances,
    *,
    max_images: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate a model in memory the way its family is scored (``ModelFamily.evaluator``).
    The model stays on its device (a CUDA model in training is evaluated on CUDA)."""
    evaluator = get_family(cfg.model.type).load("evaluator")
    return evaluator(model, cfg, dataset, max_images=max_images, progress=progress)
